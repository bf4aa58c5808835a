"""The HTTP layer of ``opt-tpu-tui serve``: a Starlette app on uvicorn over the engine.

It listens at once and loads the model in a thread, so ``/health`` says 503 while
loading and 200 when ready. Routes: ``/health``, ``/v1/models``,
``/v1/chat/completions``, ``/v1/completions``, ``/metrics``, ``/tokenizer`` (the model's
vocab.json and merges.txt, which a client counts its context meter with) and ``/device``
(the device's figures as JSON, for a client's stats pane). Streams are server-sent
events written by Starlette's ``StreamingResponse``: each event is one ``data:`` line,
so a package for SSE would add a dependency and no behaviour; Starlette cancels the
stream when the client goes away (it listens for ``http.disconnect``), and the stream's
``finally`` cancels the job.

Security and limits (also in ``serve -h``; the numbers are in command.py): any host
but loopback needs an API key, checked in constant time against ``Authorization:
Bearer KEY`` on every route but ``/health`` (401 otherwise); a body over MAX_BODY is
413; headers must arrive within HEADER_SECONDS (the connection is closed otherwise)
and the body within BODY_SECONDS (408). Prompts and replies are logged only with
``--log-requests``.

SIGINT or SIGTERM: uvicorn stops accepting, the engine refuses new jobs and cancels
the running one (its stream ends with finish_reason "stop" and ``[DONE]``), then the
backend is closed and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import math
import signal
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from opt_tpu_tui import paths
from opt_tpu_tui.backends import open_model
from opt_tpu_tui.backends.base import emits_tokens
from opt_tpu_tui.devices import DeviceMonitor
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.native_output import native_stdout_to
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.serve import openai_api as oa
from opt_tpu_tui.serve import registry
from opt_tpu_tui.serve.command import BODY_SECONDS, HEADER_SECONDS, MAX_BODY, is_loopback
from opt_tpu_tui.serve.engine import Done, Engine, EngineClosed, Failed, Job, Piece, QueueFull
from opt_tpu_tui.serve.metrics import CONTENT_TYPE, Gauge, Metrics

STREAM_INTERVAL = 0.01  # seconds: a stream's text goes out at most this often (Inbox)
OPEN_PATHS = ("/health",)  # reachable without the API key (a load balancer's probe)
ROUTES = ("/health", "/metrics", "/device", "/tokenizer", "/v1/models", "/v1/chat/completions", "/v1/completions")
log = logging.getLogger("opt_tpu_tui.serve")
UVICORN_LOG = {  # uvicorn's own warnings (a client speaking https or garbage) as the app's other lines
    "version": 1, "disable_existing_loggers": False,
    "formatters": {"line": {"format": "opt-tpu-tui: uvicorn: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "line", "stream": "ext://sys.stderr"}},
    "loggers": {"uvicorn": {"handlers": ["stderr"], "level": "WARNING", "propagate": False}},
}  # fmt: skip


class State:
    """What the routes share: the model once loaded, its engine, the figures."""

    def __init__(self, args: argparse.Namespace, key: str | None) -> None:
        self.args, self.key = args, key
        self.metrics = Metrics()
        self.model: oa.Model | None = None
        self.engine: Engine | None = None
        self.monitor: DeviceMonitor | None = None
        self.backend_name = ""  # once loaded: "cpu", "bmrt" or "sail"
        self.load_error: BaseException | None = None
        self.registered: Path | None = None  # this server's file in the registry (registry.py)
        self.defaults = SamplingSettings()
        self.tokenizer_files: dict[str, str] = {}

    def load(self, url: str) -> None:
        """Open the model (on the loading thread); the routes answer 503 until it is there."""
        args = self.args
        model_dir = args.model  # checked by command.check_args
        with native_stdout_to(paths.native_output_log()):  # what the TPU runtime prints goes to its log
            backend, tokenizer = open_model(model_dir, args.backend, args.context, args.device)
        files = (("vocab", "vocab.json"), ("merges", "merges.txt"))  # checked by the tokenizer: the clients count with them
        self.tokenizer_files = {key: (Path(model_dir) / name).read_bytes().decode("utf-8") for key, name in files}
        self.engine = Engine(backend, tokenizer, args.slots, args.queue, self.metrics)
        self.monitor, self.backend_name = DeviceMonitor(backend.name, device_id=args.device), backend.name
        self.model = oa.Model(backend.model_name, tokenizer, backend.context_length, int(time.time()), emits_tokens(backend))
        self.registered = registry.register(url, backend.name, backend.model_name)
        if self.engine.slots.count < args.slots:
            say(f"--slots {args.slots}: the {backend.name} backend keeps its K/V on the device, so one slot")
        say(f"ready: {backend.model_name} on {backend.name}, {backend.context_length}-token context")

    def ready(self) -> tuple[oa.Model, Engine]:
        if self.model is None or self.engine is None:
            raise oa.ApiError(503, "the model is loading", kind="server_error", code="model_loading",
                              headers={"Retry-After": "1"})  # fmt: skip
        return self.model, self.engine


def say(message: str) -> None:
    print(f"opt-tpu-tui: {message}", file=sys.stderr, flush=True)


def error_response(error: oa.ApiError) -> JSONResponse:
    return JSONResponse(error.body(), error.status, headers=error.headers)


def header(scope: dict[str, Any], name: bytes) -> bytes:
    """A request header's value (b"" when absent)."""
    return next((value for key, value in scope["headers"] if key == name), b"")


