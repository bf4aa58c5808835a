"""Other Python interpreters the tests run things under, found through pyenv (or PATH) or an environment variable."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess


def pyenv_python(version: str, env: str) -> str | None:
    """The newest Python ``version`` (e.g. "3.8"): the one ``env`` names, else pyenv's, else ``python<version>``."""
    named = os.environ.get(env)
    if named:
        return named
    try:
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        root = ""
    found = sorted(
        glob.glob(f"{root}/versions/{version}.*/bin/python3"), key=lambda p: [int(x) for x in p.split("/")[-3].split(".")]
    )
    return found[-1] if root and found else shutil.which(f"python{version}")
