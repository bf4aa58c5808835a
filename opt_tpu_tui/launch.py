"""The console script's first step: leave one core to the UI before numpy starts its BLAS threads.

numpy's OpenBLAS splits each matrix product over every core, and its threads spin
while they wait for work. In the full-screen app the UI thread needs a core as well:
on a 2-core machine the three contend, the UI thread is descheduled while it holds
the GIL, and the decode thread waits on it with the BLAS threads spinning. Measured
with the CPU backend there, the app decoded at 5-14 tok/s with two BLAS threads and
about 37 with one (``bench/app_decode.py``). So the UI gets its own core: BLAS
threads are capped at the cores less one, for the UI only (``-p``, ``-c`` and
``convert`` have nothing else to run and keep them all). The count is read by
OpenBLAS once, when numpy is first imported, hence this module, which imports
nothing of numpy's before it is set; a user's own ``OPENBLAS_NUM_THREADS`` wins.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

HEADLESS = ("-p", "--prompt", "-c", "--chat", "-h", "--help", "--version")
COMMANDS = ("convert", "fetch-simulator", "export")


def starts_the_ui(argv: Sequence[str]) -> bool:
    """Whether these arguments open the full-screen app (a wrong guess only changes a thread count)."""
    if argv[:1] and argv[0] in COMMANDS:
        return False
    for arg in argv:
        if arg in HEADLESS or arg.startswith(("--prompt=", "--chat=")):
            return False
        if arg.startswith("-") and not arg.startswith("--") and ("p" in arg[1:] or "c" in arg[1:]):
            return False  # -pTEXT, -qp: short flags run together
    return True


def ui_blas_threads() -> None:
    """Cap numpy's BLAS threads at the cores less one (at least one), unless the user set them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(max(1, cores - 1)))


def run() -> None:
    if starts_the_ui(sys.argv[1:]):
        ui_blas_threads()
    from opt_tpu_tui.cli import run as run_cli

    run_cli()
