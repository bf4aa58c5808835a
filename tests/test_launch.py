"""The console script's thread policy: the UI leaves a core to itself, the headless modes use them all."""

from __future__ import annotations

import os

import pytest

from opt_tpu_tui.launch import starts_the_ui, ui_blas_threads


@pytest.mark.parametrize(
    "argv, ui",
    [
        ([], True),
        (["--model", "/models/opt-125m", "--backend", "cpu"], True),
        (["--preamble", "x", "--no-mouse"], True),
        (["-p", "Hello"], False),
        (["-pHello"], False),
        (["-qp", "Hello"], False),
        (["--prompt=Hello"], False),
        (["-c"], False),
        (["--chat"], False),
        (["-h"], False),
        (["convert", "--model", "m", "--out", "o"], False),
        (["export", "--last"], False),
    ],
)
def test_which_arguments_start_the_ui(argv: list[str], ui: bool) -> None:
    assert starts_the_ui(argv) is ui


def test_the_ui_caps_blas_threads_at_the_cores_less_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3, 4, 5, 6, 7}, raising=False)
    ui_blas_threads()
    assert os.environ["OPENBLAS_NUM_THREADS"] == "7"
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0}, raising=False)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    ui_blas_threads()
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"  # never none


def test_a_users_own_thread_count_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    ui_blas_threads()
    assert os.environ["OPENBLAS_NUM_THREADS"] == "3"
