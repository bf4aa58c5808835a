"""``opt-tpu-tui serve`` as a real child process on a loopback port, driven by the official ``openai`` package,
curl and plain HTTP: the same text as ``-p``, OpenAI's shapes, concurrency, cancellation, limits, keys, shutdown."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import serve_support
from serve_support import REPO, ServeProcess, child_env, get, metric, request
from tiny import SLOW_CONFIG, make_model

openai = pytest.importorskip("openai", reason="the openai package (the dev extra) drives these tests")
pytest.importorskip("uvicorn", reason="the serve extra (starlette, uvicorn) is not installed")

from opt_tpu_tui.chat import DEFAULT_PREAMBLE, transcript  # noqa: E402
from opt_tpu_tui.safe_text import terminal_safe  # noqa: E402
from opt_tpu_tui.serve.command import MAX_BODY  # noqa: E402
from opt_tpu_tui.tokenizer import Tokenizer  # noqa: E402

PREAMBLE = "A short test conversation."
PROMPTS = [
    "Hello world, this is",
    "What is the capital of France?",
    "The quick brown fox",
    "emoji and more: café",
    "Ελληνικά. Русский",
    "0123456789 !@#",
    "small test of the tokenizer",
    "User: hello",
]
GREEDY = {"temperature": 0, "repetition_penalty": 1.1}  # -p gets the same through its flags


@pytest.fixture(scope="module")
def server(tiny_model: Path) -> Iterator[ServeProcess]:
    with ServeProcess("--model", str(tiny_model), "--slots", "2") as process:
        yield process.wait_ready()


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model big enough that a long reply takes seconds: room to drop a client or fill the queue meanwhile."""
    return make_model(tmp_path_factory.mktemp("slow") / "slow-opt", **SLOW_CONFIG)


@pytest.fixture(scope="module")
def slow_server(slow_model: Path) -> Iterator[ServeProcess]:
    with ServeProcess("--model", str(slow_model), "--queue", "1") as process:
        yield process.wait_ready()


