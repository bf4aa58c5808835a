"""TPU-MLIR's compiler and runtime libraries: fetched once, on request, into the user cache.

TPU-MLIR ships on PyPI only as a Python 3.10 wheel, but what this project needs from
it is native: ``tpuc-opt`` and ``model_tool`` to compile Top-dialect MLIR into a
BM1684X bmodel, and ``libbmrt`` + the cmodel simulator to run bmodels on x86. So the
wheel is downloaded with pip for Python 3.10 and only those parts are unpacked.
``OPT_TPU_TUI_TPU_MLIR`` may name an already unpacked ``tpu_mlir`` folder instead.

Its binaries are executed and its libraries loaded into this process, so the wheel is
pinned by SHA-256, checked after the download and again before every unpack, and only
``fetch`` (``opt-tpu-tui fetch-simulator`` and ``convert``) downloads: opening a model
to chat never does, it only looks for an unpacked toolchain (``root``).
"""

from __future__ import annotations

import array
import errno
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import termios
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from opt_tpu_tui import paths
from opt_tpu_tui.errors import UserError

VERSION = "1.30.2"
SHA256 = "542807361c9eeb0777a7bd35e501d8c71cce767e4bce021a3cb3a7c25c35f909"  # tpu_mlir-1.30.2-py3-none-any.whl
WHEEL = f"tpu_mlir-{VERSION}-py3-none-any.whl"
FETCH_COMMAND = "opt-tpu-tui fetch-simulator"
ROOT_ENV = "OPT_TPU_TUI_TPU_MLIR"
NEEDED = ("tpu_mlir/bin/tpuc-opt", "tpu_mlir/bin/model_tool", "tpu_mlir/lib/", "tpu_mlir/cross_toolchains/ppl_compile/")
# The wheel's own libc (Ubuntu 22.04's) crashes under this loader: system libraries go first.
SYSTEM_LIBS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu")


def unpacked_dir() -> Path:
    """Where the wheel's needed parts are unpacked, named by the wheel's hash; ``.complete`` holds the hash.

    Named by the hash, not only the version, so a folder unpacked by an earlier
    version of this app from an unchecked wheel is never taken for a checked one.
    """
    return paths.cache_dir() / f"tpu-mlir-{VERSION}-{SHA256[:12]}"


def root() -> Path:
    """The unpacked ``tpu_mlir`` folder, or a UserError naming the command that fetches it: never downloads."""
    override = os.environ.get(ROOT_ENV)
    if override:
        folder = Path(override)
        if not (folder / "bin" / "tpuc-opt").is_file():
            raise UserError(f"{ROOT_ENV}={folder}: no bin/tpuc-opt there (it should name an unpacked tpu_mlir folder)")
        return folder
    base = unpacked_dir()
    if not is_complete(base):
        raise UserError(
            f"tpu-mlir {VERSION} (the BM1684X simulator and compiler) is not in {base}; "
            f"fetch it once (about 310 MB) with `{FETCH_COMMAND}`, or set {ROOT_ENV}"
        )
    return base / "tpu_mlir"


def is_complete(base: Path) -> bool:
    try:
        return (base / ".complete").read_text().strip() == SHA256
    except OSError:
        return False


def fetch() -> Path:
    """The unpacked ``tpu_mlir`` folder, downloading (pinned by hash) and unpacking the wheel if it is not there yet."""
    if os.environ.get(ROOT_ENV) or is_complete(unpacked_dir()):
        return root()
    unpack(download(paths.cache_dir() / "downloads"), unpacked_dir())
    return root()


def check_hash(wheel: Path) -> Path:
    """``wheel`` if its SHA-256 is the pinned one; else a UserError saying to delete it."""
    digest = hashlib.sha256()
    try:
        with wheel.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise UserError(f"{wheel}: cannot be read ({error.strerror}); delete it and run `{FETCH_COMMAND}`") from None
    if digest.hexdigest() != SHA256:
        raise UserError(
            f"{wheel}: SHA-256 {digest.hexdigest()} is not tpu-mlir {VERSION}'s {SHA256}; "
            f"refusing it: delete it and run `{FETCH_COMMAND}`"
        )
    return wheel


