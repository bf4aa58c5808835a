"""Decode speed in the app against ``-p``: does the UI slow the CPU backend down?

The same model, prompt and greedy settings, run (a) through ``opt-tpu-tui -p`` and (b)
through the real full-screen app in a pseudo-terminal (100x30, xterm-256color), where
the UI thread renders the stream while the decode worker runs. Both report the
generator's own figure: decode tokens per second, sampling and detokenizing included
(``GenerationStats.tokens_per_second``; ``-p`` prints it on stderr, the app's child
process hands it over on a pipe when the reply is saved).

The model is a random OPT with OPT-125m's widths (768 wide, 12 layers, a small trained
vocabulary) whose end-of-sequence row is zeroed, so the greedy reply always runs to
``--tokens``; a checkpoint of real text would stop early. Goal: the app at least 80 %
of ``-p``.

    python bench/app_decode.py [--tokens 300] [--runs 3]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Tell me a long story about the sea"
SIZE = (100, 30)
GOAL = 0.8


def make_checkpoint(out: Path) -> Path:
    """A random OPT-125m-wide checkpoint that never picks end-of-sequence."""
    sys.path.insert(0, str(ROOT / "tests"))
    from safetensors.numpy import load_file, save_file
    from tiny import make_model

    make_model(
        out, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072,
        max_position_embeddings=2048, init_std=0.02,
    )  # fmt: skip
    weights = out / "model.safetensors"
    tensors = load_file(weights)
    name = next(n for n in tensors if n.endswith("embed_tokens.weight"))  # tied: also the lm_head
    tensors[name][2] = 0.0  # </s>: its logit is 0, below the best of the others at every step
    save_file(tensors, weights, metadata={"format": "pt"})
    return out


def environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLORTERM", "TEXTUAL", "NO_COLOR")}
    env.update(TERM="xterm-256color", XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(ROOT)) if p)
    return env


def sampling_flags(tokens: int) -> list[str]:
    return ["--temperature", "0", "--repetition-penalty", "1", "--max-new-tokens", str(tokens)]


def prompt_mode(model: Path, tokens: int, home: Path) -> tuple[float, int]:
    """``-p``: tokens per second and new tokens, from its stats line."""
    command = [sys.executable, "-c", "from opt_tpu_tui.launch import run; run()"]  # as the console script
    command += ["--model", str(model), "--backend", "cpu", "-p", PROMPT]
    done = subprocess.run(command + sampling_flags(tokens), env=environment(home), capture_output=True, text=True)
    match = re.search(r"(\d+) new at ([\d.]+) tok/s", done.stderr)
    if done.returncode or not match:
        raise SystemExit(f"-p failed: {done.stderr.strip()[-400:]}")
    return float(match.group(2)), int(match.group(1))


def child(model: str, tokens: int, stats_fd: int) -> None:
    """The app as the console script starts it; each saved reply's stats go to ``stats_fd``."""
    from opt_tpu_tui.launch import quiet_blas_threads

    quiet_blas_threads()  # as the console script does, before numpy is imported
    from opt_tpu_tui import cli, config
    from opt_tpu_tui import chat_controller

    config.update_settings_file({"sampling": {"temperature": 0.0, "repetition_penalty": 1.0, "max_new_tokens": tokens}})
    out = os.fdopen(stats_fd, "w", buffering=1)
    run_and_save = chat_controller.run_and_save  # what the chat's reply worker saves each reply with

    def reporting(reply, *args, **kwargs):  # type: ignore[no-untyped-def]
        outcome = run_and_save(reply, *args, **kwargs)
        out.write(f"{reply.stats.tokens_per_second} {reply.stats.new_tokens}\n")
        return outcome

    chat_controller.run_and_save = reporting
    cli.main(["--model", model, "--backend", "cpu"])


def app_mode(model: Path, tokens: int, home: Path) -> tuple[float, int]:
    """The full-screen app on a pty: type the prompt, press Enter, wait for the reply's stats."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", SIZE[1], SIZE[0], 0, 0))
    stats_read, stats_write = os.pipe()
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", str(model), str(tokens), str(stats_write)],
        stdin=slave, stdout=slave, stderr=slave, env=environment(home), pass_fds=(stats_write,),
        start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )  # fmt: skip
    os.close(slave)
    os.close(stats_write)
    tail, stats = b"", b""

    def pump(seconds: float) -> None:
        nonlocal tail, stats
        ready, _, _ = select.select([master, stats_read], [], [], seconds)
        if master in ready:
            try:
                tail = (tail + os.read(master, 65536))[-8192:]
            except OSError:
                pass
        if stats_read in ready:
            stats += os.read(stats_read, 4096)

    def until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"the app: no {what}; its last bytes: {tail[-400:]!r}")
            pump(0.05)

    try:
        until(lambda: b"ready" in tail, 120, "model loaded")
        os.write(master, PROMPT.encode())
        until(lambda: b"sea" in tail, 10, "prompt shown")
        os.write(master, b"\r")
        until(lambda: b"\n" in stats, 600, "reply")
        os.write(master, b"\x11")  # ctrl+q
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            pump(0.1)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        os.close(master)
        os.close(stats_read)
    rate, new = stats.split(b"\n")[0].split()
    return float(rate), int(new)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3, help="runs of each, alternating; medians are compared")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="app-decode-"))
    model = make_checkpoint(work / "model")
    cli_rates, app_rates = [], []
    for run in range(args.runs):
        home = work / f"home{run}"
        rate, new = prompt_mode(model, args.tokens, home)
        cli_rates.append(rate)
        app_rate, app_new = app_mode(model, args.tokens, home)
        app_rates.append(app_rate)
        if (new, app_new) != (args.tokens, args.tokens):
            raise SystemExit(f"a reply stopped early ({new} and {app_new} of {args.tokens} tokens): not comparable")
    cli_median, app_median = statistics.median(cli_rates), statistics.median(app_rates)
    print(f"CPU decode, random OPT-125m-wide model, {args.tokens} greedy tokens, {args.runs} runs each, app at {SIZE[0]}x{SIZE[1]}")
    print(f"goal: the app at least {GOAL:.0%} of -p")
    print()
    print("| mode | tok/s (median) | runs | app / -p |")
    print("| --- | --- | --- | --- |")
    print(f"| opt-tpu-tui -p | {cli_median:.1f} | {', '.join(f'{r:.1f}' for r in cli_rates)} | (reference) |")
    print(
        f"| the app, streaming to the screen | {app_median:.1f} | {', '.join(f'{r:.1f}' for r in app_rates)} "
        f"| {app_median / cli_median:.2f} (goal ≥{GOAL}) |"
    )


if __name__ == "__main__":
    main()
