"""The server's cost over in-process generation: decode speed, time to first token, four clients at once.

    python bench/serve.py [--model DIR | --wide] [--backend cpu] [--tokens 128] [--runs 3] [--clients 4]

In one run, on one model (the built-in demo model by default, which makes a token in
under a millisecond; ``--wide``: a random OPT-125m-wide checkpoint that never ends its
reply early, bench/app_decode.py's, whose tokens take milliseconds on the CPU):

- decode tok/s of ``opt-tpu-tui -p --raw`` (its stats line) against a streamed
  ``/v1/completions`` of the same prompt and settings, as the client sees it
  (tokens after the first over the time from the first to the last); goal >= 0.9;
- time to the first token on a warm server (the prompt's start already in the cache)
  as the client sees it, against the same generation in this process: the HTTP
  path's share; goal < 20 ms;
- ``--clients`` streams at once: their tokens over the wall time, against one
  stream's tok/s (the device stays busy); goal >= 0.9;
- two conversations alternating, two turns each, each under its own long system message: the
  server's prefill time (``/metrics``) of the second turns against the first, with
  ``--slots 2`` (each keeps its K/V: only the new tokens run) and ``--slots 1`` (the
  other conversation's turn evicted it: the whole prompt runs again).

Greedy, repetition penalty off, so every run makes the same tokens; medians of
``--runs``. The server is a real ``opt-tpu-tui serve`` on a free loopback port
(tests/serve_support.py). Needs the [serve] extra.
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from serve_support import ServeProcess, child_env, metric, request  # noqa: E402

from opt_tpu_tui.backends import open_model  # noqa: E402
from opt_tpu_tui.demo import DEMO_MODEL_DIR  # noqa: E402
from opt_tpu_tui.generation import Generation  # noqa: E402
from opt_tpu_tui.sampling import SamplingSettings  # noqa: E402

PROMPT = "The Python standard library"


def settings_body(tokens: int) -> dict:
    return {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "repetition_penalty": 1.0}


def stream_times(url: str, tokens: int) -> tuple[float, float, int]:
    """(seconds to the first text, seconds from it to the last, tokens) of one streamed completion."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=600)
    body = {**settings_body(tokens), "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    first = last = None
    count = 0
    while True:
        line = response.readline()
        if not line or line.strip() == b"data: [DONE]":
            break
        if not line.startswith(b"data: "):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            count = chunk["usage"]["completion_tokens"]
        if chunk["choices"] and chunk["choices"][0]["text"]:
            last = time.perf_counter()
            first = first or last
    connection.close()
    assert first is not None and last is not None
    return first - started, last - first, count


def prompt_mode_rate(model: Path, backend: str, tokens: int) -> float:
    """Decode tok/s from ``-p --raw``'s stats line."""
    command = [
        sys.executable, "-m", "opt_tpu_tui", "--model", str(model), "--backend", backend, "-p", PROMPT, "--raw",
        "--temperature", "0", "--repetition-penalty", "1", "--max-new-tokens", str(tokens),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=child_env(), check=True)
    return float(re.search(r"at ([\d.]+) tok/s", result.stderr).group(1))  # type: ignore[union-attr]


def in_process_first_token(model: Path, backend_kind: str, runs: int) -> float:
    """Seconds to the first piece of the same prompt in this process, its start already in the cache."""
    backend, tokenizer = open_model(model, backend_kind)
    ids = tokenizer.encode(PROMPT)
    settings = SamplingSettings(max_new_tokens=1, temperature=0, repetition_penalty=1.0)
    times = []
    for _ in range(runs + 1):
        started = time.perf_counter()
        next(iter(Generation(backend, tokenizer, ids, settings)))
        times.append(time.perf_counter() - started)
    backend.close()
    return statistics.median(times[1:])  # the first run fills the cache


def prefill_seconds(url: str) -> float:
    return metric(url, "opt_tpu_tui_prefill_seconds_sum")


def alternating_prefill(model: Path, backend: str, slots: int) -> tuple[float, float]:
    """(first turns', second turns') prefill seconds of two alternating conversations on a server with ``slots``."""
    rules = " ".join(["Answer briefly and stay on the topic of the Python standard library."] * 10)
    histories = [[{"role": "system", "content": f"You are assistant number {number}. {rules}"}] for number in range(2)]
    spent = []
    with ServeProcess("--model", str(model), "--backend", backend, "--slots", str(slots)) as server:
        server.wait_ready(timeout=600)
        request(server.url + "/v1/completions", settings_body(1), timeout=600)  # the first request's one-off costs
        for turn in range(2):
            before = prefill_seconds(server.url)
            for number, messages in enumerate(histories):
                messages.append({"role": "user", "content": f"conversation {number}, turn {turn}"})
                body = {"messages": messages, "max_tokens": 8, "temperature": 0, "repetition_penalty": 1.0}
                reply = request(server.url + "/v1/chat/completions", body, timeout=600)[1]
                messages.append(reply["choices"][0]["message"])
            spent.append(prefill_seconds(server.url) - before)
        server.stop()
    return spent[0], spent[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEMO_MODEL_DIR)
    parser.add_argument("--wide", action="store_true", help="a random OPT-125m-wide model instead of --model")
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-serve-home-"))  # the runs' settings and history, not the user's
    atexit.register(shutil.rmtree, home, True)
    os.environ["XDG_CONFIG_HOME"], os.environ["XDG_DATA_HOME"] = str(home / "config"), str(home / "data")
    if args.wide:
        sys.path.insert(0, str(ROOT / "bench"))
        from app_decode import make_checkpoint

        folder = Path(tempfile.mkdtemp(prefix="bench-serve-"))
        atexit.register(shutil.rmtree, folder, True)
        args.model = make_checkpoint(folder / "opt-125m-wide")

    direct = statistics.median(prompt_mode_rate(args.model, args.backend, args.tokens) for _ in range(args.runs))
    local_first = in_process_first_token(args.model, args.backend, args.runs)
    with ServeProcess("--model", str(args.model), "--backend", args.backend, "--queue", str(args.clients)) as server:
        server.wait_ready(timeout=600)
        url = server.url
        stream_times(url, 2)  # warm: the prompt's start is in the cache from here on
        streams = [stream_times(url, args.tokens) for _ in range(args.runs)]
        api_rate = statistics.median((n - 1) / decode for _, decode, n in streams)
        api_first = statistics.median(stream_times(url, 1)[0] for _ in range(args.runs))

        def aggregate() -> float:
            counts: list[int] = []
            threads = [
                threading.Thread(target=lambda: counts.append(stream_times(url, args.tokens)[2]))
                for _ in range(args.clients)
            ]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return sum(counts) / (time.perf_counter() - started)

        single = statistics.median(n / (first + decode) for first, decode, n in streams)
        together = statistics.median(aggregate() for _ in range(args.runs))
        server.stop()
    kept = alternating_prefill(args.model, args.backend, 2)
    evicted = alternating_prefill(args.model, args.backend, 1)

    rows = [
        ("decode tok/s: -p --raw", f"{direct:.1f}", ""),
        ("decode tok/s: streamed through the API", f"{api_rate:.1f}", f"{api_rate / direct:.2f} of -p (goal >= 0.9)"),
        ("first token, warm: in this process", f"{local_first * 1e3:.1f} ms", ""),
        ("first token, warm: through the API", f"{api_first * 1e3:.1f} ms",
         f"+{(api_first - local_first) * 1e3:.1f} ms by HTTP (goal < 20 ms)"),
        ("one stream, tok/s (first token included)", f"{single:.1f}", ""),
        (f"{args.clients} streams at once, tok/s in all", f"{together:.1f}",
         f"{together / single:.2f} of one stream (goal >= 0.9)"),
        ("alternating, --slots 2: prefill of turns 1 / 2", f"{kept[0] * 1e3:.1f} / {kept[1] * 1e3:.1f} ms",
         f"second turns {kept[1] / kept[0]:.2f} of first"),
        ("alternating, --slots 1: prefill of turns 1 / 2", f"{evicted[0] * 1e3:.1f} / {evicted[1] * 1e3:.1f} ms",
         f"second turns {evicted[1] / evicted[0]:.2f} of first"),
    ]  # fmt: skip
    print(f"model {args.model.name} on {args.backend}, {args.tokens} tokens a reply, medians of {args.runs}")
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>10}  {note}")


if __name__ == "__main__":
    main()
