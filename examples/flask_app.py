"""A small Flask shop API, instrumented with one line (see the bottom of ``create_app``).

Run it on its own with ``python examples/flask_app.py`` and open http://127.0.0.1:5000/items/1
(``PORT=0`` picks a free port). ``/items/<id>/owner`` calls the users service of
``examples/fastapi_app.py`` through an instrumented ``requests`` session, so the call is
recorded and carries this request's ``X-Request-ID``. ``instrument demo`` runs both apps
under traffic and prints what the kit recorded.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterator

import requests
from flask import Flask, Response, abort, jsonify, request

from instrument.flask import Instrument
from instrument.requests import instrument_session

ITEMS = {i: {"id": i, "name": f"item-{i}", "price": round(1.5 * i, 2)} for i in range(1, 101)}
log = logging.getLogger("shop")


def create_app(users_url: str = "http://127.0.0.1:8000") -> Flask:
    app = Flask(__name__)
    # Outgoing calls: recorded as kind "client", named by host + template, not by raw URL.
    users = instrument_session(requests.Session(), templates=["/api/users/{user_id}"])

    @app.get("/")
    def index() -> Response:
        return jsonify(service="shop", items=len(ITEMS))

    @app.get("/items/<int:item_id>")
    def get_item(item_id: int) -> Response:
        item = ITEMS.get(item_id)
        if item is None:
            abort(404)
        return jsonify(item)

    @app.post("/items")
    def create_item() -> tuple[Response, int]:
        payload = request.get_json(force=True, silent=True) or {}
        size = len(request.get_data())
        log.info("item created", extra={"bytes": size})
        return jsonify(received=size, keys=sorted(payload)), 201

    @app.get("/items/<int:item_id>/owner")
    def item_owner(item_id: int) -> tuple[Response, int]:
        owner = item_id % 60 + 1  # owners above 50 are unknown to the users service
        try:
            reply = users.get(f"{users_url}/api/users/{owner}", timeout=10)
        except requests.RequestException as exc:
            log.warning("users service unreachable: %s", type(exc).__name__)
            return jsonify(error="users service unreachable"), 502
        log.info("owner looked up", extra={"item": item_id, "status": reply.status_code})
        if reply.status_code != 200:
            return jsonify(item=item_id, owner=None), 404
        return jsonify(item=item_id, owner=reply.json()), 200

    @app.get("/search")
    def search() -> Response:
        q = request.args.get("q", "")
        hits = [i for i in ITEMS.values() if q in i["name"]][:20]
        return jsonify(query=q, hits=hits)

    @app.get("/slow")
    def slow() -> Response:
        time.sleep(random.uniform(0.05, 0.2))
        return jsonify(ok=True)

    @app.get("/stream")
    def stream() -> Response:
        def rows() -> Iterator[str]:
            for i in range(10):
                time.sleep(0.005)
                yield f"row {i}\n"
        return Response(rows(), mimetype="text/plain")

    @app.get("/error")
    def error() -> Response:
        abort(503)

    @app.get("/boom")
    def boom() -> Response:
        raise RuntimeError("the handler failed")

    Instrument(app)  # <- the one line: every request is timed, sized and stored
    return app


app = create_app()

if __name__ == "__main__":
    app.run(port=int(os.environ.get("PORT", "5000")), threaded=True)