def download(into: Path) -> Path:
    """The tpu-mlir wheel in ``into``, fetched with pip (progress on stderr) unless there; its hash checked."""
    wheel = into / WHEEL
    if wheel.exists():
        return check_hash(wheel)
    paths.private_dir(paths.private_dir(into.parent) / into.name)  # the app's cache folder is private too
    print(f"Fetching tpu-mlir {VERSION} (about 310 MB, once) into {into} ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=into) as scratch:
        requirement = Path(scratch) / "requirements.txt"
        requirement.write_text(f"tpu-mlir=={VERSION} --hash=sha256:{SHA256}\n")
        command = [
            sys.executable, "-m", "pip", "download", "--require-hashes", "-r", str(requirement), "--no-deps",
            "--python-version", "3.10", "--only-binary=:all:", "-d", scratch,
        ]  # fmt: skip
        if subprocess.run(command, stdout=sys.stderr).returncode != 0:
            raise UserError(f"could not download tpu-mlir {VERSION} with pip; check the network or set {ROOT_ENV}")
        fetched = Path(scratch) / WHEEL
        if not fetched.is_file():
            raise UserError(f"pip reported success but no {WHEEL} is in {scratch}")
        os.replace(check_hash(fetched), wheel)
    return wheel


def unpack(wheel: Path, base: Path) -> None:
    """Extract the compiler, libraries and kernel JIT from ``wheel`` (hash checked first) into ``base``.

    It is unpacked into a folder beside ``base`` and renamed into place, so ``base``
    is either complete or absent, even when two processes fetch at once.
    """
    check_hash(wheel)
    paths.private_dir(base.parent)
    staging = Path(tempfile.mkdtemp(dir=base.parent, prefix=f"{base.name}.unpacking-"))
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.infolist():
                if member.filename.startswith(NEEDED) and not member.is_dir():
                    target = archive.extract(member, staging)
                    mode = (member.external_attr >> 16) & 0o777
                    os.chmod(target, mode or 0o644)
        for tool in ("tpuc-opt", "model_tool"):
            (staging / "tpu_mlir" / "bin" / tool).chmod(0o755)
        (staging / ".complete").write_text(SHA256)
        if not is_complete(base):  # another process may have finished first
            shutil.rmtree(base, ignore_errors=True)
            os.replace(staging, base)
    except (zipfile.BadZipFile, OSError) as error:
        raise UserError(f"{wheel}: could not unpack the tpu-mlir wheel ({error}); delete it to fetch it again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def environment(folder: Path, scratch: Path) -> dict[str, str]:
    """Variables for tpuc-opt and model_tool: library order, TPUC_ROOT and private PPL dirs.

    The PPL kernel JIT segfaults with its variables unset and caches failures, so it gets
    fresh folders under ``scratch``.
    """
    ppl = folder / "cross_toolchains" / "ppl_compile"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*SYSTEM_LIBS, str(folder / "lib"), str(folder / "lib" / "third_party")])
    env["TPUC_ROOT"] = str(folder)
    env["PATH"] = os.pathsep.join([str(ppl / "bin"), str(folder / "bin"), env.get("PATH", "")])
    env["PPL_PROJECT_ROOT"] = str(ppl)
    env["PPL_RUNTIME_PATH"] = str(ppl / "deps")
    for name in ("BUILD", "CACHE", "WORK"):
        path = scratch / f"ppl-{name.lower()}"
        path.mkdir(parents=True, exist_ok=True)
        env[f"PPL_{name}_PATH"] = str(path)
    return env


MODES = ("F16", "BF16", "W8F16", "W8BF16", "W4F16", "W4BF16")