def hostname(url: str) -> str:
    """The host name in ``url`` ("" for none, or for one that does not parse: "http://[::1")."""
    try:
        return urllib.parse.urlsplit(url).hostname or ""
    except ValueError:
        return ""


def server_error(error: BaseException) -> oa.ApiError:
    if isinstance(error, EngineClosed):
        return oa.ApiError(503, "the server is shutting down", kind="server_error")
    return oa.ApiError(500, f"generation failed: {error}", kind="server_error")


def sse(data: Any) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode("utf-8") + b"\n\n"


async def read_json(request: Request) -> Any:
    """The body as JSON, within MAX_BODY bytes (413) and BODY_SECONDS (408)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise oa.ApiError(413, f"the request body is over {MAX_BODY} bytes", code="body_too_large")
    body = bytearray()

    async def read() -> None:
        async for part in request.stream():
            body.extend(part)
            if len(body) > MAX_BODY:
                raise oa.ApiError(413, f"the request body is over {MAX_BODY} bytes", code="body_too_large")

    try:
        await asyncio.wait_for(read(), BODY_SECONDS)
    except asyncio.TimeoutError:
        raise oa.ApiError(408, f"the request body did not arrive within {BODY_SECONDS:g} s") from None
    try:
        return json.loads(bytes(body))
    except (ValueError, RecursionError) as error:
        raise oa.ApiError(400, f"the request body is not valid JSON: {error}", code="invalid_json") from None


def api_route(handler: Callable[[State, Request], Awaitable[Response]], state: State) -> Callable[[Request], Any]:
    """``handler`` with its ApiError (and any other failure) turned into an error in OpenAI's shape."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(state, request)
        except oa.ApiError as error:
            return error_response(error)
        except Exception as error:  # noqa: BLE001 - one JSON error, and the server keeps serving
            log.exception("request failed")
            return error_response(server_error(error))

    return endpoint


async def health(state: State, request: Request) -> Response:
    if state.model is None:
        return JSONResponse({"status": "loading"}, 503, headers={"Retry-After": "1"})
    return JSONResponse({"status": "ok"})


async def models(state: State, request: Request) -> Response:
    model, _ = state.ready()
    name = request.path_params.get("name")
    if name is None:
        return JSONResponse(oa.models_list(model))
    if name != model.id:
        raise oa.ApiError(404, f"The model `{name}` does not exist", "model", "model_not_found")
    return JSONResponse(oa.model_card(model))


async def tokenizer_files(state: State, request: Request) -> Response:
    """The model's tokenizer as its two files' texts: ``{"vocab": vocab.json, "merges": merges.txt}``."""
    state.ready()
    return JSONResponse(state.tokenizer_files)


