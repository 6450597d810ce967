"""A small Flask shop API, instrumented with one line (see the bottom of ``create_app``).

Run it on its own with ``python examples/flask_app.py`` and open http://127.0.0.1:5000/items/1;
``instrument demo`` drives traffic at it and prints what the kit recorded.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

from flask import Flask, Response, abort, jsonify, request

from instrument.flask import Instrument

ITEMS = {i: {"id": i, "name": f"item-{i}", "price": round(1.5 * i, 2)} for i in range(1, 101)}


def create_app() -> Flask:
    app = Flask(__name__)

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
        return jsonify(received=len(request.get_data()), keys=sorted(payload)), 201

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
    app.run(port=5000, threaded=True)
