"""A small web demo: drop or upload an image (or click one from a gallery of test images) and see
the top-5 labels with probability bars and the superclass.

Starlette for the routes, served by uvicorn's h11 protocol: a real HTTP parser refuses malformed
requests (negative or non-numeric Content-Length, oversized headers) before they reach the app.
What the parser leaves to us, and why each limit exists:
- the body is read as a stream and we stop at max_bytes + 1, so a large or lying upload never fills
  memory; a declared size over the limit is refused before a byte of the body is read;
- the body must arrive within `body_timeout` seconds (a client that sends it a byte at a time
  would otherwise hold a connection and its buffer forever);
- the request head must arrive within `head_timeout` seconds of the connection opening or of the
  previous response: uvicorn's keep-alive timer is only armed after a response, so without it a
  client that connects and sends nothing (or headers a byte at a time) is never cut;
- decoding runs in worker threads and the model in the micro-batcher's thread (batching.py: requests
  that arrive together share one forward pass), so a slow image never stalls the event loop.
Load is shed, not users: what is bounded is what costs memory and CPU (the bytes of bodies held in memory,
and requests decoded or waiting for the model), not connections. An idle or stalled connection costs a
coroutine and the few bytes it sent, and its deadline cuts it; the page and /health never queue behind
uploads; an upload past a bound is answered 503 with Retry-After at once, never left hanging.
"""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import json
import socket
import sys
import threading
import time
from importlib import resources

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from c100 import UserError, data
from c100.batching import MicroBatcher
from c100.explain import overlay, png_data_uri
from c100.images import decode_image

HEAD_TIMEOUT = 10.0  # s for the request line and headers: browsers send them in one packet
BODY_TIMEOUT = 30.0  # s for the whole upload: 10 MB in 30 s needs ~2.7 Mbit/s
KEEP_ALIVE = 5.0  # s an idle keep-alive connection is kept (uvicorn's default)
BODY_BUDGET = 16  # uploads' bytes held in memory at once, in --max-upload-mb's (160 MB by default)
MAX_WAITING = 128  # uploads decoded or waiting for the model at once: 4 batches of 32 queued at most
RETRY_AFTER = 1  # s a shed upload is told to wait: a batch takes ~10-100 ms on a CPU
# Past this uvicorn answers 503 to every request: only the file descriptors bound it now. Idle sockets are
# cut by the head deadline, so holding this many open means opening ~100 a second, every second.
MAX_CONNECTIONS = 1000


def gallery(data_dir: str | None, n: int = 24, seed: int = 0) -> list[dict]:
    """n test images as PNG data URIs, or none when the data set is not at hand."""
    if not data_dir:
        return []
    try:
        splits, meta = data.load(data_dir, download_ok=False, splits=("test",), check_size=False)
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


def heat_map(model, image: np.ndarray, label: str) -> str:
    """The image under the heat map of the evidence for `label` (explain.py), as a PNG data URI."""
    answer = model.explain(image, targets=[[model.classes.index(label)]])[0]
    return png_data_uri(overlay(image, answer["map"], scale=5))


def script_json(obj) -> str:
    """JSON safe inside a <script type="application/json"> element: no `</script>`, `<!--` or entity
    can form, because <, > and & are written as JSON escapes (which JSON.parse reads back unchanged)."""
    return json.dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(max_bytes: int, gallery_items: list[dict] | None) -> str:
    page = resources.files("c100").joinpath("static/index.html").read_text()
    config = script_json({"maxBytes": max_bytes, "gallery": gallery_items or []})
    return page.replace("__CONFIG__", config).replace("__MAX_MB__", f"{max_bytes / (1 << 20):g}")


def _error(status: int, message: str, close: bool = False) -> JSONResponse:
    """{"error": one line}; close=True when the request body was not read to its end, so the rest of
    it is never taken for the next request on the connection."""
    line = (str(message).strip().splitlines() or ["error"])[0]
    return JSONResponse({"error": line}, status, headers={"connection": "close"} if close else None)


class Load:
    """What uploads hold at once: body bytes in memory and requests decoded or waiting for the model. Only
    the event loop's thread changes it, so plain counters do."""

    def __init__(self, max_bytes: int, max_waiting: int):
        self.max_bytes, self.max_waiting = max_bytes, max_waiting
        self.bytes = self.waiting = 0
        self.shed = 0  # uploads answered 503

    def take_bytes(self, n: int) -> bool:
        if self.bytes + n > self.max_bytes:
            return False
        self.bytes += n
        return True

    def take_waiting(self) -> bool:
        if self.waiting >= self.max_waiting:
            return False
        self.waiting += 1
        return True