async def metrics(state: State, request: Request) -> Response:
    engine, monitor = state.engine, state.monitor
    sample = await asyncio.get_running_loop().run_in_executor(None, monitor.sample) if monitor else None
    extra = []
    if engine is not None:
        slots, snapshot = Gauge("kv_slots", "Conversations whose K/V are kept."), Gauge(
            "kv_snapshot_bytes", "RAM held by K/V copies of the conversations not in the cache."
        )
        slots.set(len(engine.slots.slots) or 1)
        snapshot.set(engine.slots.snapshot_bytes)
        extra = [slots, snapshot]
    return Response(state.metrics.render(sample, extra), media_type=CONTENT_TYPE)


async def device(state: State, request: Request) -> Response:
    """The figures the UI's stats pane shows (devices.DeviceSample), for a client's pane: read on each request."""
    state.ready()
    monitor = state.monitor
    assert monitor is not None
    sample = await asyncio.get_running_loop().run_in_executor(None, monitor.sample)
    figures = {**dataclasses.asdict(sample), "unavailable": sorted(sample.unavailable)}
    return JSONResponse({"backend": state.backend_name, "sample": figures})


def generate(chat: bool) -> Callable[[State, Request], Awaitable[Response]]:
    """The handler of /v1/chat/completions (``chat``) or /v1/completions."""

    async def handler(state: State, request: Request) -> Response:
        model, engine = state.ready()
        api = oa.parse(await read_json(request), model, chat, state.defaults)
        events = Inbox(asyncio.get_running_loop())
        job = Job(api.ids, api.settings, events.put, api.stop_strings, chat=chat)
        try:
            engine.submit(job)
        except QueueFull:
            waiting = engine.waiting
            raise oa.ApiError(429, f"the server is busy: {waiting} {'request waits' if waiting == 1 else 'requests wait'} "
                              "already", kind="rate_limit_error", code="queue_full",
                              headers={"Retry-After": str(max(1, math.ceil(engine.wait_estimate())))}) from None  # fmt: skip
        except EngineClosed as closed:
            raise server_error(closed) from None
        rid = oa.new_id(chat)
        if state.args.log_requests:
            log.info("%s prompt: %r", rid, api.text)
        if api.stream:
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(stream(state, api, rid, model.id, job, events), media_type="text/event-stream",
                                     headers=headers)  # fmt: skip
        try:
            text, done = await collect(request, job, events)
        finally:
            job.cancel.set()
        if state.args.log_requests:
            log.info("%s reply: %r", rid, text)
        return JSONResponse(oa.response(api, rid, model.id, text, done.finish_reason, done.stats))

    return handler


class Inbox:
    """The engine's events for one request, handed from the device thread to the event loop in batches.

    Each chunk written costs the event loop a JSON encoding and a write, and every wake-up
    a call and a write to the loop's pipe; on a small model that made a fifth of a token's
    time, taken from the device thread (one GIL). So the device thread wakes the loop only
    for the first event of a batch (or a last one), and a stream asks for its next batch
    ``not_before`` STREAM_INTERVAL after its last write: text made in between goes out as
    one chunk (pieces are text, not tokens, in OpenAI's streams too). The end of a reply
    is never held back.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._events: list[Any] = []
        self._ready = asyncio.Event()
        self._ended = asyncio.Event()

    def put(self, event: Any) -> None:
        """Called on the device thread (a Job's sink)."""
        last = not isinstance(event, Piece)
        with self._lock:
            self._events.append(event)
            wake = len(self._events) == 1
        if wake or last:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone
                self._loop.call_soon_threadsafe(self._wake, last)

    def _wake(self, last: bool) -> None:
        self._ready.set()
        if last:
            self._ended.set()

    async def take(self, timeout: float | None = None, not_before: float = 0.0) -> list[Any]:
        """The events so far (usually at least one; [] if ``timeout`` seconds pass without one).

        ``not_before`` (the loop's clock): wait until then for more, unless the reply ends.
        """
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError:
            return []
        delay = not_before - self._loop.time()
        if delay > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ended.wait(), delay)
        with self._lock:
            events, self._events = self._events, []
            self._ready.clear()
        return merged(events)


