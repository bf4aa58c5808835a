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


def test_only_the_main_thread_takes_ctrl_c() -> None:
    """After the first step every thread numpy started blocks SIGINT, and the main thread takes it.

    Read from the kernel (/proc: each thread's blocked-signal mask), in a fresh process
    that then does a matrix product, so OpenBLAS's threads exist.
    """
    if not os.path.exists("/proc/self/task"):
        pytest.skip("needs Linux /proc")
    code = (
        "import os, opt_tpu_tui.launch as l; l.first_step(); import numpy as np; np.ones((256, 256)) @ np.ones((256, 256));"
        "me = os.getpid()\n"
        "for task in sorted(os.listdir('/proc/self/task')):\n"
        "    mask = [line for line in open(f'/proc/self/task/{task}/status') if line.startswith('SigBlk')][0]\n"
        "    print(int(task) == me, int(mask.split()[1], 16) >> 1 & 1)"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    threads = [line.split() for line in out.stdout.splitlines()]
    assert ["True", "0"] in threads  # the main thread: SIGINT not blocked
    others = [blocked for main, blocked in threads if main == "False"]
    assert others and all(blocked == "1" for blocked in others), out.stdout
