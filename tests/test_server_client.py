"""What the --server clients say when the server is not there, refuses them, or goes away (serve/client.py).

A few lines of the standard library's HTTP server stand for the server's misbehaviour:
no model, no subprocess, so these run in a blink.
"""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest

from opt_tpu_tui import paths
from opt_tpu_tui.backends.cpu import CPUBackend
from opt_tpu_tui.cli import main
from opt_tpu_tui.config import update_settings_file
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.generation import Generation
from opt_tpu_tui.history import HistoryStore
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.serve.client import KEY_VARIABLE, RemoteEngine, ServerClient, ServerModel, Unreachable
from opt_tpu_tui.tokenizer import Tokenizer

Answer = Callable[[BaseHTTPRequestHandler], None]  # typing's: evaluated at import, 3.8 has no abc subscripts


@contextmanager
def fake_server(answer: Answer, port: int = 0) -> Iterator[str]:
    """A plain-http server on a loopback ``port`` (0: any free one) that answers every request with ``answer``;
    yields its address."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            answer(self)

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return int(free.getsockname()[1])


def test_a_refused_connection_says_to_start_the_server_or_run_without_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(Unreachable) as raised:
        ServerClient(url).model()
    assert raised.value.reason == "Connection refused"
    assert str(raised.value) == (
        f"cannot reach the server at {url}: Connection refused; is `opt-tpu-tui serve` running there (over SSH: is "
        "the `ssh -L` tunnel open)? Or run without --server to load a model here"
    )


def test_a_401_says_where_the_clients_take_the_key_from(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(handler: BaseHTTPRequestHandler) -> None:
        body = json.dumps({"error": {"message": "a valid API key is needed: Authorization: Bearer KEY"}}).encode()
        handler.send_response(401)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    with fake_server(refuse) as address:
        with pytest.raises(UserError, match=f"said 401: a valid API key is needed: .*{KEY_VARIABLE}, which is not set$"):
            ServerClient(f"http://{address}").model()
        monkeypatch.setenv(KEY_VARIABLE, "wrong")
        with pytest.raises(UserError, match=f"{KEY_VARIABLE}, and the server refused that one$"):
            ServerClient(f"http://{address}").model()


def test_https_to_the_plain_http_server_says_to_use_http() -> None:
    def never(handler: BaseHTTPRequestHandler) -> None:
        raise AssertionError("a TLS handshake is not a request")

    with fake_server(never) as address:
        with pytest.raises(UserError) as raised:
            ServerClient(f"https://{address}").model()
    message = str(raised.value)
    assert message.startswith(f"the server at https://{address} does not speak https (")
    assert message.endswith(f"`opt-tpu-tui serve` speaks plain http, so use http://{address}")


def test_a_stream_cut_midway_says_so_in_plain_words() -> None:
    def cut(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Connection", "close")
        handler.end_headers()
        chunk = {"choices": [{"index": 0, "text": "Hello"}]}
        handler.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        handler.close_connection = True  # and no [DONE]: the server died, or the tunnel closed

    with fake_server(cut) as address:
        pieces = []
        with pytest.raises(UserError) as raised:
            for chunk in ServerClient(f"http://{address}").stream("/v1/completions", {"prompt": "hi"}):
                pieces.append(chunk["choices"][0]["text"])
    assert pieces == ["Hello"]
    assert str(raised.value) == (
        f"the connection to the server at http://{address} ended in the middle of the reply: the server stopped, "
        "or the connection to it was cut"
    )


@pytest.mark.parametrize("address", ["ftp://x", "unreachable"])
def test_a_saved_server_setting_that_fails_is_named_with_its_file_and_what_to_do(
    capsys: pytest.CaptureFixture, address: str
) -> None:
    """No --server was given: the errors name the setting and its file, and say to fix it or give --model."""
    if address == "unreachable":
        address = f"http://127.0.0.1:{free_port()}"
    update_settings_file({"server": address})
    assert main(["-p", "hi"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--server" not in lines[0], lines
    where = f'the setting "server" ({address}) in {paths.settings_file()}: not an http:// address ('
    if address == "ftp://x":
        assert lines[0] == f"opt-tpu-tui: error: {where}fix it there, or give --model to run a model here)"
    else:
        assert lines[0].startswith(
            f'opt-tpu-tui: error: cannot reach the server at {address} (the setting "server" in {paths.settings_file()}): '
            "Connection refused; is `opt-tpu-tui serve` running there"
        )
        assert lines[0].endswith(f'Or change the setting "server" in {paths.settings_file()}, or give --model to run a model here')


def test_a_bad_server_flag_says_what_an_address_looks_like(capsys: pytest.CaptureFixture) -> None:
    assert main(["--server", "ftp://x", "-p", "hi"]) == 2
    assert capsys.readouterr().err == (
        "opt-tpu-tui: error: --server ftp://x: not an http:// address (give one such as http://127.0.0.1:8000)\n"
    )


def test_a_raw_prompt_too_long_for_the_servers_context_is_refused_here_in_the_in_process_words(tiny_model: Path) -> None:
    """Counted with the server model's tokenizer before asking: the address answers nothing, and is not asked."""
    tokenizer = Tokenizer.from_dir(tiny_model)
    engine = RemoteEngine(ServerClient(f"http://127.0.0.1:{free_port()}"), ServerModel("here", "tiny", 32), tokenizer)
    text = "word " * 100
    here = Generation(CPUBackend(tiny_model, 32), tokenizer, tokenizer.encode(text))
    with pytest.raises(UserError) as in_process:
        list(here)
    with pytest.raises(UserError) as remote:
        engine.complete(text, SamplingSettings())
    assert str(remote.value) == str(in_process.value) == f"the prompt is {len(tokenizer.encode(text))} tokens, but the context holds 32: shorten it"


