"""The console script's first step: numpy's BLAS threads sleep when idle, set before numpy starts them.

numpy's OpenBLAS splits each matrix product over every core, and between products
its threads spin, by default for about 2^28 cycles (a tenth of a second), waiting for
the next one. A decode step is a hundred small products with Python in between, so
the threads never sleep, and as soon as anything else wants a core they take turns
with it at the scheduler's pace: with another process busy on a 2-core machine ``-p``
fell from 74 to 11 tok/s, and in the full-screen app the UI thread, descheduled while
holding the GIL, held the decode thread up the same way (5-14 tok/s against 74).
With ``OPENBLAS_THREAD_TIMEOUT=4`` (2^4 cycles, the least OpenBLAS takes) they sleep at
once: ``-p`` keeps its speed and the app decodes at 0.8-0.96 of it with both threads
(``bench/app_decode.py``). OpenBLAS reads the variable once, when numpy is first
imported, hence this module, which imports nothing of numpy's; a user's own value wins.
"""

from __future__ import annotations

import os

THREAD_TIMEOUT = "4"


def quiet_blas_threads() -> None:
    """Make OpenBLAS's idle threads sleep at once, unless the user chose otherwise."""
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", THREAD_TIMEOUT)


def run() -> None:
    quiet_blas_threads()
    from opt_tpu_tui.cli import run as run_cli

    run_cli()
