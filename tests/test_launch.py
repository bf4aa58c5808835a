"""The console script's thread policy: OpenBLAS's idle threads sleep at once, in every mode."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from opt_tpu_tui.launch import THREAD_TIMEOUT, quiet_blas_threads


def test_blas_threads_sleep_when_idle_unless_the_user_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    quiet_blas_threads()
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == THREAD_TIMEOUT
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "20")
    quiet_blas_threads()
    assert os.environ["OPENBLAS_THREAD_TIMEOUT"] == "20"


def test_the_console_script_sets_it_before_numpy_is_imported() -> None:
    """OpenBLAS reads the variable once, at numpy's import: the launcher must not import numpy first."""
    code = "import sys, opt_tpu_tui.launch as l; l.quiet_blas_threads(); print('numpy' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
