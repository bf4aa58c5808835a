"""UI cost of streaming: 2,000 tokens at 200 tok/s from a scripted backend through the real app.

Runs the real Textual app headless (``App.run_test``), sends one message, and samples
the UI thread's CPU time (``time.thread_time`` read on the UI loop) against the number
of tokens the decode worker has produced. Prints a table: UI CPU per token over the
first and the last 200 tokens (the view must not get dearer as the reply grows; goal:
last/first at most 1.1) and the UI thread's share of one core over the whole stream
(goal: at most 20%).

A 200-token window is 20-40 ms of work, and on a shared or virtual machine the same work
can cost half as much again for a few seconds, so one run's ratio says as much about the
machine's moment as about the app. The stream is run several times (``--runs``) and the
median ratio is the figure; every run is printed.

    python bench/ui_stream.py [--tokens 2000] [--rate 200] [--size 120x40] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the scripted backend and tokenizer trainer are test helpers

from tiny import train_tokenizer  # noqa: E402
from tui_support import make_app, ready, script_ids  # noqa: E402

from opt_tpu_tui.config import Settings  # noqa: E402
from opt_tpu_tui.sampling import SamplingSettings  # noqa: E402
from opt_tpu_tui.tokenizer import Tokenizer  # noqa: E402

TEXT = (
    "The quick brown fox jumps over the lazy dog. Hello world, this is a small test of the tokenizer "
    "and the model.\n\n"
)


async def measure(tokens: int, rate: float, size: tuple[int, int]) -> dict[str, Any]:
    tokenizer = Tokenizer.from_dir(train_tokenizer(Path(tempfile.mkdtemp()) / "tok"))
    script: list[int] = []
    while len(script) < tokens + 10:
        script += script_ids(tokenizer, TEXT, eos=False)
    settings = Settings(sampling=SamplingSettings(max_new_tokens=tokens, temperature=0.0, repetition_penalty=1.0))
    app, backend = make_app(tokenizer, script=script, delay=1.0 / rate, settings=settings)
    samples: list[tuple[int, float, float]] = []  # (tokens so far, UI thread CPU seconds, wall seconds)

    def sample() -> None:
        job = app.screen.in_flight
        count = job.reply.stats.new_tokens if job is not None else (samples[-1][0] if samples else 0)
        samples.append((count, time.thread_time(), time.perf_counter()))

    async with app.run_test(size=size) as pilot:
        await ready(pilot)
        app.set_interval(0.05, sample)
        app.screen.query_one("#prompt").insert("Tell me a long story")
        await pilot.press("enter")
        sample()  # the message is sent: the reply's first tokens are yet to be shown
        # Plain sleeps, not pilot.pause(): a Pilot pause posts a callback to every widget, which
        # would bill the harness's polling to the app.
        deadline = time.monotonic() + tokens / rate * 4 + 30
        while app.screen.finished_replies == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        sample()
    produced = max(s[0] for s in samples)

    def window(first: int, last: int) -> tuple[float, float, float]:
        """UI CPU seconds per token, UI share of a core, and tokens/s for tokens first..last.

        From the last sample before token ``first`` (so the window holds the work of showing
        it: for the first window, the reply's first rows, whichever side of a sample the first
        flush fell) to the first sample at or past token ``last``.
        """
        before = [s for s in samples if s[0] < first]
        start = before[-1] if before else samples[0]
        end = next(s for s in samples if s[0] >= last)
        tokens, cpu, wall = max(1, end[0] - start[0]), end[1] - start[1], max(1e-9, end[2] - start[2])
        return cpu / tokens, cpu / wall, tokens / wall

    streaming = [s for s in samples if 0 < s[0]]
    wall = streaming[-1][2] - streaming[0][2]
    cpu = streaming[-1][1] - streaming[0][1]
    return {
        "tokens": produced,
        "rate": (streaming[-1][0] - streaming[0][0]) / wall,
        "first": window(1, 200),
        "last": window(produced - 200, produced),
        "share": cpu / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0, help="tokens per second from the scripted backend")
    parser.add_argument("--size", default="120x40", help="terminal size, COLSxROWS")
    parser.add_argument("--runs", type=int, default=5, help="streams to run; the median ratio is the figure")
    args = parser.parse_args()
    cols, rows = (int(v) for v in args.size.split("x"))
    results = [asyncio.run(measure(args.tokens, args.rate, (cols, rows))) for _ in range(args.runs)]
    print(f"UI streaming cost, {args.tokens} tokens asked at {args.rate:.0f} tok/s, {cols}x{rows}, headless, {args.runs} runs")
    print()
    print("| run | UI CPU per token, first / last 200 tokens | last/first | UI share, first / last 200 | whole stream | tok/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for run, r in enumerate(results, 1):
        (first, first_share, _), (last, last_share, _) = r["first"], r["last"]
        print(
            f"| {run} | {first * 1e6:.0f} / {last * 1e6:.0f} µs | {last / first:.2f} "
            f"| {first_share * 100:.1f} / {last_share * 100:.1f} % | {r['share'] * 100:.1f} % | {r['rate']:.0f} |"
        )
    ratio = statistics.median(r["last"][0] / r["first"][0] for r in results)
    share = statistics.median(r["share"] for r in results)
    print(f"| median | | {ratio:.2f} (goal ≤1.1) | | {share * 100:.1f} % (goal ≤20 %) | |")


if __name__ == "__main__":
    main()
