"""Checkpoints as the hub ships them, read without torch: pytorch_model.bin (single or sharded), bfloat16,
hub-style names, and the files that must be refused (pickles that run code, legacy format, LFS pointers).

The references are independent: transformers' own loader (which reads the .bin with
torch) and the safetensors twin of each .bin, holding the same tensors.
"""

from __future__ import annotations

import collections
import datetime
import os
import shlex
import shutil
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from tiny import NO_REFERENCE

torch = pytest.importorskip("torch", reason=NO_REFERENCE)  # the checkpoints are written by torch.save
transformers = pytest.importorskip("transformers", reason=NO_REFERENCE)
from safetensors.torch import load_file  # noqa: E402
from torch_checkpoints import copy_beside, save_variant, state_dict  # noqa: E402

from opt_tpu_tui.backends.cpu import CPUBackend
from opt_tpu_tui.cli import main
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.model.torch_zip import read_torch_zip

VARIANTS = {  # name: (dtype, shards, hub-style names)
    "float32": ("float32", 1, False),
    "float16-sharded-hub-names": ("float16", 3, True),
    "bfloat16": ("bfloat16", 1, False),
}
PROMPT = [2, 17, 250, 31, 99, 5, 301, 44, 7]
CONTEXT = 32


@pytest.fixture(scope="session", params=VARIANTS, ids=list(VARIANTS))
def variant(request: pytest.FixtureRequest, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """(name, .bin directory, safetensors twin directory)."""
    dtype, shards, hub_names = VARIANTS[request.param]
    out = tmp_path_factory.mktemp(request.param)
    return (request.param, *save_variant(tiny_model, out, dtype, shards, hub_names))


def transformers_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    """Every position's logits from transformers' OPTForCausalLM, loading ``model_dir`` itself, in float32."""
    model = transformers.OPTForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def test_the_layout_is_the_one_the_variant_names(variant) -> None:
    name, bin_dir, _ = variant
    files = sorted(p.name for p in bin_dir.glob("pytorch_model*"))
    if "sharded" in name:
        assert len(files) == 4 and "pytorch_model.bin.index.json" in files
        names = [n for p in bin_dir.glob("*.bin") for n in read_torch_zip(p)]
        assert "decoder.embed_tokens.weight" in names and not any(n.startswith(("model.", "lm_head")) for n in names)
    else:
        assert files == ["pytorch_model.bin"]


def test_the_cpu_backend_gives_the_logits_of_the_twin_and_of_transformers(variant) -> None:
    _, bin_dir, twin_dir = variant
    from_bin, from_twin = CPUBackend(bin_dir, CONTEXT), CPUBackend(twin_dir, CONTEXT)
    expected = transformers_logits(bin_dir, PROMPT)
    logits = from_bin.prefill(PROMPT[:5]).copy()
    assert np.array_equal(logits, from_twin.prefill(PROMPT[:5]))
    np.testing.assert_allclose(logits, expected[4], atol=1e-4, rtol=1e-4)
    for position in range(5, len(PROMPT)):
        logits = from_bin.decode(PROMPT[position]).copy()
        assert np.array_equal(logits, from_twin.decode(PROMPT[position]))
        np.testing.assert_allclose(logits, expected[position], atol=1e-4, rtol=1e-4)


def test_views_of_shared_storages_and_bfloat16_specials_read_as_torch_reads_them(tmp_path: Path) -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7
    specials = torch.tensor([1.5, -0.0, float("inf"), float("-inf"), 1e-40, 3.0e38, -2.5e-3]).to(torch.bfloat16)
    tensors = {"base": base, "transposed": base.t(), "row": base[2], "strided": base[1:, ::2], "specials": specials,
               "half": (base * 3).half(), "empty": torch.zeros(0, 3)}  # fmt: skip
    torch.save(tensors, tmp_path / "t.bin")
    read = read_torch_zip(tmp_path / "t.bin")
    for name, tensor in tensors.items():
        expected = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
        got = read[name].read(upcast=False)
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        assert np.array_equal(got, expected), name


class RunsACommand:
    """Pickles as a call to os.system: what a hostile pytorch_model.bin can hold."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):  # noqa: ANN204
        return os.system, (self.command,)


def hostile_checkpoint(twin_dir: Path, out: Path, payload: object) -> Path:
    """``out``: the tiny model's config and tokenizer, and a pytorch_model.bin whose tensors include ``payload``."""
    tensors: dict[str, object] = dict(load_file(str(twin_dir / "model.safetensors")))
    tensors["decoder.embed_tokens.weight"] = payload
    torch.save(tensors, copy_beside(twin_dir, out) / "pytorch_model.bin")
    return out


def test_a_pickle_that_would_run_a_command_is_refused_and_the_command_never_runs(
    variant, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, twin_dir = variant
    marker = tmp_path / "ran"
    model = hostile_checkpoint(twin_dir, tmp_path / "hostile", RunsACommand(f"touch {shlex.quote(str(marker))}"))
    torch.load(model / "pytorch_model.bin", weights_only=False)  # the payload is live: a trusting load runs it
    assert marker.exists()
    marker.unlink()

    for args in (["-p", "Hi"], ["convert", "--out", str(tmp_path / "out")]):
        argv = ["convert", "--model", str(model), *args[1:]] if args[0] == "convert" else ["--model", str(model), *args]
        assert main(argv) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and "refused: its pickle calls posix.system" in error, error
        assert not marker.exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "payload, named",
    [
        (torch.nn.Parameter(torch.ones(2)), "torch._utils._rebuild_parameter"),
        (collections.Counter(a=1), "collections.Counter"),
        (datetime.date(2026, 1, 1), "datetime.date"),
        (torch.float16, "torch.float16"),  # a global torch.save writes, but never in a state dict of tensors
    ],
    ids=["parameter", "counter", "date", "dtype"],
)
def test_a_pickle_naming_any_other_global_is_refused(variant, tmp_path: Path, payload: object, named: str) -> None:
    _, _, twin_dir = variant
    model = hostile_checkpoint(twin_dir, tmp_path / "other", payload)
    with pytest.raises(UserError, match="refused: its pickle calls ") as error:
        CPUBackend(model, CONTEXT)
    assert named in str(error.value) and "\n" not in str(error.value)


def test_the_legacy_format_says_how_to_re_save_it(tiny_model: Path, tmp_path: Path) -> None:
    model = copy_beside(tiny_model, tmp_path / "legacy")
    torch.save(state_dict(tiny_model, "float16", False), model / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    with pytest.raises(UserError, match="the legacy PyTorch format") as error:
        CPUBackend(model, CONTEXT)
    assert "torch.save(torch.load(" in str(error.value) and "\n" not in str(error.value)


def test_a_compressed_storage_is_refused(variant, tmp_path: Path) -> None:
    _, bin_dir, _ = variant
    source = next(bin_dir.glob("*.bin"))
    model = Path(shutil.copytree(bin_dir, tmp_path / "deflated"))
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(model / source.name, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            new.writestr(info.filename, old.read(info))
    with pytest.raises(UserError, match="is compressed or encrypted; torch.save writes it stored"):
        CPUBackend(model, CONTEXT)


LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize 251000000\n".format("ab" * 32)


@pytest.mark.parametrize("layout", ["bin", "safetensors"])
@pytest.mark.parametrize("command", ["chat", "convert"])
def test_git_lfs_pointers_instead_of_weights_are_one_line_naming_git_lfs_pull(
    variant, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, layout: str
) -> None:
    _, bin_dir, twin_dir = variant
    model = Path(shutil.copytree(bin_dir if layout == "bin" else twin_dir, tmp_path / "clone"))
    for weights in [*model.glob("*.bin"), *model.glob("*.safetensors")]:
        weights.write_text(LFS_POINTER)
    args = ["-p", "Hi"] if command == "chat" else ["convert", "--out", str(tmp_path / "out"), "--mode", "f16"]
    argv = ["--model", str(model), *args] if command == "chat" else [args[0], "--model", str(model), *args[1:]]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "a Git LFS pointer, not the weights" in error, error
    assert f"run `git lfs pull` in {model}" in error


def test_the_cpu_backend_holds_the_float32_model_once_reading_one_layer_at_a_time(tmp_path: Path) -> None:
    """Loading allocates the model it keeps plus about one layer, not the file's tensors and their copies."""
    from tiny import make_model

    source = make_model(tmp_path / "source", tokenizer=False, vocab_size=512, hidden_size=256, ffn_dim=1024,
                        num_hidden_layers=8, num_attention_heads=4)  # fmt: skip
    bin_dir, _ = save_variant(source, tmp_path / "hub", "float16", shards=2, hub_names=True)
    layer_bytes = (4 * 256 * 256 + 2 * 256 * 1024) * 4  # one layer's matrices in float32: 3 MiB of the model's 26
    tracemalloc.start()
    try:
        backend = CPUBackend(bin_dir, CONTEXT)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    model_bytes = sum(a.nbytes for lw in backend.model.layers for a in vars(lw).values())
    assert kept >= model_bytes > 8 * layer_bytes
    assert peak - kept < layer_bytes, f"loading peaked {(peak - kept) / 2**20:.1f} MiB above what it keeps"


@pytest.fixture(scope="session")
def converted_variant(simulator: None, variant, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The variant's .bin and its safetensors twin, each converted at f16 (converted model directories)."""
    from opt_tpu_tui.convert.build import convert

    name, bin_dir, twin_dir = variant
    out = tmp_path_factory.mktemp(f"converted-{name}")
    return tuple(  # type: ignore[return-value]
        convert(source, out / kind, "f16", context=CONTEXT, chunk=8, windows=[CONTEXT], log=lambda _: None)
        for kind, source in (("bin", bin_dir), ("twin", twin_dir))
    )


TOLERANCE = 0.01  # of the logits' largest magnitude: float16 weights and activations (tests/test_tpu_backend.py)


def tpu_logits(converted: Path) -> list[np.ndarray]:
    """The converted model's logits (simulator, bmrt) after a prefill of 6 tokens and after one decode step."""
    from opt_tpu_tui.backends import open_backend

    backend = open_backend(converted, "bmrt")  # one at a time: the runtime is shared within the process
    try:
        return [backend.prefill(PROMPT[:6]).copy(), backend.decode(PROMPT[6]).copy()]
    finally:
        backend.close()


def test_convert_gives_the_logits_of_the_twin_and_of_transformers(converted_variant, variant) -> None:
    _, bin_dir, _ = variant
    expected = transformers_logits(bin_dir, PROMPT)[5:7]
    from_bin, from_twin = (tpu_logits(d) for d in converted_variant)
    for got, twin, want in zip(from_bin, from_twin, expected):
        assert np.array_equal(got, twin)
        assert np.abs(got - want).max() <= TOLERANCE * np.abs(want).max()
        assert np.argmax(got) == np.argmax(want)


class RewritesATensor:
    """Pickles as torch's own tensor rebuild followed by a BUILD that rewrites the tensor's fields."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def __reduce__(self):  # noqa: ANN204
        storage = torch.ones(4).storage()  # a TypedStorage: torch.save gives it a persistent id, as for a tensor
        return torch._utils._rebuild_tensor_v2, (storage, 0, (4,), (1,), False, collections.OrderedDict()), self.state


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
@pytest.mark.parametrize("state", [{"shape": "abcd"}, {"offset": -8}, {"shape": (4, 10**12)}, {"storage": 3}])
def test_a_tensor_rewritten_after_it_is_built_is_refused(tmp_path: Path, state: dict) -> None:
    torch.save({"good": torch.zeros(2), "rewritten": RewritesATensor(state)}, tmp_path / "t.bin")
    with pytest.raises(UserError, match="t.bin: its pickle is not a state dict of named tensors"):
        read_torch_zip(tmp_path / "t.bin")
