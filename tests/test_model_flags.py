"""--model and --backend as a user meets them (issue 22, items 6 and 25).

``--model demo`` is the built-in model whatever was used last; ``--backend`` is for the
run it is given in (an earlier run's is not reused); a file given as --model is told to
pass its folder; the sail hint says ``python3 -m pip`` as the README does; and a UI
whose model failed to load exits 2 with the error, not 0.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import tmux

from opt_tpu_tui import cli, paths
from opt_tpu_tui.config import load_settings
from opt_tpu_tui.errors import UserError

GREEDY = ["--temperature", "0", "--max-new-tokens", "4"]


@pytest.fixture
def model_copy(tiny_model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("opt-tpu-tui: error: "), err
    return lines[0]


def test_model_demo_opens_the_built_in_model_after_another_was_used(
    capsys, monkeypatch, tiny_model: Path, model_copy: Path
) -> None:
    monkeypatch.setattr(cli, "DEMO_MODEL_DIR", tiny_model)  # the tiny model stands in for the demo: fast
    assert run_cli(capsys, "--model", str(model_copy), "-p", "Hi", *GREEDY)[0] == 0
    assert load_settings()[0].last_model == str(model_copy.resolve())
    code, _, err = run_cli(capsys, "--model", "demo", "-p", "Hi", *GREEDY)
    assert code == 0 and "built-in demo model" in err
    assert load_settings()[0].last_model == str(model_copy.resolve())  # the demo is not remembered


def test_help_names_the_demo_model_and_says_the_backend_is_per_run(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["-h"])
    text = " ".join(capsys.readouterr().out.split())
    assert "demo is the built-in demo model" in text
    assert "inference backend, for this run (default: auto" in text


def test_an_earlier_runs_backend_is_not_reused(capsys, model_copy: Path) -> None:
    """A run with --backend bmrt left it in the settings (as older versions wrote it): the next run is auto."""
    paths.settings_file().parent.mkdir(parents=True, exist_ok=True)
    paths.settings_file().write_text(json.dumps({"last_model": str(model_copy.resolve()), "backend": "bmrt"}))
    code, out, err = run_cli(capsys, "-p", "Hi", *GREEDY)
    assert code == 0 and out.strip(), err  # the cpu backend (auto for a checkpoint), not the simulator
    assert run_cli(capsys, "--model", str(model_copy), "--backend", "cpu", "-p", "Hi", *GREEDY)[0] == 0
    assert json.loads(paths.settings_file().read_text())["backend"] == "bmrt"  # the run's backend is not written either


def test_a_file_given_as_the_model_is_told_to_pass_its_folder(capsys, model_copy: Path) -> None:
    bmodel = model_copy / "opt.bmodel"
    bmodel.write_bytes(b"")
    line = one_line_error(*run_cli(capsys, "--model", str(bmodel), "-p", "Hi")[::2])
    assert "--model takes the model's folder" in line and line.endswith(f"--model {model_copy}")


def test_the_sail_hint_says_python3_m_pip_as_the_readme_does(monkeypatch) -> None:
    from opt_tpu_tui.backends import sail

    monkeypatch.setitem(sys.modules, "sophon", None)  # not installed
    monkeypatch.setitem(sys.modules, "sophon.sail", None)
    with pytest.raises(UserError) as error:
        sail.import_sail()
    assert "`python3 -m pip install --user dfss && python3 -m dfss --install sail`" in str(error.value)
    assert "pip3 " not in str(error.value)


@pytest.mark.skipif(not tmux.available(), reason="needs tmux and the installed opt-tpu-tui console script")
def test_the_ui_whose_model_failed_to_load_exits_2_with_the_error(tiny_model: Path) -> None:
    """--backend sail on a checkpoint cannot load: the UI shows why, and quitting says it again and exits 2."""
    with tmux.Tmux("model-failed") as term:
        term.start([tmux.SCRIPT, "--model", str(tiny_model), "--backend", "sail"], width=100, height=30)
        term.wait_for(lambda screen: "no model" in screen and "Model failed to load" in screen)
        term.keys("C-q")
        screen = term.wait_for(lambda screen: "EXIT=" in screen)
    assert "EXIT=2" in screen
    assert "opt-tpu-tui: error: " in screen and "manifest.json" in screen
