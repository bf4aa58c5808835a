"""The command line: headless modes, help, and one clear line for every kind of bad input."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from tiny import torch_and_transformers

from opt_tpu_tui.chat import DEFAULT_PREAMBLE, transcript
from opt_tpu_tui.cli import DEMO_PROMPT, main
from opt_tpu_tui.tokenizer import Tokenizer

GREEDY = ["--temperature", "0", "--max-new-tokens", "12"]


@pytest.fixture
def model_copy(tiny_model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("opt-tpu-tui: error: "), err
    for fragment in fragments:
        assert fragment in lines[0]


def test_prompt_streams_a_reply_and_stats(capsys, tiny_model: Path) -> None:
    code, out, err = run_cli(capsys, "--model", str(tiny_model), "-p", "Hello", *GREEDY)
    assert code == 0 and out.endswith("\n") and out.strip()
    assert "prompt tokens" in err and "tok/s" in err


def test_prompt_without_text_uses_the_demonstration_prompt(capsys, tiny_model: Path) -> None:
    code, _, err = run_cli(capsys, "--model", str(tiny_model), "-p", *GREEDY)
    prompt_tokens = len(Tokenizer.from_dir(tiny_model).encode(transcript(DEFAULT_PREAMBLE, [], DEMO_PROMPT)))
    assert code == 0 and f", {prompt_tokens} prompt tokens" in err


def test_raw_prompt_from_stdin_continues_the_text(capsys, monkeypatch, tiny_model: Path) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("Once upon a time"))
    code, out, err = run_cli(capsys, "--model", str(tiny_model), "-p", "-", "--raw", "-q", *GREEDY)
    assert code == 0 and out.strip() and err == ""


def test_line_chat_answers_each_line(capsys, monkeypatch, tiny_model: Path) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\n\n/regen\n/new\nBye\n"))
    code, out, _ = run_cli(capsys, "--model", str(tiny_model), "-c", "-q", *GREEDY)
    assert code == 0
    assert out.count("bot> ") == 3 and "(new conversation)" in out


def test_a_reply_stopped_by_the_user_reads_stopped_in_the_stats_line() -> None:
    from opt_tpu_tui.cli import format_stats
    from opt_tpu_tui.generation import GenerationStats

    assert format_stats(GenerationStats(stop_reason="cancelled")).endswith("stop: stopped]")
    assert format_stats(GenerationStats(stop_reason="eos")).endswith("stop: end of text]")


def test_help_from_the_console_script() -> None:
    script = Path(sys.executable).parent / "opt-tpu-tui"  # installed beside this python, on PATH or not (.venv/bin)
    result = subprocess.run([str(script), "-h"], capture_output=True, text=True, check=True)
    for flag in ("--model", "--prompt", "--chat", "--max-new-tokens", "--temperature", "--top-p", "--top-k",
                 "--repetition-penalty", "--seed", "--backend"):  # fmt: skip
        assert flag in result.stdout


def test_missing_directory(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "--model", str(tmp_path / "nope"), "-p", "Hi")
    assert_one_line_error(code, err, "nope: no such model directory")


def test_missing_and_corrupt_config(capsys, model_copy: Path) -> None:
    (model_copy / "config.json").unlink()
    assert_one_line_error(*run_cli(capsys, "--model", str(model_copy), "-p", "Hi")[::2], "config.json: not found")
    (model_copy / "config.json").write_text('{"hidden_size": 64,')
    assert_one_line_error(*run_cli(capsys, "--model", str(model_copy), "-p", "Hi")[::2], "config.json: not valid JSON")
    (model_copy / "config.json").write_text('{"model_type": "opt", "hidden_size": 64}')
    assert_one_line_error(*run_cli(capsys, "--model", str(model_copy), "-p", "Hi")[::2], "config.json: missing vocab_size")


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def set_config(model: Path, **changes: object) -> None:
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, **changes}))


def damage(model: Path, case: str) -> None:
    """Make one of the bad inputs below in the model directory ``model``."""
    if case == "deep config":
        (model / "config.json").write_text(deep(100_000))
    elif case == "huge number in config":
        (model / "config.json").write_text('{"hidden_size": ' + "9" * 5000 + "}")
    elif case == "deep vocab":
        (model / "vocab.json").write_text('{"a": ' + deep(100_000) + "}")
    elif case == "vocab id past vocab_size":
        vocab = json.loads((model / "vocab.json").read_text())
        (model / "vocab.json").write_text(json.dumps({**vocab, "zzz": 60_000}))
    elif case == "config a FIFO":
        (model / "config.json").unlink()
        os.mkfifo(model / "config.json")
    elif case == "a million layers":
        set_config(model, num_hidden_layers=1_000_000)
    elif case == "shard outside the folder":
        (model / "model.safetensors").rename(model / "shard.safetensors")
        index = {"weight_map": {"a": "shard.safetensors", "b": "../../../../../../etc/passwd"}}
        (model / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("deep config", ["config.json: not valid JSON", "nested too deeply"]),
        ("huge number in config", ["config.json: not valid JSON"]),
        ("deep vocab", ["vocab.json: not valid JSON", "nested too deeply"]),
        ("vocab id past vocab_size", ["vocab.json: holds token id 60000", "0 to 407"]),
        ("config a FIFO", ["config.json: not a regular file"]),
        ("a million layers", ["num_hidden_layers 1000000", "hold 2 layers"]),
        ("shard outside the folder", ["model.safetensors.index.json: shard '../../../../../../etc/passwd'"]),
    ],
)
def test_a_bad_model_file_is_one_line_naming_it(capsys, model_copy: Path, case: str, fragments: list[str]) -> None:
    damage(model_copy, case)
    code, _, err = run_cli(capsys, "--model", str(model_copy), "-p", "Hi", *GREEDY)
    assert_one_line_error(code, err, *fragments)


def test_a_symlink_loop_as_the_model_is_one_line(capsys, tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    code, _, err = run_cli(capsys, "--model", str(tmp_path / "a"), "-p", "Hi")
    assert_one_line_error(code, err, f"{tmp_path / 'a'}: no such model directory")


def test_corrupt_weights(capsys, model_copy: Path) -> None:
    (model_copy / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    code, _, err = run_cli(capsys, "--model", str(model_copy), "-p", "Hi")
    assert_one_line_error(code, err, "model.safetensors: not a readable safetensors file")


def test_bfloat16_weights_are_widened_to_what_torch_computes_with(capsys, model_copy: Path) -> None:
    torch, _ = torch_and_transformers()
    from safetensors.torch import save_file as save_torch

    from opt_tpu_tui.model import load_weights

    tensors = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in load_file(str(model_copy / "model.safetensors")).items()}
    save_torch(tensors, str(model_copy / "model.safetensors"))
    weights = load_weights(model_copy)
    expected = tensors["model.decoder.layers.1.fc1.weight"].float().numpy()
    assert weights.layers[1].fc1_w.dtype == "float32" and np.array_equal(weights.layers[1].fc1_w, expected)
    code, out, _ = run_cli(capsys, "--model", str(model_copy), "-p", "Hi", *GREEDY)
    assert code == 0 and out.strip()


def test_float16_weights_are_upcast_once(capsys, tiny_model: Path, model_copy: Path) -> None:
    tensors = {k: v.astype("float16") for k, v in load_file(str(model_copy / "model.safetensors")).items()}
    save_file(tensors, str(model_copy / "model.safetensors"))
    from opt_tpu_tui.model import load_weights

    weights = load_weights(model_copy)
    assert weights.embed_tokens.dtype == "float32" and weights.layers[0].fc1_w.dtype == "float32"
    code, out, _ = run_cli(capsys, "--model", str(model_copy), "-p", "Hi", *GREEDY)
    assert code == 0 and out.strip()


def test_shapes_that_disagree_with_config(capsys, model_copy: Path) -> None:
    config = json.loads((model_copy / "config.json").read_text())
    config["ffn_dim"] = 96
    (model_copy / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "--model", str(model_copy), "-p", "Hi")
    assert_one_line_error(code, err, "fc1.weight has shape [128, 64], but config.json implies [96, 64]")


def test_missing_tensor(capsys, model_copy: Path) -> None:
    tensors = load_file(str(model_copy / "model.safetensors"))
    del tensors["model.decoder.layers.1.fc2.weight"]
    save_file(tensors, str(model_copy / "model.safetensors"))
    code, _, err = run_cli(capsys, "--model", str(model_copy), "-p", "Hi")
    assert_one_line_error(code, err, "decoder.layers.1.fc2.weight is missing from model.safetensors")


def test_a_pytorch_model_bin_that_is_no_pytorch_checkpoint_is_one_line(capsys, model_copy: Path) -> None:
    (model_copy / "model.safetensors").rename(model_copy / "pytorch_model.bin")
    code, _, err = run_cli(capsys, "--model", str(model_copy), "-p", "Hi")
    assert_one_line_error(code, err, "pytorch_model.bin: not a PyTorch checkpoint")


def test_sharded_checkpoint_loads(capsys, tiny_model: Path, tmp_path: Path) -> None:
    _, transformers = torch_and_transformers()
    sharded = tmp_path / "sharded"
    transformers.OPTForCausalLM.from_pretrained(tiny_model).save_pretrained(sharded, max_shard_size="100KB")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tiny_model / name, sharded / name)
    assert (sharded / "model.safetensors.index.json").is_file()
    _, plain, _ = run_cli(capsys, "--model", str(tiny_model), "-p", "Hi", *GREEDY)
    code, out, _ = run_cli(capsys, "--model", str(sharded), "-p", "Hi", *GREEDY)
    assert code == 0 and out == plain


def test_missing_vocab(capsys, model_copy: Path) -> None:
    (model_copy / "merges.txt").unlink()
    code, _, err = run_cli(capsys, "--model", str(model_copy), "-p", "Hi")
    assert_one_line_error(code, err, "merges.txt: not found")


@pytest.mark.parametrize("prompt, stdin", [("", ""), ("   ", ""), ("-", " \n")])
def test_an_empty_prompt_is_refused_before_the_model_loads(capsys, monkeypatch, tmp_path: Path, prompt, stdin) -> None:  # noqa: ANN001
    (tmp_path / "not-a-model").mkdir()  # loading it would fail: config.json is missing
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code, _, err = run_cli(capsys, "--model", str(tmp_path / "not-a-model"), "-p", prompt)
    assert_one_line_error(code, err, "the prompt is empty")


def test_a_bad_flag_is_refused_before_stdin_is_read(capsys, monkeypatch, tmp_path: Path) -> None:
    class Unread(io.StringIO):
        def read(self, *args: object) -> str:
            raise AssertionError("stdin was read")

    (tmp_path / "not-a-model").mkdir()
    monkeypatch.setattr(sys, "stdin", Unread())
    code, _, err = run_cli(capsys, "--model", str(tmp_path / "not-a-model"), "-p", "-", "--top-p", "5")
    assert_one_line_error(code, err, "top_p must be between 0.01 and 1, got 5")


def test_a_hub_id_as_the_model_says_how_to_download_it(capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "--model", "facebook/opt-125m", "-p", "Hi")
    assert_one_line_error(
        code, err, "facebook/opt-125m: no such model directory",
        "`hf download facebook/opt-125m --local-dir opt-125m`", "then --model opt-125m",
    )  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded
    code, _, err = run_cli(capsys, "--model", "models/opt-125m", "-p", "Hi")  # a missing folder reads the same
    assert_one_line_error(code, err, "models/opt-125m: no such model directory")
    code, _, err = run_cli(capsys, "--model", "opt-125m", "-p", "Hi")
    assert_one_line_error(code, err, "opt-125m: no such model directory")  # no owner/: not an id
    assert "hf download" not in err
    code, _, err = run_cli(capsys, "serve", "--model", "facebook/opt-125m")  # serve reads --model as the app does
    assert_one_line_error(code, err, "facebook/opt-125m: no such model directory", "`hf download facebook/opt-125m")


def test_help_shows_each_sampling_default_from_the_saved_settings_and_its_range(capsys) -> None:
    from opt_tpu_tui.config import Settings, save_settings
    from opt_tpu_tui.sampling import SamplingSettings

    save_settings(Settings(sampling=SamplingSettings(max_new_tokens=77, temperature=0.25, seed=7)))
    with pytest.raises(SystemExit) as exit:
        main(["-h"])
    assert exit.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    for expected in (
        "--max-new-tokens N most tokens in a reply; default 77, range 1 to 4096",
        "--temperature T 0 picks the likeliest token (greedy); default 0.25, range 0 to 5",
        "--top-p P nucleus sampling mass; 1 turns it off; default 0.9, range 0.01 to 1",
        "--top-k K sample among the k likeliest tokens; 0 turns it off; default 50, range 0 to 100000",
        "--repetition-penalty R above 1 discourages repeating tokens; default 1.1, range 1 to 2",
        "--seed S seed of the sampler, for a repeatable reply; default 7, range 0 to 4294967295",
    ):
        assert expected in help_text


def test_help_without_saved_settings_shows_the_built_in_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["-h"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default 128, range 1 to 4096" in help_text and "default a fresh draw each reply" in help_text


def test_prompt_longer_than_the_context(capsys, tiny_model: Path) -> None:
    code, _, err = run_cli(capsys, "--model", str(tiny_model), "--context", "32", "-p", "word " * 100)
    assert_one_line_error(code, err, "with the preamble, but the context holds 32: shorten it (or the preamble)")
    code, _, err = run_cli(capsys, "--model", str(tiny_model), "--context", "4096", "-p", "Hi")
    assert_one_line_error(code, err, "--context 4096 is out of range: this model allows 2 to 128 tokens")
    code, _, err = run_cli(capsys, "--model", str(tiny_model), "--context", "0", "-p", "Hi")
    assert_one_line_error(code, err, "--context 0 is out of range: a model allows 2 tokens at least")


def test_out_of_range_sampling_flag(capsys, tiny_model: Path) -> None:
    code, _, err = run_cli(capsys, "--model", str(tiny_model), "-p", "Hi", "--top-p", "1.5")
    assert_one_line_error(code, err, "top_p must be between 0.01 and 1, got 1.5")


def test_default_model_is_the_last_one_used_then_the_demo(capsys, monkeypatch, tiny_model: Path, model_copy: Path) -> None:
    import opt_tpu_tui.cli as cli
    from opt_tpu_tui.config import load_settings

    monkeypatch.setattr(cli, "DEMO_MODEL_DIR", tiny_model)
    code, _, err = run_cli(capsys, "-p", "Hi", *GREEDY)
    assert code == 0 and "built-in demo model" in err and "--model DIR" in err
    assert load_settings()[0].last_model is None  # the demo is never remembered

    assert run_cli(capsys, "--model", str(model_copy), "-p", "Hi", *GREEDY)[0] == 0
    assert load_settings()[0].last_model == str(model_copy.resolve())
    code, _, err = run_cli(capsys, "-p", "Hi", *GREEDY)
    assert code == 0 and "demo" not in err

    shutil.rmtree(model_copy)
    code, _, err = run_cli(capsys, "-p", "Hi", *GREEDY)
    assert code == 0 and f"the last model used, {model_copy.resolve()}, is gone" in err and "built-in demo" in err


def test_saved_sampling_settings_are_the_defaults_and_flags_override_them(capsys, tiny_model: Path) -> None:
    from opt_tpu_tui.config import Settings, save_settings
    from opt_tpu_tui.sampling import SamplingSettings

    save_settings(Settings(sampling=SamplingSettings(max_new_tokens=3, temperature=0)))
    code, _, err = run_cli(capsys, "--model", str(tiny_model), "-p", "Hi")
    assert code == 0 and " 3 new at" in err
    code, _, err = run_cli(capsys, "--model", str(tiny_model), "-p", "Hi", "--max-new-tokens", "5")
    assert code == 0 and " 5 new at" in err


def test_corrupt_settings_file_is_set_aside_with_a_warning(capsys, tiny_model: Path) -> None:
    from opt_tpu_tui import paths

    paths.settings_file().parent.mkdir(parents=True)
    paths.settings_file().write_text("{broken")
    code, _, err = run_cli(capsys, "--model", str(tiny_model), "-p", "Hi", *GREEDY)
    assert code == 0 and "warning" in err and "not valid JSON" in err
    assert list(paths.settings_file().parent.glob("settings.json.corrupt-*"))


@pytest.mark.parametrize(
    "args, stdin, stdout, error",
    [
        (["-p", "-"], b"h\xffi", subprocess.PIPE, "stdin: not valid UTF-8 (byte 0xff at character 1)"),
        (["-p", "Hi"], b"", "/dev/full", "stdout: cannot write the reply (No space left on device)"),
    ],
)
def test_bad_bytes_in_and_a_full_disk_out_are_one_line(tiny_model: Path, args, stdin, stdout, error) -> None:  # noqa: ANN001
    out = open(stdout, "w") if stdout == "/dev/full" else stdout  # noqa: SIM115
    child = subprocess.run(
        [sys.executable, "-m", "opt_tpu_tui", "--model", str(tiny_model), "-q", *GREEDY, *args],
        input=stdin, stdout=out, stderr=subprocess.PIPE, timeout=120,
    )  # fmt: skip
    assert child.returncode == 2 and child.stderr.decode() == f"opt-tpu-tui: error: {error}\n"


def test_a_line_that_is_not_utf8_is_refused_and_the_chat_goes_on(tiny_model: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-m", "opt_tpu_tui", "--model", str(tiny_model), "-q", "-c", *GREEDY],
        input=b"h\xffi\nHello\n", capture_output=True, timeout=120,
    )  # fmt: skip
    assert child.returncode == 0 and child.stdout.decode().count("bot> ") == 1
    assert child.stderr.decode() == "error: that line: not valid UTF-8 (byte 0xff at character 1)\n"
