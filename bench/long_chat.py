"""A long chat through the real app: does each turn cost the UI the same at turn 300 as at turn 1?

Runs the real Textual app headless (``App.run_test``, 100x30) over a scripted backend
whose every reply is the same few tokens at a constant cost, sends TURNS messages one
after another, and times each turn from Enter to the reply's end: wall time and the UI
thread's CPU time (the app runs on this thread under run_test; the decode worker is
another thread, so the backend's cost is not in it). Then it quits, starts the app
again and times reopening the saved conversation from the conversation list.

Prints the first and last 20 turns' medians and their ratio (goal ≤1.2), RSS at the
start and the end, and the reopen time (goal ≤0.5 s).

    python bench/long_chat.py [--turns 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the scripted backend and the app helpers are test helpers

from tiny import train_tokenizer  # noqa: E402
from tui_support import REPLY, make_app, ready, send, wait_until  # noqa: E402

from opt_tpu_tui.config import Settings  # noqa: E402
from opt_tpu_tui.sampling import SamplingSettings  # noqa: E402
from opt_tpu_tui.tokenizer import Tokenizer  # noqa: E402

SIZE = (100, 30)
EDGE = 20  # turns in the first and last window
DELAY = 0.002  # backend seconds per token: constant, so what grows is the UI's


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def chat(tokenizer: Tokenizer, turns: int) -> tuple[list[float], list[float], float, float]:
    """Per-turn wall and UI CPU seconds, and RSS (MiB) before and after."""
    settings = Settings(sampling=SamplingSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=64))
    app, _ = make_app(tokenizer, settings=settings, delay=DELAY)
    walls: list[float] = []
    cpus: list[float] = []
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        start_rss = rss_mib()
        for turn in range(turns):
            wall, cpu = time.perf_counter(), time.thread_time()
            await send(pilot, f"Message number {turn}: tell me again")
            walls.append(time.perf_counter() - wall)
            cpus.append(time.thread_time() - cpu)
        end_rss = rss_mib()
    app.store.close()
    return walls, cpus, start_rss, end_rss


async def reopen(tokenizer: Tokenizer, turns: int) -> float:
    """Seconds from Enter on the newest conversation in the list until its last reply is on screen."""
    from opt_tpu_tui.tui.widgets.conversation import ReplyView

    app, _ = make_app(tokenizer)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+o")
        await pilot.pause()
        started = time.perf_counter()
        await pilot.press("enter")

        def shown() -> bool:
            replies = app.screen.query(ReplyView)  # the newest ones: older messages are counted, not mounted
            return len(app.screen.conversation.turns) == turns and bool(replies) and replies.last().region.height > 0

        await wait_until(pilot, shown, timeout=120)
        await pilot.pause()
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=300)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="long-chat-"))
    os.environ["XDG_CONFIG_HOME"], os.environ["XDG_DATA_HOME"] = str(home / "config"), str(home / "data")
    tokenizer = Tokenizer.from_dir(train_tokenizer(home / "tok"))
    reply_tokens = len(tokenizer.encode(" " + REPLY, add_bos=False))
    walls, cpus, start_rss, end_rss = asyncio.run(chat(tokenizer, args.turns))
    seconds = asyncio.run(reopen(tokenizer, args.turns))

    def ms(values: list[float]) -> float:
        return statistics.median(values) * 1000

    first_wall, last_wall = ms(walls[:EDGE]), ms(walls[-EDGE:])
    first_cpu, last_cpu = ms(cpus[:EDGE]), ms(cpus[-EDGE:])
    print(f"Long chat: {args.turns} turns of {reply_tokens} tokens at {DELAY * 1000:.0f} ms/token, {SIZE[0]}x{SIZE[1]}, headless")
    print("goals: last/first ≤1.2 · reopen ≤0.5 s")
    print()
    print(f"| per turn (median) | first {EDGE} | last {EDGE} | last/first |")
    print("| --- | --- | --- | --- |")
    print(f"| wall, Enter to reply end | {first_wall:.0f} ms | {last_wall:.0f} ms | {last_wall / first_wall:.2f} (goal ≤1.2) |")
    print(f"| UI thread CPU | {first_cpu:.0f} ms | {last_cpu:.0f} ms | {last_cpu / first_cpu:.2f} (goal ≤1.2) |")
    print()
    print(f"RSS: {start_rss:.0f} MiB after load, {end_rss:.0f} MiB after {args.turns} turns")
    print(f"reopen the {args.turns}-turn conversation: {seconds:.2f} s (goal ≤0.5 s)")


if __name__ == "__main__":
    main()
