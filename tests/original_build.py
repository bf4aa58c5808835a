"""An original-layout bmodel built the way OPT-TPU's ``compile.sh`` built it: TPU-MLIR's own Python tools.

The nets are exported to ONNX in this Python (torch, ``original_export``), then each one goes
through tpu-mlir's ``model_transform.py`` and ``model_deploy.py`` with compile.sh's flags
(embedding F16 at 1 and at SEQ tokens, lm_head F32, blocks F16 / W8F16 / W4F16, no
``--quant_input``/``--quant_output`` so all float I/O stays float32, chip bm1684x), and
``model_tool --combine`` merges them, the two embeddings into one net of two stages. So the
bmodel's layout is TPU-MLIR's reading of the original's graphs, not this project's.

Those tools need Python 3.10, so they run in a venv of their own made once under the user
cache from pyenv's 3.10 (``OPT_TPU_TUI_PYTHON310`` names another) with the same pinned wheel
``toolchain`` fetches. Two things about that venv:
- tpu-mlir's ONNX front end (``transform/OnnxOpt.py``) imports torch at the top, for one
  ``torch.tensor(a).numpy()``; the only torch PyPI has for cp310 on Linux is the CUDA build
  (gigabytes), so ``LAUNCHER`` gives that import a stand-in doing exactly that, and takes it
  away again before anything else can see it.
- ``import tpu_mlir`` puts the wheel's own libraries, with Ubuntu's libc, first on
  LD_LIBRARY_PATH, and its tpuc-opt then dies with "stack smashing" under this Debian loader;
  the launcher puts the system's first again (``../shared/notes/bm1684x.md``).

Built bmodels are cached under the user cache, keyed by the checkpoint's bytes, the mode,
the tpu-mlir wheel and the source of this file and ``original_export``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pythons import pyenv_python

from opt_tpu_tui import paths, toolchain

PYTHON310_ENV = "OPT_TPU_TUI_PYTHON310"
QUANTIZE = {"f16": "F16", "int8": "W8F16", "int4": "W4F16"}  # compile.sh's block modes
BMODEL_NAMES = {"f16": "opt-tiny.bmodel", "int8": "opt-tiny_int8.bmodel", "int4": "opt-tiny_int4.bmodel"}
NETS = "nets"  # beside the combined bmodel in the cache: one bmodel per compiled net
EXTRAS = "[onnx]"  # onnx, onnxruntime and onnxsim at the versions the wheel pins, for model_transform.py
VENV_PACKAGES = ["psutil"]  # imported by tpu-mlir's tools, not declared by the wheel

LAUNCHER = '''"""Run a tpu-mlir tool (argv[1]) with the system libraries first and torch stood in for one call."""
import os, runpy, sys, types
libs = os.environ["LD_LIBRARY_PATH"]
import tpu_mlir  # noqa: E402 - prepends the wheel's libraries (and its libc) to LD_LIBRARY_PATH
os.environ["LD_LIBRARY_PATH"] = libs
import numpy as np  # noqa: E402
import onnx, onnxruntime, onnxruntime_extensions  # noqa: E402,F401 - imported while torch is truly absent
stand_in = types.ModuleType("torch")
stand_in.tensor = lambda a: types.SimpleNamespace(numpy=lambda: np.asarray(a))
sys.modules["torch"] = stand_in
import transform.OnnxOpt  # noqa: E402,F401 - its `import torch` binds the stand-in
del sys.modules["torch"]
tool = sys.argv.pop(1)
sys.argv[0] = tool
runpy.run_path(tool, run_name="__main__")
'''


class BuildUnavailable(Exception):
    """No Python 3.10 here, so tpu-mlir's tools cannot run: the caller skips."""


def python310() -> str:
    found = pyenv_python("3.10", PYTHON310_ENV)
    if not found:
        raise BuildUnavailable(f"no Python 3.10 for tpu-mlir's tools (pyenv install 3.10, or set {PYTHON310_ENV})")
    return found