def merged(events: list[Any]) -> list[Any]:
    """``events`` with each run of Pieces joined into one."""
    out: list[Any] = []
    for event in events:
        if isinstance(event, Piece) and out and isinstance(out[-1], Piece):
            out[-1] = Piece(out[-1].text + event.text, event.tokens)
        else:
            out.append(event)
    return out


async def collect(request: Request, job: Job, events: Inbox) -> tuple[str, Done]:
    """The whole reply of a non-streaming request; its job is cancelled as soon as the client goes away."""
    watcher = asyncio.ensure_future(cancel_on_disconnect(request, job))
    pieces: list[str] = []
    try:
        while True:
            for event in await events.take():
                if isinstance(event, Piece):
                    pieces.append(event.text)
                elif isinstance(event, Done):
                    return "".join(pieces), event
                else:
                    raise server_error(event.error)
    finally:
        watcher.cancel()


async def cancel_on_disconnect(request: Request, job: Job) -> None:
    """Cancel ``job`` when the client disconnects: the request's body is read, so what comes next is that.

    (A stream notices by itself: Starlette stops it; a reply that is collected whole
    would otherwise run to its max_tokens for nobody, holding the device.)
    """
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancel.set()


async def stream(state: State, api: oa.ApiRequest, rid: str, model: str, job: Job, events: Inbox) -> AsyncIterator[bytes]:
    """The SSE body: the role (chat), the text pieces, the finish reason, the usage if asked, ``[DONE]``."""
    pieces: list[str] = []
    try:
        if api.chat:
            yield sse(oa.chunk(api, rid, model, role=True))
        ended, loop, written = False, asyncio.get_running_loop(), 0.0
        while not ended:
            for event in await events.take(not_before=written + STREAM_INTERVAL):
                if isinstance(event, Piece):
                    pieces.append(event.text)
                    yield sse(oa.chunk(api, rid, model, event.text, tokens=event.tokens))
                    written = loop.time()
                    continue
                if isinstance(event, Done):
                    yield sse(oa.chunk(api, rid, model, finish=event.finish_reason, stop_reason=event.stats.stop_reason))
                    if api.include_usage:
                        yield sse(oa.chunk(api, rid, model, stats=event.stats))
                else:
                    assert isinstance(event, Failed)
                    yield sse(server_error(event.error).body())
                ended = True
                break
        yield b"data: [DONE]\n\n"
    finally:
        job.cancel.set()  # a client gone mid-stream: the device is freed within one token
        if state.args.log_requests:
            log.info("%s reply: %r", rid, "".join(pieces))