@dataclass(frozen=True)
class Options:
    """tpuc-opt's choices that move a graph's speed but not its interface: the defaults are what ``convert`` uses.

    ``addr_mode``: "basic" (IO in the activation scratch) or "io_alone" (IO in memory of its
    own); ``q_symmetric``: W4 weights without a zero point; ``perchannel``: one scale per
    output column instead of groups (then ``group_size`` is 0); ``layer_group``: the
    layer-group pass's ``opt`` level (1 to 3); ``keep``: intermediate files kept after the
    compile (by default only the bmodel and the log stay, so that a conversion's scratch
    disk holds one graph's working set, not every graph's weights three times).
    """

    addr_mode: str = "basic"
    high_precision: bool = False
    q_symmetric: bool = False
    perchannel: bool = False
    layer_group: int = 2
    keep: bool = False


DEFAULT_OPTIONS = Options()


def compile_top(
    top_mlir: Path, mode: str, group_size: int = 0, scratch: Path | None = None, options: Options = DEFAULT_OPTIONS,
    weights_read: Callable[[], None] | None = None, feed: Callable[[BinaryIO], None] | None = None,
) -> Path:
    """Compile a Top-dialect module to ``<name>.bmodel`` beside it, as model_deploy.py would for BM1684X.

    ``top_mlir``'s module names its weights .npz (``module.weight_file``), resolved from
    its folder, where every intermediate file lands too. A failure raises UserError
    naming the module and the log kept beside it. Each weights file is deleted once the
    next step has read it (unless ``options.keep``); ``weights_read`` is called once the
    first step has read the Top weights. ``feed``: the module's weights file is not on
    disk, ``feed`` writes it into a pipe that tpuc-opt reads in its place (``feed_weights``).

    ``high_precision=False``: with it on, an input feeding a LayerNorm stays float32 while
    other IO is float16, so one layer's hidden output could not feed the next layer's
    input on the device. Off, all IO is 16-bit, and OPT blocks measured the same error
    against numpy either way, with activations up to a few hundred as well.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    if mode.startswith("W") != (group_size > 0 or options.perchannel):
        raise ValueError("weight-only modes need a quantisation group size > 0 (tpuc-opt crashes on 0); others take 0")
    folder, name = top_mlir.parent, top_mlir.stem
    tool = root()
    opt = str(tool / "bin" / "tpuc-opt")
    steps = [
        [opt, top_mlir.name,
         f"--processor-assign=chip=bm1684x mode={mode} num_device=1 num_core=1 addr_mode={options.addr_mode} "
         f"high_precision={options.high_precision}",
         "--processor-top-optimize",
         f"--convert-top-to-tpu=weightFileName={name}_tpu_weights.npz asymmetric=False doWinograd=False "
         f"q_group_size={group_size} q_symmetric={options.q_symmetric} matmul_perchannel={options.perchannel} "
         "gelu_mode=normal",
         "--canonicalize", "--weight-fold", "-o", f"{name}_tpu.mlir"],
        [opt, f"{name}_tpu.mlir", "--mlir-disable-threading",
         "--strip-io-quant=quant_input=True quant_output=True quant_input_list= quant_output_list= "
         "quant_output_bf16=False quant_input_int8=False quant_output_int8=False ",
         "--processor-tpu-optimize", "--dev-parallel", "--weight-reorder", "--subnet-divide=dynamic=False",
         "--op-reorder", "--topo-sort",
         f"--layer-group=opt={options.layer_group} group_by_cores=auto compress_mode=none debugger=0 disable_group_overlap=false "
         "lgcache=true config_filename= enable_lghash=false lghash_dir=",
         "--core-parallel", "--after-layergroup-weight-reorder", "--address-assign",
         "-o", f"{name}_final.mlir", "--debug_cmd="],
        [opt, f"{name}_final.mlir",
         f"--codegen=model_file={name}.bmodel embed_debug_info=False model_version= bmodel_only=False "
         "gdma_check=False rvti=False", "-o", "/dev/null"],
    ]  # fmt: skip
    env = environment(tool, scratch or folder / "scratch")
    log = folder / f"{name}.compile.log"
    with log.open("w") as out:
        for step in steps:
            out.write("$ " + " ".join(step) + "\n")
            out.flush()
            consumed = set(folder.glob("*.npz"))  # each step reads the weights the last one wrote
            fifo = folder / weight_file(top_mlir) if feed is not None and step is steps[0] else None
            if fifo is not None:
                os.mkfifo(fifo)  # before tpuc-opt starts: it takes a missing weights file for an empty one
            try:
                process = subprocess.Popen(step, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
                try:
                    if fifo is not None:
                        feed_weights(fifo, feed, process)  # type: ignore[arg-type]
                finally:  # a feed that failed closed the pipe: tpuc-opt read a short file and ends
                    process.wait()
            finally:
                if fifo is not None:
                    fifo.unlink()  # read or not
            if process.returncode != 0:
                raise UserError(f"compiling graph {name} ({mode}) failed; the log is {log}")
            if not options.keep:
                for path in consumed:
                    path.unlink()
            if weights_read is not None and step is steps[0]:
                weights_read()  # the float32 weights are quantised: the caller may write the next ones
    return folder / f"{name}.bmodel"


def weight_file(top_mlir: Path) -> str:
    """The weights file a Top module names (``module.weight_file``, in its first line)."""
    with top_mlir.open() as text:
        found = re.search(r'module\.weight_file = "([^"]+)"', text.readline())
    if found is None:
        raise ValueError(f"{top_mlir}: names no weight file")
    return found.group(1)


def feed_weights(fifo: Path, feed: Callable[[BinaryIO], None], reader: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """Write the weights through the named pipe ``fifo`` that ``reader`` (tpuc-opt's first step) reads as its file.

    tpuc-opt reads its weights file once, front to back, into memory (tpu-mlir's npz
    reader never seeks), so a pipe serves: the float32 weights, 8 times a layer's int4
    size, then never take disk, where a file of them was the largest part of a
    conversion's scratch. The pipe must exist before tpuc-opt starts (``compile_top``
    makes it: a weights file that is not there yet reads as one without tensors). It is
    opened for writing only once the reader has opened it (polled, so that a tpuc-opt
    that fails before reading does not leave this waiting), and a reader that stops early
    (it failed, and says so in its log) ends the writing.
    """
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as error:  # ENXIO: no reader yet
            if error.errno != errno.ENXIO or reader.poll() is not None:
                return
            time.sleep(0.02)
    os.set_blocking(fd, True)
    try:
        with os.fdopen(fd, "wb") as pipe:
            try:
                feed(pipe)
                pipe.flush()
            except BrokenPipeError:
                return
            while reader.poll() is None and unread(fd):  # see below
                time.sleep(0.01)
    except BrokenPipeError:  # at the close's flush
        pass


def unread(fd: int) -> int:
    """Bytes written into the pipe ``fd`` and not yet read.

    tpuc-opt opens its weights file twice and reads the second: a blocking open of a
    FIFO waits for a writer, so the writer must stay open until the second open has read
    everything (weights smaller than the pipe's buffer were written, and the writer gone,
    before it opened: it then waited forever).
    """
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]


def combine(bmodels: list[Path], out: Path, scratch: Path) -> Path:
    """Merge the nets of ``bmodels`` into one bmodel at ``out`` with model_tool (log beside it on failure)."""
    tool = root()
    command = [str(tool / "bin" / "model_tool"), "--combine", *map(str, bmodels), "-o", str(out)]
    env = environment(tool, scratch)
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0 or not out.is_file():
        log = out.with_suffix(".combine.log")
        log.write_text("$ " + " ".join(command) + "\n" + done.stdout)
        raise UserError(f"combining {len(bmodels)} bmodels into {out} failed; the log is {log}")
    return out