def chat_server(tiny_model: Path, requests: list[dict], die_first: bool = True) -> Answer:
    """A server of ``tiny_model``'s tokenizer whose first chat request dies before its answer (the server was
    killed; unless not ``die_first``), and whose next ones reply "Hi there"; the chat requests' bodies go into
    ``requests``."""
    files = {"vocab": (tiny_model / "vocab.json").read_text(), "merges": (tiny_model / "merges.txt").read_text()}

    def answer(handler: BaseHTTPRequestHandler) -> None:
        def send(status: int, data: object) -> None:
            body = json.dumps(data).encode()
            handler.send_response(status)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)

        if handler.path == "/v1/models":
            return send(200, {"data": [{"id": "tiny-opt", "context_length": 128}]})
        if handler.path == "/tokenizer":
            return send(200, files)
        if handler.path != "/v1/chat/completions":
            return send(404, {"error": {"message": "not here"}})
        requests.append(json.loads(handler.rfile.read(int(handler.headers["Content-Length"]))))
        if die_first and len(requests) == 1:
            handler.close_connection = True  # no answer at all
            return None
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Connection", "close")
        handler.end_headers()
        chunks = [
            {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi there"}}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 2}},
        ]
        handler.wfile.write(b"".join(f"data: {json.dumps(chunk)}\n\n".encode() for chunk in chunks) + b"data: [DONE]\n\n")
        handler.close_connection = True
        return None

    return answer


def test_a_chat_reply_that_fails_before_its_first_word_leaves_one_error_line_and_no_turn(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    """No "[stopped]" (the user stopped nothing), no stats of a reply that never was, and the next message's
    prompt does not hold the failed one; the history keeps only the turn that was answered."""
    requests: list[dict] = []
    with fake_server(chat_server(tiny_model, requests)) as address:
        monkeypatch.setattr(sys, "stdin", io.StringIO("first message\nsecond message\n"))
        code = main(["--server", f"http://{address}", "-c"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[1:] == ["you> first message", "you> second message", "bot> Hi there", "you> "]
    errors = err.splitlines()
    assert len(errors) == 2 and errors[0].startswith(f"error: cannot reach the server at http://{address}: "), err
    assert errors[1].startswith("[20 prompt tokens"), err  # the stats of the reply that was given, only
    assert [m["content"] for m in requests[1]["messages"][1:]] == ["second message"]
    store, _ = HistoryStore.open()
    try:
        (listed,) = store.list_conversations()
        assert [(t.user, t.assistant) for t in store.load(listed.id)] == [("second message", "Hi there")]
    finally:
        store.close()