class Guard:
    """ASGI middleware: the API key (when one is set) and the request counter, by route and status."""

    def __init__(self, app: Any, state: State) -> None:
        self.app, self.state = app, state
        self.expected = state.key.encode() if state.key else None

    def authorized(self, scope: dict[str, Any]) -> bool:
        if self.expected is None or scope["path"] in OPEN_PATHS:
            return True
        scheme, _, token = header(scope, b"authorization").partition(b" ")
        return hmac.compare_digest(token.strip(), self.expected) and scheme.lower() == b"bearer"  # RFC 7235: any case

    def from_a_web_page(self, scope: dict[str, Any]) -> bool:
        """Without a key (a loopback bind), what a web page in the user's browser could send is refused.

        A page on any site may POST to 127.0.0.1 (a text/plain body needs no CORS
        preflight), which would spend the device on it, and a name it makes resolve to
        127.0.0.1 (DNS rebinding) could read the replies. The browser says where the page
        comes from (Origin) and which name it asked for (Host): both must be loopback.
        """
        if self.expected is not None:
            return False
        origin, host = header(scope, b"origin").decode("latin-1"), header(scope, b"host").decode("latin-1")
        names = [hostname(origin)] if origin else []  # "null": a file's page
        if host:
            names.append(hostname(f"//{host}"))
        return not all(is_loopback(name) for name in names)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [0]

        async def counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        if self.from_a_web_page(scope):
            refused = oa.ApiError(403, "requests from web pages are refused (Origin or Host not loopback); "
                                  "serve with --host and an API key to be reached by another name", code="forbidden")  # fmt: skip
            await error_response(refused)(scope, receive, counted)
        elif self.authorized(scope):
            await self.app(scope, receive, counted)
        else:
            denied = oa.ApiError(401, "a valid API key is needed: Authorization: Bearer KEY", code="invalid_api_key",
                                 headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
            await error_response(denied)(scope, receive, counted)
        path = scope["path"] if scope["path"] in ROUTES else "other"
        self.state.metrics.requests.inc(path=path, status=str(status[0]))


async def not_found(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return error_response(oa.ApiError(error.status_code, f"{request.method} {request.url.path}: {error.detail}"))


def build_app(state: State) -> Any:
    def route(path: str, handler: Any, methods: list[str]) -> Route:
        return Route(path, api_route(handler, state), methods=methods)

    app = Starlette(
        routes=[
            route("/health", health, ["GET"]),
            route("/metrics", metrics, ["GET"]),
            route("/device", device, ["GET"]),
            route("/tokenizer", tokenizer_files, ["GET"]),
            route("/v1/models", models, ["GET"]),
            route("/v1/models/{name:path}", models, ["GET"]),
            route("/v1/chat/completions", generate(chat=True), ["POST"]),
            route("/v1/completions", generate(chat=False), ["POST"]),
        ],
        exception_handlers={HTTPException: not_found},
    )
    return Guard(app, state)


class HeaderTimeoutH11(H11Protocol):  # type: ignore[misc]
    """uvicorn's HTTP/1.1 protocol, closing a connection whose next request's headers take over HEADER_SECONDS.

    uvicorn times out idle keep-alive connections but not a client that opens one and
    trickles its headers (a slowloris); this arms a timer at the connection's start and
    after each response, which a complete request head (a new ``cycle``) disarms.
    """

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        cycle = self.cycle

        def expire() -> None:
            if self.cycle is cycle and not self.transport.is_closing():
                self.transport.close()

        self.loop.call_later(HEADER_SECONDS, expire)


class Server(uvicorn.Server):  # type: ignore[misc]
    """uvicorn's server, whose exit signal also stops the engine, and which exits 0 after one (no re-raise)."""

    def __init__(self, config: uvicorn.Config, state: State) -> None:
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.state.engine is not None:
            self.state.engine.stop_all()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is one clear error (and --port 0 reports its port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise UserError(f"cannot listen on {host} port {port}: {error.strerror or error}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(args: argparse.Namespace, key: str | None) -> int:
    """Listen, load the model meanwhile, serve until SIGINT/SIGTERM; the exit status."""
    if args.log_requests:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    state = State(args, key)
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(
        build_app(state), http=HeaderTimeoutH11, lifespan="off", log_level="warning", access_log=False, log_config=UVICORN_LOG,
        timeout_graceful_shutdown=5, limit_concurrency=max(64, 2 * args.queue + 16),
    )  # fmt: skip
    server = Server(config, state)

    def load() -> None:
        try:
            state.load(f"http://{url_host}:{port}")
        except (UserError, MemoryError) as error:  # said after the server stops, in one line
            state.load_error = error
            server.should_exit = True
        except BaseException as error:  # noqa: BLE001 - a runtime's own failure: one line too, as the UI says it
            state.load_error = UserError(f"could not load the model: {type(error).__name__}: {error}")
            server.should_exit = True

    say(f"listening on http://{url_host}:{port} (OpenAI API under /v1); loading the model...")
    loader = threading.Thread(target=load, name="opt-tpu-tui load", daemon=True)
    loader.start()
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
        if state.engine is not None:
            state.engine.close()
        if state.registered is not None:
            state.registered.unlink(missing_ok=True)
    if state.load_error is not None:
        raise state.load_error
    say("stopped")
    return 0