def venv() -> Path:
    """A Python 3.10 venv with the tpu_mlir wheel installed, made once (about 90 s) and locked while made."""
    home = paths.cache_dir() / f"tpu-mlir-venv-{toolchain.VERSION}-{toolchain.SHA256[:12]}"
    python = home / "bin" / "python3"
    home.parent.mkdir(parents=True, exist_ok=True)
    with (home.parent / f"{home.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (home / ".complete").is_file():
            return home
        wheel = toolchain.download(paths.cache_dir() / "downloads")
        staging = home.with_name(home.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        log = home.with_name(home.name + ".log")
        with log.open("w") as out:
            for command in (
                [python310(), "-m", "venv", str(staging)],
                [str(staging / "bin" / "python3"), "-m", "pip", "install", "-q", f"{wheel}{EXTRAS}", *VENV_PACKAGES],
                [str(staging / "bin" / "python3"), "-c", "import tpu_mlir, onnx, onnxruntime, onnxsim, psutil"],
            ):
                if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                    raise RuntimeError(f"making tpu-mlir's Python 3.10 venv failed; the log is {log}")
        shutil.rmtree(home, ignore_errors=True)
        os.replace(staging, home)  # a venv's python finds its site-packages from where it is: moving is safe
        (home / ".complete").write_text(toolchain.SHA256)
    assert python.exists()
    return home


def tool_environment(package: Path, scratch: Path) -> dict[str, str]:
    env = toolchain.environment(package, scratch)
    env["PATH"] = os.pathsep.join([str(package / "python" / "tools"), env["PATH"]])
    env["PYTHONPATH"] = os.pathsep.join(str(package / p) for p in ("", "python", "regression"))
    env["LD_LIBRARY_PATH"] += os.pathsep + str(package / "lib" / "capi")
    env["OMP_NUM_THREADS"] = "2"
    return env


def source_key(checkpoint: Path, mode: str, seq: int) -> str:
    digest = hashlib.sha256(f"{mode} {seq} {toolchain.SHA256}".encode())
    here = Path(__file__).parent
    for path in [here / "original_build.py", here / "original_export.py", *sorted(checkpoint.iterdir())]:
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def build(checkpoint: Path, mode: str, seq: int) -> Path:
    """The cached original-layout bmodel of ``checkpoint`` with blocks in ``mode`` (f16, int8, int4).

    Its folder also holds ``nets/``: the bmodel of each net as compiled, before combining.
    """
    import original_export

    cache = paths.cache_dir() / "original-bmodels" / source_key(checkpoint, mode, seq)
    out = cache / BMODEL_NAMES[mode]
    if out.is_file():
        return out
    home = venv()
    package = next((home / "lib").glob("python3.10/site-packages/tpu_mlir"))
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent) as scratch_dir:
        scratch = Path(scratch_dir)
        onnx = original_export.export(checkpoint, scratch / "onnx", seq)
        launcher = scratch / "launch.py"
        launcher.write_text(LAUNCHER)
        env = tool_environment(package, scratch)
        log = scratch / "build.log"
        work = scratch / "work"
        work.mkdir()
        bmodels = []

        def run(tool: str, *args: str) -> None:
            command = [str(home / "bin" / "python3"), str(launcher), str(package / "python" / "tools" / tool), *args]
            with log.open("a") as sink:
                sink.write("$ " + " ".join(command) + "\n")
                sink.flush()
                if subprocess.run(command, cwd=work, env=env, stdout=sink, stderr=subprocess.STDOUT).returncode != 0:
                    kept = cache.parent / f"{cache.name}.failed.log"
                    shutil.copy(log, kept)
                    raise RuntimeError(f"{tool} {' '.join(args[:2])} failed; the log is {kept}")

        def compile_net(name: str, stem: str, quantize: str, shapes: str | None = None) -> None:
            extra = ["--input_shapes", shapes] if shapes else []
            run("model_transform.py", "--model_name", name, "--model_def", str(onnx[name]), *extra, "--mlir", f"{stem}.mlir")
            run("model_deploy.py", "--mlir", f"{stem}.mlir", "--quantize", quantize, "--chip", "bm1684x",
                "--model", f"{stem}.bmodel")  # fmt: skip
            bmodels.append(work / f"{stem}.bmodel")

        compile_net("embedding", "embedding_1", "F16", "[[1],[1]]")
        compile_net("embedding", "embedding", "F16")
        for net in sorted(onnx):
            if net.startswith("block"):
                compile_net(net, net, QUANTIZE[mode])
        compile_net("splitkv", "splitkv", "F16")
        compile_net("lm_head", "lm_head", "F32")
        combined = toolchain.combine(bmodels, work / out.name, scratch)
        staging = cache.with_name(cache.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        os.replace(combined, staging / out.name)
        (staging / NETS).mkdir()
        for net in bmodels:  # each net alone, for tests that combine a bmodel lacking one
            os.replace(net, staging / NETS / net.name)
        shutil.rmtree(cache, ignore_errors=True)
        os.replace(staging, cache)
    return out


if __name__ == "__main__":  # python3 tests/original_build.py CHECKPOINT MODE: build (or find) and print the path
    sys.path.insert(0, str(Path(__file__).parent))
    print(build(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 512))
