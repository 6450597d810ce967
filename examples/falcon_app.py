"""A small Falcon service (WSGI), instrumented with one call (``instrument_app(app)``).

Run it with ``gunicorn examples.falcon_app:app`` (or ``python examples/falcon_app.py``;
``PORT=0`` picks a free port). Serve what ``instrument_app`` returns: the app wrapped by
the kit's WSGI middleware. Routes are recorded by ``req.uri_template``
(``/notes/{note_id:int}``); ``falcon.asgi.App`` with async responders works the same way
under uvicorn.
"""

from __future__ import annotations

import json
import logging
import os

import falcon

from instrument.falcon import instrument_app

NOTES = {i: {"id": i, "text": f"note-{i}"} for i in range(1, 21)}
log = logging.getLogger("notes")


class Note:
    def on_get(self, req: falcon.Request, resp: falcon.Response, note_id: int) -> None:
        note = NOTES.get(note_id)
        if note is None:
            raise falcon.HTTPNotFound()  # recorded as 404 on /notes/{note_id:int}
        resp.media = note


class Notes:
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = req.bounded_stream.read()
        log.info("note added", extra={"bytes": len(body)})  # carries the request id
        resp.status = falcon.HTTP_201
        resp.text = json.dumps({"received": len(body)})


class Fail:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise RuntimeError("the responder failed")  # a 500, with the exception's type


api = falcon.App()
api.add_route("/notes/{note_id:int}", Note())
api.add_route("/notes", Notes())
api.add_route("/fail", Fail())
app = instrument_app(api)  # <- the one call

if __name__ == "__main__":
    from wsgiref.simple_server import make_server

    with make_server("127.0.0.1", int(os.environ.get("PORT", "8003")), app) as server:
        print(f"serving on http://127.0.0.1:{server.server_port}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:  # Ctrl-C: a clean exit, so the kit flushes at exit
            pass