def client(server: ServeProcess, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def prompt_mode(model: Path, text: str, max_tokens: int, raw: bool = False) -> str:
    """What ``opt-tpu-tui -p`` prints for ``text``, greedy, without its final newline: the model's text with its
    control characters made visible (safe_text.py), where the API gives the text itself."""
    command = [
        sys.executable, "-m", "opt_tpu_tui", "--model", str(model), "-p", text, "-q", "--temperature", "0",
        "--repetition-penalty", "1.1", "--max-new-tokens", str(max_tokens), "--preamble", PREAMBLE,
    ] + (["--raw"] if raw else [])  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")
    return result.stdout[:-1]


def chat_messages(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": PREAMBLE}, {"role": "user", "content": text}]


def test_openai_chat_and_completions_match_prompt_mode(server: ServeProcess, tiny_model: Path) -> None:
    """Greedy text equals -p's (chat and --raw), streaming or not; usage is the tokenizer's count; length at max."""
    tokenizer, api = Tokenizer.from_dir(tiny_model), client(server)
    text, max_tokens = PROMPTS[0], 12
    expected_chat, expected_raw = prompt_mode(tiny_model, text, max_tokens), prompt_mode(tiny_model, text, max_tokens, raw=True)

    reply = api.chat.completions.create(
        model="tiny-opt", messages=chat_messages(text), max_tokens=max_tokens, extra_body=GREEDY
    )
    assert terminal_safe(reply.choices[0].message.content) == expected_chat
    assert reply.usage.prompt_tokens == len(tokenizer.encode(transcript(PREAMBLE, [], text)))
    chunks = list(api.chat.completions.create(
        model="tiny-opt", messages=chat_messages(text), max_tokens=max_tokens, extra_body=GREEDY, stream=True,
        stream_options={"include_usage": True},
    ))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert terminal_safe("".join(c.choices[0].delta.content or "" for c in chunks if c.choices)) == expected_chat
    assert chunks[-1].usage.prompt_tokens == reply.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reply.choices[0].finish_reason

    completion = api.completions.create(model="tiny-opt", prompt=text, max_tokens=max_tokens, extra_body=GREEDY)
    assert terminal_safe(completion.choices[0].text) == expected_raw
    assert completion.usage.prompt_tokens == len(tokenizer.encode(text))
    assert completion.usage.completion_tokens == max_tokens
    assert completion.choices[0].finish_reason == "length"
    streamed = list(api.completions.create(
        model="tiny-opt", prompt=text, max_tokens=max_tokens, extra_body=GREEDY, stream=True
    ))  # fmt: skip
    assert terminal_safe("".join(c.choices[0].text for c in streamed)) == expected_raw
    assert streamed[-1].choices[0].finish_reason == "length"


def curl_stream(url: str, body: dict, *headers: str) -> list[str]:
    """The ``data:`` payloads of a streamed reply, as curl -N receives them."""
    args = ["curl", "-sS", "-N", "--max-time", "120", url, "-H", "Content-Type: application/json", "-d", json.dumps(body)]
    for header in headers:
        args += ["-H", header]
    result = subprocess.run(args, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stderr
    events = [line for line in result.stdout.split("\n\n") if line.strip()]
    assert all(event.startswith("data: ") for event in events), result.stdout
    return [event[len("data: ") :] for event in events]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_streams_end_with_done(server: ServeProcess, tiny_model: Path) -> None:
    text, max_tokens = PROMPTS[1], 10
    expected = prompt_mode(tiny_model, text, max_tokens, raw=True)
    body = {"prompt": text, "max_tokens": max_tokens, "stream": True, **GREEDY}
    events = curl_stream(server.url + "/v1/completions", body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert terminal_safe("".join(c["choices"][0]["text"] for c in chunks)) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"][0]["stop_reason"] == "max_new_tokens"  # the project's own, which "length" blurs
    counts = [c["choices"][0]["tokens"] for c in chunks if c["choices"][0]["text"]]  # the project's: tokens so far
    assert counts == sorted(set(counts)) and counts[-1] == max_tokens, counts

    body = {"messages": chat_messages(text), "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    events = curl_stream(server.url + "/v1/chat/completions", {**body, **GREEDY})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] <= 3


def test_eight_concurrent_streams_each_match_their_run_alone(server: ServeProcess) -> None:
    api = client(server)

    def alone(text: str) -> str:
        reply = api.chat.completions.create(model="tiny-opt", messages=chat_messages(text), max_tokens=16, extra_body=GREEDY)
        return reply.choices[0].message.content or ""

    expected = [alone(text) for text in PROMPTS]
    got: dict[int, str] = {}

    def stream(index: int) -> None:
        chunks = api.chat.completions.create(
            model="tiny-opt", messages=chat_messages(PROMPTS[index]), max_tokens=16, extra_body=GREEDY, stream=True
        )
        got[index] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(PROMPTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert [got.get(i) for i in range(len(PROMPTS))] == expected


def open_stream(url: str, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    connection.request("POST", "/v1/completions", json.dumps({**body, "stream": True}), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    return connection, response


def read_event(response: http.client.HTTPResponse) -> str:
    """The next ``data:`` payload of an SSE response."""
    while True:
        line = response.readline().decode()
        assert line, "the stream ended"
        if line.startswith("data: "):
            return line[len("data: ") :].strip()


def test_a_dropped_stream_frees_the_device_within_a_token(slow_server: ServeProcess) -> None:
    url, long_reply = slow_server.url, {"prompt": "Hello world", "max_tokens": 900, **GREEDY}
    started = time.monotonic()
    check = request(url + "/v1/completions", {**long_reply, "max_tokens": 200}, timeout=300)[1]
    two_hundred = time.monotonic() - started  # the time 200 of the dropped reply's 900 tokens take
    assert check["choices"][0]["finish_reason"] == "length"  # this prompt runs to max_tokens: dropping it matters
    before = metric(url, "opt_tpu_tui_completion_tokens_total")
    connection, response = open_stream(url, long_reply)
    received = sum(1 for _ in range(3) if read_event(response))
    connection.sock.shutdown(socket.SHUT_RDWR)  # the client goes away mid-stream
    connection.close()
    started = time.monotonic()
    status, reply, _ = request(url + "/v1/completions", {"prompt": "The quick", "max_tokens": 2, **GREEDY})
    waited = time.monotonic() - started
    assert status == 200
    dropped = metric(url, "opt_tpu_tui_completion_tokens_total") - before - reply["usage"]["completion_tokens"]
    # Tokens made after the drop are those until the server sees the socket close, then at most one.
    assert received <= dropped < received + 40, (received, dropped)
    assert waited < 2 * two_hundred, (waited, two_hundred)  # the other 897 tokens would take 4.5 times that


def test_a_full_queue_is_429_with_retry_after(slow_server: ServeProcess) -> None:
    url, long_reply = slow_server.url, {"prompt": "Hello world", "max_tokens": 900, **GREEDY}
    running = open_stream(url, long_reply)
    read_event(running[1])  # it has the device
    waiting = open_stream(url, long_reply)  # --queue 1: it fills the queue
    try:
        status, body, headers = request(url + "/v1/completions", long_reply)
        assert status == 429
        assert body["error"]["code"] == "queue_full" and body["error"]["type"] == "rate_limit_error"
        assert int(headers["Retry-After"]) >= 1
    finally:
        for connection, _ in (running, waiting):
            connection.close()
    deadline = time.monotonic() + 60
    while metric(url, "opt_tpu_tui_queue_depth") or metric(url, "opt_tpu_tui_generating"):
        assert time.monotonic() < deadline, "the dropped requests still hold the device"
        time.sleep(0.1)
    assert request(url + "/v1/completions", {**long_reply, "max_tokens": 1})[0] == 200


def second_turns(target: ServeProcess) -> tuple[list[int], list[int]]:
    """Two conversations, alternating, two turns each: the first turns' prompt tokens, the second turns' cached ones."""
    api, model = client(target), target_model(target)
    histories: list[list[dict[str, str]]] = [[{"role": "system", "content": PREAMBLE}] for _ in range(2)]
    first, cached = [], []
    for turn in range(2):
        for number, messages in enumerate(histories):
            messages.append({"role": "user", "content": f"conversation {number}, turn {turn}"})
            reply = api.chat.completions.create(model=model, messages=messages, max_tokens=8, extra_body=GREEDY)
            messages.append({"role": "assistant", "content": reply.choices[0].message.content or ""})
            if turn == 0:
                first.append(reply.usage.prompt_tokens)
            else:
                cached.append(reply.usage.prompt_tokens_details.cached_tokens)
    return first, cached


def test_two_alternating_conversations_keep_their_prefixes_with_two_slots(
    server: ServeProcess, slow_server: ServeProcess
) -> None:
    """With --slots 2 each conversation's second turn reuses all of its first prompt; with one slot it cannot."""
    before = metric(server.url, "opt_tpu_tui_kv_reused_tokens_total")
    first, cached = second_turns(server)
    assert cached[0] >= first[0] and cached[1] >= first[1], (first, cached)
    assert metric(server.url, "opt_tpu_tui_kv_reused_tokens_total") - before >= sum(cached)
    first, cached = second_turns(slow_server)  # --slots 1
    assert cached[0] < first[0] and cached[1] < first[1], (first, cached)


def target_model(process: ServeProcess) -> str:
    return get(process.url + "/v1/models")[1]["data"][0]["id"]


def huge_request(server: ServeProcess) -> tuple[int, dict]:
    """A request announcing a body over the limit: refused before the body is read (so none is sent)."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
    connection.putrequest("POST", "/v1/chat/completions")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(MAX_BODY + 1))
    connection.endheaders()
    response = connection.getresponse()
    try:
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize(
    "body, status, param, code",
    [
        (b"{not json", 400, None, "invalid_json"),
        ({"messages": "hi"}, 400, "messages", None),
        ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", None),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature", None),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens", None),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n", None),
        ({"messages": [{"role": "user", "content": "hi"}], "logprobs": True}, 400, "logprobs", None),
        ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, 400, "tools", None),
        ({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4"}, 404, "model", "model_not_found"),
        ({"messages": [{"role": "tool", "content": "hi"}]}, 400, "messages[0].role", None),
        ({"messages": [{"role": "user", "content": "hi " * 400}]}, 400, "messages", "context_length_exceeded"),
        ("huge", 413, None, "body_too_large"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)  # fmt: skip
def test_bad_requests_get_one_json_error_and_the_server_keeps_serving(
    server: ServeProcess, body: object, status: int, param: str | None, code: str | None
) -> None:
    if body == "huge":
        got, error = huge_request(server)
    else:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        got, error, _ = request(server.url + "/v1/chat/completions", data=data)
    assert (got, error["error"]["param"], error["error"]["code"]) == (status, param, code), error
    assert set(error) == {"error"} and error["error"]["message"]
    if code == "context_length_exceeded":
        counts = re.search(r"context length is (\d+) tokens, but the prompt is (\d+) tokens", error["error"]["message"])
        assert counts is not None and int(counts[1]) == 128 and int(counts[2]) > 400, error
    ok, reply, _ = request(server.url + "/v1/completions", {"prompt": "hi", "max_tokens": 1})
    assert ok == 200 and reply["usage"]["completion_tokens"] <= 1


def test_a_host_other_than_loopback_needs_a_key_and_sigterm_exits_0(tiny_model: Path, tmp_path: Path) -> None:
    """--host 0.0.0.0 (every interface) is refused without a key, before it listens; with a key (here on
    127.0.0.2, loopback: tests listen on nothing else), 401 unless it is sent, "bearer" in any case."""
    refused = subprocess.run(
        [sys.executable, "-m", "opt_tpu_tui", "serve", "--model", str(tiny_model), "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.startswith("opt-tpu-tui: error: --host 0.0.0.0") and "--api-key-file" in refused.stderr
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\n")
    args = ["--model", str(tiny_model), "--api-key-file", str(key_file), "--log-requests"]
    with ServeProcess(*args, host="127.0.0.2") as process:
        process.wait_ready()
        body = {"prompt": "hi", "max_tokens": 1}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
            status, error, got = request(process.url + "/v1/completions", body, headers)
            assert status == 401 and error["error"]["code"] == "invalid_api_key" and got["WWW-Authenticate"] == "Bearer"
        assert get(process.url + "/metrics")[0] == 401
        assert get(process.url + "/metrics", {"Authorization": "bearer  s3cret-key"})[0] == 200  # RFC 7235: any case
        assert get(process.url + "/health") == (200, {"status": "ok"})
        with pytest.raises(openai.AuthenticationError):
            client(process, "wrong").completions.create(model="tiny-opt", prompt="hi", max_tokens=1)
        reply = client(process, "s3cret-key").completions.create(model="tiny-opt", prompt="a logged prompt", max_tokens=2)
        assert reply.usage.completion_tokens <= 2
        process.wait_for_line("prompt: 'a logged prompt'", 30)  # --log-requests
        assert process.stop(signal.SIGTERM) == 0
        assert "stopped" in process.stderr and "Traceback" not in process.stderr


def test_sigterm_mid_stream_ends_the_stream_and_exits_0(slow_model: Path) -> None:
    with ServeProcess("--model", str(slow_model)) as process:
        process.wait_ready()
        connection, response = open_stream(process.url, {"prompt": "Hello world", "max_tokens": 900, **GREEDY})
        read_event(response)
        started = time.monotonic()
        process.child.send_signal(signal.SIGTERM)
        events = []
        while True:
            events.append(read_event(response))
            if events[-1] == "[DONE]":
                break
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "stop"
        assert process.stop() == 0
        assert time.monotonic() - started < 30
        assert "Traceback" not in process.stderr
        connection.close()


@pytest.mark.slow
def test_headers_that_do_not_arrive_in_time_close_the_connection(server: ServeProcess) -> None:
    from opt_tpu_tui.serve.command import HEADER_SECONDS

    with socket.create_connection((server.host, server.port), timeout=HEADER_SECONDS + 20) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server
        assert HEADER_SECONDS - 1 < time.monotonic() - started < HEADER_SECONDS + 15
    assert get(server.url + "/health")[0] == 200


def asgi_get(app: object, path: str) -> tuple[int, object]:
    """Call the ASGI ``app`` in this process: (status, JSON body) of GET ``path``."""
    import asyncio

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "query_string": b"", "headers": [],
        "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
        "root_path": "",
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))  # type: ignore[operator]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


def test_health_and_the_api_are_503_while_loading() -> None:
    from opt_tpu_tui.serve.app import State, build_app
    from opt_tpu_tui.serve.command import build_serve_parser

    app = build_app(State(build_serve_parser().parse_args([]), None))  # its model never loads
    assert asgi_get(app, "/health") == (503, {"status": "loading"})
    status, body = asgi_get(app, "/v1/models")
    assert status == 503 and body["error"]["code"] == "model_loading"


def test_default_preamble_without_a_system_message_and_no_prompt_in_the_log(server: ServeProcess, tiny_model: Path) -> None:
    reply = client(server).chat.completions.create(
        model="tiny-opt", messages=[{"role": "user", "content": "an unlogged message"}], max_tokens=1, extra_body=GREEDY
    )
    tokenizer = Tokenizer.from_dir(tiny_model)
    assert reply.usage.prompt_tokens == len(tokenizer.encode(transcript(DEFAULT_PREAMBLE, [], "an unlogged message")))
    assert "unlogged" not in server.stderr and reply.choices[0].message.content not in server.stderr.split("ready:")[1]


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "opt_tpu_tui", *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, env=child_env(), timeout=180)


def test_prompt_and_chat_modes_through_the_server_print_what_they_print_in_process(
    server: ServeProcess, tiny_model: Path
) -> None:
    flags = ["--temperature", "0", "--max-new-tokens", "12", "--preamble", PREAMBLE]
    for extra in ([], ["--raw"]):
        here = cli("--model", str(tiny_model), "-p", PROMPTS[2], "-q", *flags, *extra)
        there = cli("--server", server.url, "-p", PROMPTS[2], "-q", *flags, *extra)
        assert (there.returncode, there.stdout) == (0, here.stdout), there.stderr
        assert there.stderr == ""
    stats = cli("--server", server.url + "/v1", "-p", PROMPTS[2], *flags)
    assert re.fullmatch(r"\[\d+ prompt tokens \(\d+ cached\) in [\d.]+ s, \d+ new at [\d.]+ tok/s, stop: [\w ]+\]\n", stats.stderr)
    messages = "hello there\nand a second message\n/regen\n"
    here = cli("--model", str(tiny_model), "-c", "-q", *flags, stdin=messages)
    there = cli("--server", server.url, "-c", "-q", *flags, stdin=messages)
    assert there.returncode == 0, there.stderr
    assert there.stdout.split("\n", 1)[1] == here.stdout.split("\n", 1)[1]  # all but the banner, which names where
    assert there.stdout.startswith(f"Chatting with tiny-opt on cpu @ {server.host}:{server.port} (128-token context).")


def test_the_clients_say_what_is_wrong_with_the_server(server: ServeProcess, tiny_model: Path) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    gone = cli("--server", f"http://127.0.0.1:{port}", "-p", "hi")
    assert gone.returncode == 2 and gone.stderr.startswith(f"opt-tpu-tui: error: cannot reach the server at http://127.0.0.1:{port}")
    model = cli("--server", server.url, "--model", str(tiny_model), "-p", "hi")
    assert model.returncode == 2 and "with --server the server's model answers" in model.stderr
    long = "hi " * 200  # counted with the server's tokenizer, as in-process
    here, there = cli("--model", str(tiny_model), "-p", long), cli("--server", server.url, "-p", long)
    assert there.returncode == here.returncode == 2
    assert there.stderr == here.stderr and "but the context holds 128: shorten it" in there.stderr
    here, there = cli("--model", str(tiny_model), "-p", long, "--raw"), cli("--server", server.url, "-p", long, "--raw")
    assert there.returncode == here.returncode == 2  # counted here too, so said in the same words
    assert there.stderr == here.stderr and there.stderr.endswith("but the context holds 128: shorten it\n")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["bmrt", "sail"])
def test_the_server_on_the_tpu_backends_in_the_simulator_gives_the_cpu_greedy_text(
    simulator: None, tiny_model: Path, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """bmrt, and the real sophon-sail built here (skipped, saying why, where it cannot be)."""
    from opt_tpu_tui.convert.build import convert

    env = None
    if backend == "sail":  # the child imports the same sophon.sail the sail tests use
        folder = request.getfixturevalue("real_sail_folder")
        env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(folder)])}

    out = convert(tiny_model, tmp_path / "tiny-f16", "f16", 32, 64, "f16", log=lambda _: None, chunk=8, windows=(32, 64))
    greedy = {"temperature": 0, "repetition_penalty": 1.0}
    expected = []
    with ServeProcess("--model", str(tiny_model), "--context", "64") as cpu:
        cpu.wait_ready()
        for path, body in (("/v1/completions", {"prompt": PROMPTS[0]}), ("/v1/chat/completions", {"messages": chat_messages("hi")})):
            expected.append(serve_support.request(cpu.url + path, {**body, **greedy, "max_tokens": 8})[1])
    with ServeProcess("--model", str(out), "--backend", backend, env=env) as tpu:
        tpu.wait_ready(timeout=600)
        api = client(tpu)
        completion = api.completions.create(model=target_model(tpu), prompt=PROMPTS[0], max_tokens=8, extra_body=greedy)
        assert completion.choices[0].text == expected[0]["choices"][0]["text"]
        chunks = api.chat.completions.create(
            model=target_model(tpu), messages=chat_messages("hi"), max_tokens=8, extra_body=greedy, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected[1]["choices"][0]["message"]["content"]
        assert tpu.stop() == 0


def test_serve_takes_demo_as_the_built_in_model_as_the_other_modes_do() -> None:
    """``--model demo`` names the built-in model everywhere (cli.resolve_model); serve read it as a folder."""
    with ServeProcess("--model", "demo") as process:
        process.wait_ready()
        assert get(process.url + "/v1/models")[1]["data"][0]["id"] == "demo_model"
        assert process.stop() == 0


def test_a_dropped_request_that_is_not_streamed_frees_the_device_too(slow_server: ServeProcess) -> None:
    """Nobody reads a whole reply being collected, so only the disconnect says the client left: it must stop it."""
    url, long_reply = slow_server.url, {"prompt": "Hello world", "max_tokens": 900, **GREEDY}
    started = time.monotonic()
    request(url + "/v1/completions", {**long_reply, "max_tokens": 200}, timeout=300)
    two_hundred = time.monotonic() - started
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    connection.request("POST", "/v1/completions", json.dumps(long_reply), {"Content-Type": "application/json"})
    deadline = time.monotonic() + 60
    while not metric(url, "opt_tpu_tui_generating"):
        assert time.monotonic() < deadline, "the reply never started"
        time.sleep(0.05)
    connection.sock.shutdown(socket.SHUT_RDWR)  # the client goes away while its reply is collected
    connection.close()
    started = time.monotonic()
    assert request(url + "/v1/completions", {"prompt": "The quick", "max_tokens": 2, **GREEDY})[0] == 200
    waited = time.monotonic() - started
    assert waited < 2 * two_hundred, (waited, two_hundred)  # the dropped reply's 900 tokens would take 4.5 times that


def test_a_request_dropped_while_it_waits_gives_its_place_in_the_queue_up(slow_server: ServeProcess) -> None:
    url, long_reply = slow_server.url, {"prompt": "Hello world", "max_tokens": 900, **GREEDY}
    started = time.monotonic()
    request(url + "/v1/completions", {**long_reply, "max_tokens": 200}, timeout=300)
    two_hundred = time.monotonic() - started
    running = open_stream(url, long_reply)
    read_event(running[1])  # it has the device
    waiting = open_stream(url, long_reply)  # --queue 1: the queue is full
    waiting[0].sock.shutdown(socket.SHUT_RDWR)  # and its client leaves
    waiting[0].close()
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    started, status = time.monotonic(), 429
    try:
        while status == 429 and time.monotonic() - started < two_hundred:  # well before the running reply ends
            connection = http.client.HTTPConnection(host, int(port), timeout=60)
            body = json.dumps({**long_reply, "max_tokens": 1, "stream": True})
            connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            status = connection.getresponse().status  # a stream answers at once when queued: 200, or 429
            connection.close()
            time.sleep(0.05)
        assert status == 200, "the place of a client that left is still taken"
    finally:
        running[0].close()


@pytest.mark.parametrize(
    "headers, status",
    [
        ({}, 200),
        ({"Origin": "http://localhost:3000"}, 200),  # a page served from this machine
        ({"Origin": "https://evil.example"}, 403),  # a page on the web, which needs no preflight for text/plain
        ({"Origin": "null"}, 403),  # a file opened in the browser
        ({"Host": "rebound.example:8000"}, 403),  # DNS rebinding: a web name made to resolve to 127.0.0.1
        ({"Host": "localhost:8000"}, 200),  # an ssh -L tunnel's local end, by name
        ({"Origin": "http://[::1"}, 403),  # one that does not parse
    ],
)
def test_without_a_key_what_a_web_page_could_send_is_refused(server: ServeProcess, headers: dict, status: int) -> None:
    body = json.dumps({"prompt": "hi", "max_tokens": 1, **GREEDY}).encode()
    got, answer, _ = request(server.url + "/v1/completions", data=body, headers={"Content-Type": "text/plain", **headers})
    assert got == status, answer
    if status == 403:
        assert answer["error"]["code"] == "forbidden"
