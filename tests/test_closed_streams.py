"""The app started as shells start it at the edges: stdout full or closed, stdin closed, memory capped.

Each case runs the installed console script as a real process (a closed descriptor or an
address-space limit cannot be faked in-process) and must end in one line on stderr,
``opt-tpu-tui: error: ...``, with exit code 2: never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import resource
import struct
import subprocess
from pathlib import Path

import pytest
import tmux
from tiny import opt_parameters, train_tokenizer

from opt_tpu_tui.history import HistoryStore

pytestmark = pytest.mark.skipif(not tmux.available(), reason="needs the installed opt-tpu-tui script")


def run(argv: list[str], shell_redirect: str = "", **options: object) -> subprocess.CompletedProcess:
    """The app with ``argv``; ``shell_redirect`` (``>&-``, ``<&-``) applied by sh, as a user's shell would."""
    command = ["sh", "-c", f'exec "$0" "$@" {shell_redirect}', tmux.SCRIPT, *argv]
    options.setdefault("stdout", subprocess.DEVNULL)
    return subprocess.run(
        command, env={**os.environ, **tmux.app_env()}, stderr=subprocess.PIPE, timeout=120, **options
    )  # type: ignore[call-overload]


def assert_one_error_line(result: subprocess.CompletedProcess, *words: str) -> None:
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 2 and err.count("\n") == 1 and err.startswith("opt-tpu-tui: error: "), err
    assert all(word in err for word in words), err


@pytest.fixture
def conversation() -> int:
    store, _ = HistoryStore.open()
    try:
        cid = store.create_conversation("hello")
        store.save_reply(store.add_turn(cid, "hello"), "hi there " * 200, complete=True)
    finally:
        store.close()
    return cid


def test_export_to_a_full_disk(conversation: int) -> None:
    with open("/dev/full", "wb") as full:
        result = run(["export", str(conversation), "-o", "-"], stdout=full)
    assert_one_error_line(result, "stdout: cannot write the export (No space left on device)")


def test_export_to_a_closed_stdout(conversation: int) -> None:
    assert_one_error_line(run(["export", str(conversation), "-o", "-"], ">&-"), "stdout is closed")


def test_a_prompt_with_stdout_closed() -> None:
    assert_one_error_line(run(["-p", "Hi"], ">&-"), "stdout is closed")


@pytest.mark.parametrize("argv, mode", [(["-p", "-"], "-p -"), (["-c"], "-c")])
def test_reading_a_closed_stdin(argv: list[str], mode: str) -> None:
    assert_one_error_line(run(argv, "<&-"), f"stdin is closed, so {mode} has nothing to read")


def sparse_model(folder: Path) -> Path:
    """A model whose float16 token embedding is 200 MiB (400 MiB as float32), written as a sparse file:
    the disk holds almost nothing, reading it gives zeros."""
    config = dict(
        vocab_size=51200, hidden_size=2048, num_hidden_layers=1, num_attention_heads=32, ffn_dim=16,
        max_position_embeddings=128,
    )  # fmt: skip
    header, offset = {}, 0
    for name, shape in opt_parameters(config).items():
        size = 2 * math.prod(shape)
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    folder.mkdir()
    raw = json.dumps(header).encode()
    with open(folder / "model.safetensors", "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)
    (folder / "config.json").write_text(json.dumps({"model_type": "opt", **config}))
    return train_tokenizer(folder)


def test_a_prompt_that_runs_out_of_memory(tmp_path: Path) -> None:
    """`ulimit -v 600000`: enough to start (and, before, to fail in numpy with a traceback), not to hold the model."""
    model = sparse_model(tmp_path / "big")
    limit = 600_000 * 1024

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    result = run(["-p", "Hi", "-q", "--model", str(model), "--backend", "cpu"], preexec_fn=cap)
    assert_one_error_line(result, f"out of memory loading or running the model {model} (233 MiB of files")
