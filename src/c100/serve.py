"""A small web demo: drop or upload an image (or click one from a gallery of test images) and see
the top-5 labels with probability bars and the superclass.

The standard library's threading HTTP server is enough here: one page, one JSON endpoint, no
framework to install, start-up in well under a second. Inference is read-only (eval mode, no_grad),
so concurrent requests share one model safely.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

import numpy as np

from c100.predict import Predictor, decode_image


def gallery(data_dir: str | None, n: int = 24, seed: int = 0) -> list[dict]:
    """n test images as PNG data URIs, or none when the data set is not at hand."""
    if not data_dir:
        return []
    from c100 import UserError, data

    try:
        splits, meta = data.load(data_dir, download_ok=False, splits=("test",))
    except UserError:
        return []
    test = splits["test"]
    idx = np.random.default_rng(seed).choice(len(test), min(n, len(test)), replace=False)
    from PIL import Image

    out = []
    for i in idx:
        buf = io.BytesIO()
        Image.fromarray(test.images[i].transpose(1, 2, 0)).save(buf, format="PNG")
        out.append({"src": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(),
                    "label": meta.fine_names[test.fine[i]]})
    return out


class App:
    def __init__(self, predictor: Predictor, max_bytes: int = 10 << 20, gallery_items: list[dict] | None = None):
        self.predictor, self.max_bytes = predictor, max_bytes
        page = resources.files("c100").joinpath("static/index.html").read_text()
        self.page = page.replace("__GALLERY__", json.dumps(gallery_items or [])).replace(
            "__MAX_MB__", f"{max_bytes / (1 << 20):g}").encode()

    def predict_bytes(self, raw: bytes) -> dict:
        array = decode_image(io.BytesIO(raw))  # ValueError with a one-line reason on bad input
        return {"top": self.predictor.top(array[None], 5)[0]}

    def handler(self) -> type[BaseHTTPRequestHandler]:
        app = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, obj: dict) -> None:
                self._send(status, json.dumps(obj).encode())

            def do_GET(self):  # noqa: N802
                if self.path in ("/", "/index.html"):
                    self._send(HTTPStatus.OK, app.page, "text/html; charset=utf-8")
                elif self.path == "/health":
                    self._json(HTTPStatus.OK, {"ok": True})
                else:
                    self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

            def do_POST(self):  # noqa: N802
                if self.path != "/api/predict":
                    return self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
                try:
                    size = int(self.headers.get("Content-Length", ""))
                except ValueError:
                    return self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "send the image as the request body"})
                if size > app.max_bytes:
                    self.close_connection = True  # do not read a body we refuse
                    return self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {
                        "error": f"file too large: {size / (1 << 20):.1f} MB, the limit is "
                                 f"{app.max_bytes / (1 << 20):g} MB"})
                if size == 0:
                    return self._json(HTTPStatus.BAD_REQUEST, {"error": "empty file"})
                raw = self.rfile.read(size)
                try:
                    self._json(HTTPStatus.OK, app.predict_bytes(raw))
                except ValueError as e:
                    self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})

            def log_message(self, fmt, *args):  # quiet: one line per request would drown the console
                pass

        return Handler


def make_server(app: App, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), app.handler())
    server.daemon_threads = True
    return server


def serve_in_thread(app: App, host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start in a background thread (tests, notebooks); returns the server and its base URL."""
    server = make_server(app, host, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}"
