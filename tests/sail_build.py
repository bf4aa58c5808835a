"""The real ``sophon.sail`` for the tests: built from a sophon-sail source against the simulator, once.

sophon-sail is not on any package registry (on a box it comes with Sophgo's SDK), so
the tests build the binding themselves from the source named by ``OPT_TPU_TUI_SAIL_SRC``
(a release tarball or an unpacked tree), with sail's runtime-only recipe: a folder laid
out like libsophon (``include/`` with bmdef.h, bmruntime_interface.h and bmlib_runtime.h,
``lib/`` with links to the tpu-mlir wheel's cmodel libbmlib/libbmrt/libcmodel), then
``cmake -DONLY_RUNTIME=ON -DBUILD_TYPE=pcie`` and ``make pysail``. The built module's
RUNPATH names that folder, so it drives the BM1684X simulator with no LD_LIBRARY_PATH.

The wheel lacks two of the headers; they are taken from a ``libsophon-headers/`` folder
beside the source (as in ``../shared/vendor``) or from ``OPT_TPU_TUI_SAIL_HEADERS``.

The build takes about 5 minutes on 2 cores, so its result is cached in the user cache
under a key made of the source's and headers' SHA-256, the toolchain (version and folder,
since the RUNPATH points into it) and the Python ABI: a cached module is only reused
for the exact inputs it was built from. A failed build is not cached; its log is kept.

This lives with the tests, not in the app: on a box sail comes with the SDK built for
the box's libsophon, and a binding linked to the simulator is of use only for testing.
``python3 tests/sail_build.py`` builds it by hand and prints the folder to put on
PYTHONPATH.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

SOURCE_ENV = "OPT_TPU_TUI_SAIL_SRC"
HEADERS_ENV = "OPT_TPU_TUI_SAIL_HEADERS"
HEADERS = ("bmdef.h", "bmruntime_interface.h")
LIBRARIES = ("libbmlib.so", "libbmlib.so.0", "libbmrt.so", "libbmrt.so.1.0", "libcmodel.so")
BMLIB_HEADER = "cross_toolchains/ppl_compile/deps/runtime/bmlib/include/bmlib_runtime.h"
BUILD_STEPS = 2  # make -j: the machines this runs on are small and shared


class SailBuildError(Exception):
    """The binding cannot be built from what was given; the message says why (and where the log is)."""


def source() -> Path | None:
    """The sophon-sail source ``OPT_TPU_TUI_SAIL_SRC`` names (relative to the working folder), or None if unset."""
    value = os.environ.get(SOURCE_ENV)
    return Path(value).resolve() if value else None


def headers_dir(src: Path) -> Path:
    """Where bmdef.h and bmruntime_interface.h are: ``OPT_TPU_TUI_SAIL_HEADERS`` or ``libsophon-headers`` beside ``src``."""
    folder = Path(os.environ.get(HEADERS_ENV) or src.parent / "libsophon-headers")
    missing = [name for name in HEADERS if not (folder / name).is_file()]
    if missing:
        raise SailBuildError(f"{folder}: no {', '.join(missing)} (libsophon headers the tpu-mlir wheel lacks); set {HEADERS_ENV}")
    return folder


def _hash_tree(folder: Path, digest: hashlib._Hash) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not {".git", "build"} & set(p.relative_to(folder).parts)):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(path.read_bytes())


def cache_key(src: Path, headers: Path, tpu_mlir: Path) -> str:
    """A name for the build from exactly these inputs: source and headers by content, toolchain, Python ABI."""
    from opt_tpu_tui import toolchain

    digest = hashlib.sha256()
    if src.is_dir():
        _hash_tree(src, digest)
    else:
        digest.update(src.read_bytes())
    for name in HEADERS:
        digest.update((headers / name).read_bytes())
    digest.update(f"{toolchain.VERSION}\0{tpu_mlir.resolve()}".encode())
    python = f"{sys.implementation.cache_tag}-{sysconfig.get_platform()}"
    return f"{python}-tpu-mlir-{toolchain.VERSION}-{digest.hexdigest()[:16]}"


def _libsophon(folder: Path, headers: Path, tpu_mlir: Path) -> Path:
    """A folder laid out like libsophon: the three headers and links to the simulator's libraries."""
    (folder / "include").mkdir(parents=True, exist_ok=True)
    (folder / "lib").mkdir(exist_ok=True)
    for name in HEADERS:
        shutil.copyfile(headers / name, folder / "include" / name)
    shutil.copyfile(tpu_mlir / BMLIB_HEADER, folder / "include" / "bmlib_runtime.h")
    for name in LIBRARIES:
        link = folder / "lib" / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(tpu_mlir / "lib" / name)
    return folder


def _unpacked(src: Path, into: Path) -> Path:
    """The source tree: ``src`` itself, or the one top folder of the tarball unpacked into ``into``."""
    if src.is_dir():
        return src
    try:
        with tarfile.open(src) as archive:
            for member in archive.getmembers():
                if member.name.startswith("/") or ".." in Path(member.name).parts:
                    raise SailBuildError(f"{src}: member {member.name!r} would land outside the build folder")
            if hasattr(tarfile, "data_filter"):  # Python 3.12+ (and recent 3.8-3.11 updates)
                archive.extractall(into, filter="data")
            else:
                archive.extractall(into)
    except (tarfile.TarError, OSError) as error:
        raise SailBuildError(f"{src}: not a readable sophon-sail tarball ({error})") from None
    tops = [p for p in into.iterdir() if p.is_dir()]
    tree = tops[0] if len(tops) == 1 else into
    if not (tree / "CMakeLists.txt").is_file():
        raise SailBuildError(f"{src}: no CMakeLists.txt at the top of it (not a sophon-sail source?)")
    return tree


