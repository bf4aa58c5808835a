"""The shipped demo model: it loads, matches transformers, writes words, and installs with the wheel."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest

from opt_tpu_tui.backends import open_model
from opt_tpu_tui.chat import ChatSession
from opt_tpu_tui.demo import DEMO_MODEL_DIR
from opt_tpu_tui.sampling import SamplingSettings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from perplexity import perplexity, read_heldout  # noqa: E402
from tiny import torch_and_transformers  # noqa: E402

# The shipped model scores 64.7 on the first 12 held-out transcripts (all 65: see README); with margin.
PERPLEXITY_CEILING = 80.0


@pytest.fixture(scope="module")
def demo():
    return open_model(DEMO_MODEL_DIR, "cpu")


def test_logits_equal_transformers(demo) -> None:
    torch, transformers = torch_and_transformers()
    backend, tokenizer = demo
    ids = tokenizer.encode("User: How do I read a file?\nAssistant:")
    reference = transformers.OPTForCausalLM.from_pretrained(DEMO_MODEL_DIR, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(backend.prefill(ids), expected[-1], atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("settings", [SamplingSettings(temperature=0), SamplingSettings(seed=1)], ids=["greedy", "sampled"])
def test_replies_are_made_of_english_words(demo, settings: SamplingSettings) -> None:
    backend, tokenizer = demo
    words = re.findall(r"\S+", "".join(ChatSession(backend, tokenizer).send("Hello", settings)))
    assert len(words) >= 3
    alphabetic = [w for w in words if re.fullmatch(r"[A-Za-z][a-z]*[.,:;!?']?s?", w)]
    assert len(alphabetic) >= 0.7 * len(words), words


def test_heldout_perplexity_is_low() -> None:
    texts = read_heldout(ROOT / "scripts" / "demo_heldout.txt")[:12]
    assert 1.0 < perplexity(DEMO_MODEL_DIR, texts) < PERPLEXITY_CEILING


def test_wheel_ships_the_model_and_themes_and_runs_outside_the_tree(tmp_path: Path) -> None:
    # built from a copy: setuptools would leave build/ in the tree, and stale files in it reach later wheels
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    wheel = next(tmp_path.glob("opt_tpu_tui-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for part in ("config.json", "model.safetensors", "vocab.json", "merges.txt"):
        assert f"opt_tpu_tui/demo_model/{part}" in names
    assert any(n.endswith("share/opt-tpu-tui/themes/high-contrast.tcss") for n in names)
    venv, env = venv_seeing_these_packages(tmp_path / "venv")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--force-reinstall", "-q", str(wheel)]
    subprocess.run(pip, check=True, capture_output=True, env=env)
    where = [str(venv / "bin" / "python"), "-c", "from opt_tpu_tui.demo import DEMO_MODEL_DIR as d; print(d)"]
    found = subprocess.run(where, cwd=tmp_path, capture_output=True, text=True, check=True, env=env).stdout
    assert found.startswith(str(venv))
    result = subprocess.run(
        [str(venv / "bin" / "opt-tpu-tui"), "-p", "Hello", "--temperature", "0", "--max-new-tokens", "24"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "built-in demo model" in result.stderr
    assert len(re.findall(r"[A-Za-z]{2,}", result.stdout)) >= 3, result.stdout


def venv_seeing_these_packages(venv: Path) -> tuple[Path, dict[str, str]]:
    """A new venv whose sys.path ends with this interpreter's site-packages, and an environment to run it in.

    The wheel's dependencies come from there, whether the tests run in a venv or not:
    ``--system-site-packages`` would show only the base interpreter's packages, not the
    running venv's. The .pth goes after the venv's own site-packages, so the installed
    wheel wins over any other copy; PYTHONPATH is dropped for the same reason.
    """
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (Path(purelib) / "zz-test-host-packages.pth").write_text("".join(f"{folder}\n" for folder in ours))
    return venv, {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_the_demo_model_converts_to_f16_and_chats_the_same_in_the_simulator(simulator: None, tmp_path: Path) -> None:
    """The shipped model as a realistic conversion: greedy replies on the simulator equal the numpy backend's."""
    from opt_tpu_tui.convert.build import convert

    converted = convert(DEMO_MODEL_DIR, tmp_path / "demo-f16", "f16", context=64, log=lambda _: None)
    settings = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=8)
    replies = []
    for model_dir, kind in ((converted, "bmrt"), (DEMO_MODEL_DIR, "cpu")):
        backend, tokenizer = open_model(model_dir, kind, context=64)
        try:
            reply = ChatSession(backend, tokenizer).send("What is a list?", settings)
            replies.append(("".join(reply), reply.stats.new_tokens))
        finally:
            backend.close()
    assert replies[0] == replies[1]
    assert replies[0][1] > 0
