from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import sail_build  # noqa: E402
from tiny import make_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pre-LN tiny OPT with a tokenizer, shared by tests that only read it."""
    return make_model(tmp_path_factory.mktemp("tiny") / "tiny-opt")


@pytest.fixture(scope="session")
def simulator() -> None:
    """The BM1684X simulator (tpu-mlir's libraries and compiler), or a skip where they cannot be fetched.

    The device it opens stays open for the test run: the cmodel does not start again
    cleanly in a process that freed it. Its threads keep about a core busy while it is
    open, so the tests that use it run last.
    """
    from opt_tpu_tui import toolchain
    from opt_tpu_tui.errors import UserError

    try:
        toolchain.fetch()
    except UserError as error:
        pytest.skip(f"the tpu-mlir toolchain cannot be obtained here: {error}")


@pytest.fixture(scope="session")
def tpu_runtime(simulator: None):  # noqa: ANN201 - a bmrt_lib.Runtime on the BM1684X simulator
    """One bmrt instance for the graph tests (nets loaded into it need distinct names)."""
    from opt_tpu_tui.backends.bmrt_lib import Runtime

    runtime = Runtime()
    yield runtime
    runtime.close()


_real_sail = sail_build.RealSail()


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Which sophon.sail the sail tests run on (building it here if the cache lacks it)."""
    _real_sail.load()
    if _real_sail.module is not None:
        return [f"sophon.sail: {_real_sail.module.__file__}"]
    return [f"sophon.sail: none ({_real_sail.problem})"]


@pytest.fixture
def real_sail(simulator: None, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The real ``sophon.sail`` (built from ``OPT_TPU_TUI_SAIL_SRC``) importable for this test; else a skip.

    A source given but not buildable is a failure, not a skip: the run was asked to test sail.
    """
    _real_sail.load()
    if _real_sail.module is None:
        if _real_sail.skip:
            pytest.skip(_real_sail.problem)
        pytest.fail(f"sophon.sail: {_real_sail.problem}")
    monkeypatch.setitem(sys.modules, "sophon", _real_sail.package)
    monkeypatch.setitem(sys.modules, "sophon.sail", _real_sail.module)
    return _real_sail.module


@pytest.fixture
def real_sail_folder(real_sail: ModuleType) -> Path:
    """The folder to put on PYTHONPATH for a child process to import the same ``sophon.sail``."""
    assert _real_sail.folder is not None
    return _real_sail.folder


@pytest.fixture(params=["bmrt", "sail"])
def tpu_kind(request: pytest.FixtureRequest) -> str:
    """Each TPU driver in turn: bmrt, and sail where the real binding is built (else that case skips)."""
    if request.param == "sail":
        request.getfixturevalue("real_sail")
    return request.param


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Simulator tests last: once the simulator is open it slows every test after it."""
    items.sort(key=lambda item: "simulator" in getattr(item, "fixturenames", ()))


@pytest.fixture(autouse=True)
def _private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test's settings, history and caches out of the real user directories."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common umask, under which files are world-readable unless the app makes them private."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def anyio_backend() -> str:
    """The event loop of the async (Pilot) tests: Textual runs on asyncio."""
    return "asyncio"