def _compile(tree: Path, libsophon: Path, build: Path, log: Path) -> Path:
    """Run sail's runtime-only cmake build; the path of the built ``sail.*.so``."""
    steps = {
        "cmake": ["cmake", "-S", str(tree), "-B", str(build), "-DONLY_RUNTIME=ON", "-DBUILD_TYPE=pcie",
                  f"-DLIBSOPHON_BASIC_PATH={libsophon}", f"-DPYTHON_EXECUTABLE={sys.executable}"],
        "make": ["nice", "-n", "10", "make", "-C", str(build), f"-j{BUILD_STEPS}", "pysail"],
    }  # fmt: skip
    for tool in ("cmake", "make", "g++"):
        if shutil.which(tool) is None:
            raise SailBuildError(f"building sophon-sail needs {tool}, which is not installed")
    with log.open("w") as out:
        for name, step in steps.items():
            out.write("$ " + " ".join(step) + "\n")
            out.flush()
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                raise SailBuildError(f"building sophon-sail failed at `{name}`; the log is {log}")
    built = sorted((build / "lib").glob("sail.*.so"))
    if not built:
        raise SailBuildError(f"the sophon-sail build made no sail.*.so in {build / 'lib'}; the log is {log}")
    return built[0]


def built(src: Path, tpu_mlir: Path, cache: Path) -> Path:
    """The folder holding the package ``sophon`` (with ``sail``) built from ``src``: cached, else built now.

    A lock file serialises two test runs building at once; the package folder is made
    under a scratch name and renamed into place, so a cached one is always complete.
    """
    if not src.exists():
        raise SailBuildError(f"{SOURCE_ENV}={src}: no such file or folder")
    headers = headers_dir(src)
    home = cache / cache_key(src, headers, tpu_mlir)
    package = home / "python"
    if (package / "sophon" / "__init__.py").is_file():
        return package
    home.mkdir(parents=True, exist_ok=True)
    with (home.parent / f"{home.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (package / "sophon" / "__init__.py").is_file():
            return package
        print(f"Building sophon-sail from {src} (about 5 minutes, once) into {home} ...", file=sys.stderr)
        libsophon = _libsophon(home / "libsophon", headers, tpu_mlir)  # stays: the module's RUNPATH names it
        with tempfile.TemporaryDirectory(dir=home, prefix="build-") as scratch:
            tree = _unpacked(src, Path(scratch) / "src")
            module = _compile(tree, libsophon, Path(scratch) / "build", home / "build.log")
            staging = Path(scratch) / "python"
            (staging / "sophon").mkdir(parents=True)
            shutil.copyfile(tree / "python" / "__init__.py", staging / "sophon" / "__init__.py")
            shutil.copy2(module, staging / "sophon" / module.name)
            os.replace(staging, package)
    return package


class RealSail:
    """The real ``sophon.sail`` for a test run, built (or taken from the cache) and imported once, or why not.

    It is imported from the build's folder and then taken out of ``sys.modules`` and
    ``sys.path``, so only the tests that install it (conftest's ``real_sail``) see it:
    elsewhere ``import sophon.sail`` fails as on a machine without sail. ``skip`` tells a
    reason to skip (no source given, no toolchain here) from a failure (a source that
    does not build or import).
    """

    def __init__(self) -> None:
        self.module: ModuleType | None = None
        self.package: ModuleType | None = None
        self.folder: Path | None = None
        self.problem: str | None = None
        self.skip = False

    def load(self) -> None:
        if self.module is not None or self.problem is not None:
            return
        from opt_tpu_tui import paths, toolchain
        from opt_tpu_tui.errors import UserError

        src = source()
        if src is None:
            self.skip = True
            self.problem = (
                f"the real sophon.sail is built from source for these tests: set {SOURCE_ENV} "
                "to a sophon-sail source tarball or tree (see docs/testing.md)"
            )
            return
        try:
            self.folder = built(src, toolchain.fetch(), paths.cache_dir() / "sophon-sail")
        except UserError as error:
            self.problem, self.skip = f"the tpu-mlir toolchain cannot be obtained here: {error}", True
            return
        except SailBuildError as error:
            self.problem = str(error)
            return
        sys.path.insert(0, str(self.folder))
        try:
            self.module = importlib.import_module("sophon.sail")
            self.package = sys.modules["sophon"]
        except ImportError as error:
            self.problem = f"the sophon.sail built in {self.folder} does not import: {error}"
        finally:
            sys.path.remove(str(self.folder))
            sys.modules.pop("sophon.sail", None)
            sys.modules.pop("sophon", None)


def main() -> int:
    from opt_tpu_tui import paths, toolchain

    src = source()
    if src is None:
        print(f"set {SOURCE_ENV} to a sophon-sail source (tarball or tree)", file=sys.stderr)
        return 2
    try:
        print(built(src, toolchain.fetch(), paths.cache_dir() / "sophon-sail"))
    except SailBuildError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