def _busy(load: Load, what: str) -> JSONResponse:
    load.shed += 1
    response = _error(503, f"busy: {what}; try again in {RETRY_AFTER} s", close=True)
    response.headers["retry-after"] = str(RETRY_AFTER)
    return response


def create_app(predictor, max_bytes: int = 10 << 20, gallery_items: list[dict] | None = None, *,
               body_timeout: float = BODY_TIMEOUT, max_batch: int = 32, body_budget: int | None = None,
               max_waiting: int = MAX_WAITING) -> Starlette:
    """The ASGI app: GET / (the page), GET /health, POST /api/predict (raw image bytes as the body; with
    ?explain=1 the answer also carries "map", a PNG data URI of the image under the Grad-CAM heat map of its
    first class, which the page shows beside the answer). body_budget: the bytes of uploads held at once
    (default BODY_BUDGET x max_bytes); max_waiting: the uploads decoded or waiting for the model at once.
    Past either, an upload gets 503 and Retry-After."""
    page = render_page(max_bytes, gallery_items)
    limit_mb = f"{max_bytes / (1 << 20):g}"
    load = Load(body_budget or BODY_BUDGET * max_bytes, max_waiting)

    def too_large(size: int) -> JSONResponse:
        return _error(413, f"file too large: {size / (1 << 20):.1f} MB, the limit is {limit_mb} MB", close=True)

    # requests that arrive together share one forward pass (batching.py); decoding stays per request
    batcher = MicroBatcher(predictor, k=5, max_batch=max_batch)

    async def predict_bytes(raw: bytes | bytearray, explain: bool = False) -> dict:
        array = await run_in_threadpool(decode_image, io.BytesIO(raw))  # ValueError: a one-line reason
        out = {"top": await asyncio.wrap_future(batcher.submit(array))}
        if explain and hasattr(predictor, "explain"):  # outside the batcher: a backward pass per image
            try:
                out["map"] = await run_in_threadpool(heat_map, predictor, array, out["top"][0]["label"])
            except UserError as e:  # a model with no torch network (an ONNX file alone): the answer still counts
                out["map_error"] = str(e)
        return out

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def predict(request: Request) -> Response:
        declared = request.headers.get("content-length")
        chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
        if declared is None and not chunked:
            return _error(411, "send the image as the request body (Content-Length missing)", close=True)
        if declared is not None:
            # uvicorn's parser already refuses these; checked again for any other ASGI server
            if not declared.strip().isdigit():
                return _error(400, f"bad Content-Length {declared[:20]!r}: not a byte count", close=True)
            if int(declared) > max_bytes:
                return too_large(int(declared))  # refused before a byte of the body is read
            if int(declared) == 0:
                return _error(400, "empty file")
        body = bytearray()
        try:  # the bytes as they arrive: a stalled upload holds only what it sent
            with anyio.fail_after(body_timeout):
                async for chunk in request.stream():
                    # over the file limit is 413 whatever the load: checked before the shared budget, which
                    # one large read from the socket could otherwise exhaust first (a 503 for a 413)
                    if len(body) + len(chunk) > max_bytes:  # chunked, or more than declared
                        return too_large(len(body) + len(chunk))
                    if not load.take_bytes(len(chunk)):
                        return _busy(load, "too many uploads in progress")
                    body += chunk
            if not body:
                return _error(400, "empty file")
            if not load.take_waiting():
                return _busy(load, "too many images waiting for the model")
            try:
                explain = request.query_params.get("explain", "") in ("1", "true")
                return JSONResponse(await predict_bytes(body, explain))
            except ValueError as e:
                return _error(400, str(e))
            finally:
                load.waiting -= 1
        except TimeoutError:
            return _error(408, f"upload too slow: the body did not arrive within {body_timeout:g} s", close=True)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read an answer
        finally:
            load.bytes -= len(body)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, exc.detail)  # 404, 405 as JSON like every other answer

    async def server_error(request: Request, exc: Exception) -> Response:
        return _error(500, "internal error: the server's console has the traceback")

    routes = [Route("/", index), Route("/index.html", index), Route("/health", health),
              Route("/api/predict", predict, methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.batcher = batcher  # its counters tell how well requests were batched
    app.state.load = load  # what uploads hold now, and how many were shed
    return app


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: 127.x, ::1, localhost."""
    host = host.strip("[]")
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name (or 0.0.0.0 / ::, handled above as addresses): assume reachable


def warn_if_exposed(host: str, file=None) -> bool:
    """Say once, on stderr, that the demo has no authentication when bound beyond loopback."""
    if is_loopback(host):
        return False
    print(f"warning: listening on {host}, which other machines may reach; this demo has no authentication "
          f"and runs the model for anyone who can connect (use --host 127.0.0.1 to keep it local)",
          file=file or sys.stderr, flush=True)
    return True


def _url(host: str, port: int) -> str:
    return f"http://[{host.strip('[]')}]:{port}" if ":" in host else f"http://{host}:{port}"


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, or c100.UserError with a one-line reason (port taken, unknown host...)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as e:
        raise UserError(f"cannot listen on {host}:{port} ({getattr(e, 'strerror', None) or e}); "
                        f"pick another --host") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after Ctrl-C
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port") from None
    return sock


def _allow_connections(n: int) -> None:
    """Raise this process's open-file limit to n where it is lower (1024 is a common default) and the hard
    limit allows: each connection is a file descriptor, and running out makes accept() fail."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < n:
            resource.setrlimit(resource.RLIMIT_NOFILE, (n if hard == resource.RLIM_INFINITY else min(n, hard), hard))
    except (ImportError, ValueError, OSError):  # Windows, or a limit this process may not change
        pass


def _server(app, head_timeout: float = HEAD_TIMEOUT, keep_alive: float = KEEP_ALIVE):
    import h11
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        """uvicorn's h11 protocol plus a deadline for each request head (see the module docstring)."""

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_head_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_deadline()

        def _arm_head_deadline(self) -> None:
            waiting_for = self.cycle  # a new request head replaces self.cycle
            self.loop.call_later(head_timeout, self._head_deadline, waiting_for)

        def _head_deadline(self, waiting_for) -> None:
            if self.cycle is waiting_for and not self.transport.is_closing():
                self.transport.close()

        def send_400_response(self, msg: str) -> None:
            """The parser refused the request: answer in JSON like the app does, then close."""
            body = json.dumps({"error": "malformed HTTP request (bad Content-Length, headers or framing)"}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                       (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                          h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    # h11, not httptools: the malformed-request behaviour tested in tests/test_serve.py is h11's
    config = uvicorn.Config(app, http=Protocol, ws="none", lifespan="off", log_config=None, log_level="warning",
                            access_log=False, timeout_keep_alive=keep_alive, timeout_graceful_shutdown=3,
                            limit_concurrency=MAX_CONNECTIONS)
    return uvicorn.Server(config)


def serve(predictor, host: str = "127.0.0.1", port: int = 8000, max_bytes: int = 10 << 20,
          gallery_items: list[dict] | None = None) -> None:
    """Serve until Ctrl-C. Raises c100.UserError when the address cannot be bound."""
    sock = _listen(host, port)
    _allow_connections(MAX_CONNECTIONS + 100)
    server = _server(create_app(predictor, max_bytes, gallery_items))
    warn_if_exposed(host)
    print(f"serving on {_url(host, sock.getsockname()[1])}  (Ctrl-C stops)", flush=True)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully, then re-raises the signal
        pass
    finally:
        sock.close()


class ServerThread:
    """A server running in a background thread; shutdown() stops it and waits."""

    def __init__(self, server, sock: socket.socket, url: str):
        self.server, self.sock, self.url = server, sock, url
        self.thread = threading.Thread(target=self._run, daemon=True, name="c100-serve")

    def _run(self) -> None:
        self.server.run(sockets=[self.sock])  # its own event loop; signals stay with the main thread

    def shutdown(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()


def serve_in_thread(app_or_predictor, host: str = "127.0.0.1", port: int = 0, *, head_timeout: float = HEAD_TIMEOUT,
                    keep_alive: float = KEEP_ALIVE, **app_kw) -> tuple[ServerThread, str]:
    """Start in a background thread (tests, notebooks); returns a handle with .shutdown() and the
    base URL with the real port (port=0 picks a free one). Given a predictor, builds the app with
    create_app(predictor, **app_kw)."""
    app = create_app(app_or_predictor, **app_kw) if hasattr(app_or_predictor, "predict") else app_or_predictor
    sock = _listen(host, port)
    handle = ServerThread(_server(app, head_timeout, keep_alive), sock, _url(host, sock.getsockname()[1]))
    handle.thread.start()
    deadline = time.monotonic() + 10
    while not handle.server.started:
        if not handle.thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server thread did not start")
        time.sleep(0.01)
    return handle, handle.url
