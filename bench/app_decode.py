"""Decode speed inside the app against ``-p``: the CPU backend, the same model and prompt, one run each.

The app decodes in a worker thread while the UI thread renders, and both want the GIL;
this compares the tokens/s the generation itself measures in the two front ends. Goal:
the app at least 80 % of ``-p``.

    python bench/app_decode.py [--tokens 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tiny import make_model  # noqa: E402
from tui_support import ready, wait_until  # noqa: E402

from opt_tpu_tui.backends import open_model  # noqa: E402
from opt_tpu_tui.chat import ChatSession  # noqa: E402
from opt_tpu_tui.config import Settings  # noqa: E402
from opt_tpu_tui.history import HistoryStore  # noqa: E402
from opt_tpu_tui.sampling import SamplingSettings  # noqa: E402
from opt_tpu_tui.tui.app import OptTuiApp  # noqa: E402

PROMPT = "Tell me about the quick brown fox"


def headless_speed(model: Path, sampling: SamplingSettings) -> float:
    """tokens/s of one reply as ``-p`` runs it (the same session and generation, no UI)."""
    backend, tokenizer = open_model(model, "cpu", None)
    try:
        reply = ChatSession(backend, tokenizer).send(PROMPT, sampling)
        for _ in reply:
            pass
        return reply.stats.tokens_per_second
    finally:
        backend.close()


async def app_speed(model: Path, sampling: SamplingSettings) -> float:
    """tokens/s of one reply streamed through the real app (headless, 100x30)."""
    store, _ = HistoryStore.open()
    app = OptTuiApp(settings=Settings(sampling=sampling), store=store, loader=lambda: open_model(model, "cpu", None))
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        app.screen.query_one("#prompt").insert(PROMPT)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen.streaming, timeout=60)
        reply = app.screen.in_flight.reply  # type: ignore[union-attr]
        await wait_until(pilot, lambda: app.screen.finished_replies >= 1, timeout=600)
    store.close()
    return reply.stats.tokens_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="app-decode-"))
    os.environ["XDG_CONFIG_HOME"], os.environ["XDG_DATA_HOME"] = str(home / "config"), str(home / "data")
    model = make_model(home / "model", max_position_embeddings=1024, hidden_size=512, num_hidden_layers=6,
                       ffn_dim=2048, num_attention_heads=8)  # fmt: skip
    sampling = SamplingSettings(max_new_tokens=args.tokens, temperature=0.0, repetition_penalty=1.0)
    headless = [headless_speed(model, sampling) for _ in range(args.runs)]
    in_app = [asyncio.run(app_speed(model, sampling)) for _ in range(args.runs)]
    h, a = statistics.median(headless), statistics.median(in_app)
    print(f"CPU backend decode, {args.tokens} greedy tokens, median of {args.runs} runs (6 layers x 512 wide)")
    print()
    print("| front end | decode tok/s | share of -p |")
    print("| --- | --- | --- |")
    print(f"| -p (no UI) | {h:.1f} | 100 % |")
    print(f"| the app, streaming | {a:.1f} | {a / h * 100:.0f} % (goal ≥80 %) |")


if __name__ == "__main__":
    main()
