"""``--device N`` picks the TPU on a host with several (issue 25): the model is opened there, and the
device stats read it, in -p, -c, the UI and serve alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from opt_tpu_tui import backends, cli
from opt_tpu_tui.devices import DeviceMonitor
from opt_tpu_tui.serve.command import build_serve_parser as serve_parser
from opt_tpu_tui.tui.app import OptTuiApp


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The device each backend was asked to open on (the real backend is opened all the same)."""
    devices: list[int] = []
    real = backends.open_backend

    def spy(model_dir: Path, kind: str = "auto", context: int | None = None, device: int = 0) -> backends.Backend:
        devices.append(device)
        return real(model_dir, kind, context, device)

    monkeypatch.setattr(backends, "open_backend", spy)
    return devices


def test_prompt_opens_the_model_on_the_device_given(opened: list[int], tiny_model: Path, capsys) -> None:  # noqa: ANN001
    assert cli.main(["--model", str(tiny_model), "--device", "3", "-q", "-p", "hi", "--max-new-tokens", "2"]) == 0
    assert opened == [3]


@pytest.mark.parametrize("given", ["-1", "x"])
def test_a_device_that_is_no_index_is_a_usage_error(given: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        cli.main(["--device", given, "-p", "hi"])
    assert ended.value.code == 2 and "expected a device index, 0 or more" in capsys.readouterr().err


def test_the_ui_loads_and_samples_the_device_given(
    opened: list[int], tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, object] = {}

    def run(app: OptTuiApp, **options: object) -> None:  # as far as the first frame: load the model, make a monitor
        app.loader()  # type: ignore[misc]
        seen["monitor"] = app.monitor_factory("bmrt")

    monkeypatch.setattr(OptTuiApp, "run", run)
    monkeypatch.setattr("opt_tpu_tui.tui.check_terminal", lambda: None)  # pytest's stdin is no terminal
    monkeypatch.setattr("opt_tpu_tui.devices._bmlib_stats", lambda device: None)  # no libsophon asked here
    assert cli.main(["--model", str(tiny_model), "--device", "2"]) == 0
    monitor = seen["monitor"]
    assert opened == [2] and isinstance(monitor, DeviceMonitor) and monitor.device_id == 2


def test_serve_takes_the_device() -> None:
    assert serve_parser().parse_args(["--device", "1"]).device == 1


@pytest.mark.parametrize("mode", [[], ["-p", "hi"], ["-c"]], ids=["ui", "-p", "-c"])
@pytest.mark.parametrize("picks", [["--model", "demo"], ["--backend", "cpu"], ["--context", "64"], ["--device", "1"]])
def test_server_with_a_flag_that_picks_a_model_here_is_refused_in_every_mode(
    mode: list[str], picks: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The server's model answers: a flag choosing the model loaded here is a mistake, said before anything
    starts (the UI used to ignore it, and load nothing here)."""
    assert cli.main(["--server", "http://127.0.0.1:9", *picks, *mode]) == 2
    err = capsys.readouterr().err
    assert f"{picks[0]} choose the model loaded here; with --server the server's model answers" in err
