"""Which servers run here: one small file per ``opt-tpu-tui serve``, so a load that fails can name ``--server``.

On a BM1684X box the model lives in the device's memory, so a second copy loaded
in-process fails (out of device memory, or the device refuses another runtime) while
a server holds it. The runtime's error cannot tell why; this registry can: each
server writes ``<data dir>/servers/<pid>.json`` (its address, backend and model) once
its model is loaded and removes it when it stops, and ``held_by_server`` adds the
server's address to a TPU load's error. A file whose process is gone is ignored. On
the CPU a second copy just loads, so its errors are left as they are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from opt_tpu_tui import paths
from opt_tpu_tui.atomic import atomic_write
from opt_tpu_tui.errors import UserError

DEVICE_BACKENDS = ("bmrt", "sail")


def folder() -> Path:
    return paths.data_dir() / "servers"


def register(url: str, backend: str, model: str) -> Path:
    """Say that this process serves ``model`` on ``backend`` at ``url``; returns the file to remove at exit."""
    path = paths.private_dir(folder()) / f"{os.getpid()}.json"
    atomic_write(path, json.dumps({"pid": os.getpid(), "url": url, "backend": backend, "model": model}))
    return path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def running() -> list[dict[str, object]]:
    """The servers registered here whose process still runs."""
    found = []
    for path in sorted(folder().glob("*.json")) if folder().is_dir() else []:
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(entry, dict) and isinstance(entry.get("pid"), int) and alive(entry["pid"]):
                found.append(entry)
        except (OSError, ValueError):
            continue
    return found


def held_by_server(error: UserError, kind: str) -> UserError:
    """``error`` of a failed model load, naming the server that holds the TPU when one runs here."""
    if kind == "cpu":
        return error
    servers = [entry for entry in running() if entry.get("backend") in DEVICE_BACKENDS and entry.get("pid") != os.getpid()]
    if not servers:
        return error
    server = servers[0]
    return UserError(
        f"{error} -- `opt-tpu-tui serve` (pid {server['pid']}) holds {server['model']} on the TPU: use it with "
        f"--server {server['url']}, or stop it first"
    )
