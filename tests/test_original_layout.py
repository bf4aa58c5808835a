"""Chatting with a bmodel built by the original OPT-TPU project's recipe (issue 13), in the BM1684X simulator.

The bmodel is built for a tiny OPT the original way (``original_build``: torch ONNX export
of its nets, tpu-mlir's own model_transform.py / model_deploy.py with compile.sh's flags,
model_tool --combine), so what the backend is checked against is TPU-MLIR's compilation of
those graphs, and the tokens are checked against the numpy backend on the checkpoint. The
model directory holds what a GIT_LFS_SKIP_SMUDGE clone holds: config.json, vocab.json,
merges.txt, and the bmodel; no weights, no manifest.

The original's sequence length, 512, is kept: a prefill runs 512 rows (about 6 s in the
simulator), a decode step about 0.6 s.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from quantized import quantized_weights
from tiny import make_model, torch_and_transformers

from opt_tpu_tui import toolchain
from opt_tpu_tui.backends import open_backend, pick_backend
from opt_tpu_tui.backends.cpu import CPUBackend
from opt_tpu_tui.backends.original import NewTurn, OriginalBackend
from opt_tpu_tui.cli import GREEDY_NOTICE, main
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.model import load_weights
from opt_tpu_tui.model.checkpoint import OPTWeights
from opt_tpu_tui.model.forward import OPTModel
from opt_tpu_tui.tokenizer import Tokenizer

SEQ = 512
CLONE_FILES = ("config.json", "vocab.json", "merges.txt")  # what a GIT_LFS_SKIP_SMUDGE clone holds for real
TURNS = ["Hello world, this is", "What is the capital of France?"]
GREEDY = ["--temperature", "0", "--repetition-penalty", "1", "--max-new-tokens", "16"]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch_and_transformers()  # the export needs torch, and its checkpoint transformers
    return make_model(tmp_path_factory.mktemp("original") / "opt-tiny", max_position_embeddings=SEQ)


@pytest.fixture(scope="session")
def built(simulator: None, checkpoint: Path) -> Callable[[str], Path]:
    """built(mode): the original-layout bmodel of the tiny OPT (cached in the user cache across runs)."""
    import original_build

    done: dict[str, Path] = {}

    def get(mode: str) -> Path:
        if mode not in done:
            try:
                done[mode] = original_build.build(checkpoint, mode, SEQ)
            except original_build.BuildUnavailable as error:
                pytest.skip(str(error))
        return done[mode]

    return get


def clone(folder: Path, checkpoint: Path, bmodel: Path) -> Path:
    """A folder as an OPT-TPU user has it: the clone's real files and the bmodel."""
    folder.mkdir(parents=True)
    for name in CLONE_FILES:
        shutil.copy(checkpoint / name, folder / name)
    shutil.copy(bmodel, folder / bmodel.name)
    return folder


@pytest.fixture(scope="session")
def clone_dir(built, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    done: dict[str, Path] = {}

    def get(mode: str) -> Path:
        if mode not in done:
            done[mode] = clone(tmp_path_factory.mktemp("clone") / f"opt-tiny-{mode}", checkpoint, built(mode))
        return done[mode]

    return get


def replies(out: str) -> list[str]:
    return re.findall(r"bot> (.*)", out)


def chat(model: Path, backend: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """Two turns of ``opt-tpu-tui --model model --backend backend -c``, messages piped in; (stdout, stderr)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{message}\n" for message in TURNS)))
    capsys.readouterr()
    assert main(["--model", str(model), "--backend", backend, "-c", *GREEDY]) == 0
    return capsys.readouterr()


@pytest.mark.slow
def test_the_cli_chats_two_turns_with_the_numpy_backend_s_greedy_tokens(
    clone_dir, checkpoint: Path, tpu_kind: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    want_out, _ = chat(checkpoint, "cpu", monkeypatch, capsys)
    got_out, got_err = chat(clone_dir("f16"), tpu_kind, monkeypatch, capsys)
    assert len(replies(want_out)) == 2 and all(replies(want_out))
    assert replies(got_out) == replies(want_out)
    assert GREEDY_NOTICE in got_err
    assert got_err.count("16 new") == 2  # both replies ran to --max-new-tokens: 16 tokens each


def greedy_tokens(backend, ids: list[int], steps: int) -> list[int]:
    """The greedy continuation on ``backend``: token ids (an OPT-TPU model) or the argmax of logits."""
    out = backend.prefill(ids)
    tokens = []
    for _ in range(steps):
        tokens.append(int(out) if np.ndim(out) == 0 else int(np.argmax(out)))
        out = backend.decode(tokens[-1])
    return tokens


@pytest.mark.slow
def test_a_new_turn_by_decode_steps_or_by_a_new_prefill_gives_the_same_tokens(clone_dir, checkpoint: Path) -> None:
    """Both ways a turn can run, on prompts that keep all, or only part, of what the cache holds."""
    tokenizer = Tokenizer.from_dir(checkpoint)
    first = tokenizer.encode(TURNS[0])
    reply = greedy_tokens(CPUBackend(checkpoint, SEQ), first, 4)
    second = first + reply[:3] + tokenizer.encode(" and more")  # the cache also holds reply[3]: masked from now on
    reference = CPUBackend(checkpoint, SEQ)
    want = [greedy_tokens(reference, first, 4), greedy_tokens(reference, second, 3)]
    kept = reference.reused
    results = {}
    for name, turn in {"decode": NewTurn(0.0, 1.0), "prefill": NewTurn(1.0, 0.0)}.items():
        tpu = open_backend(clone_dir("f16"), "bmrt")
        assert isinstance(tpu, OriginalBackend)
        tpu.new_turn = turn
        try:
            results[name] = [greedy_tokens(tpu, first, 4), greedy_tokens(tpu, second, 3)]
            results[name + " reused"] = tpu.reused
        finally:
            tpu.close()
    assert results["decode"] == results["prefill"] == want
    assert (results["decode reused"], results["prefill reused"]) == (kept, 0) and kept >= len(first) + 3


@pytest.mark.slow
def test_the_kv_cache_never_crosses_to_the_host(clone_dir, checkpoint: Path) -> None:
    """Prefill writes the K/V right-aligned from the nets themselves, decode shifts it with splitkv: no copies,
    no launch but the nets', and the host sends ids, positions and masks and reads the token back only."""
    tpu = open_backend(clone_dir("f16"), "bmrt")
    driver, launched, sent, read = tpu.driver, [], [], []
    launch, upload, download = driver.launch, driver.upload, driver.download
    driver.launch = lambda net, inputs, outputs: (launched.append(net), launch(net, inputs, outputs))[1]
    driver.upload = lambda buffer, array: (sent.append(buffer.mem.addr), upload(buffer, array))[1]
    driver.download = lambda buffer, array: (read.append((buffer.mem.addr, array.nbytes)), download(buffer, array))[1]
    try:
        tpu.prefill(Tokenizer.from_dir(checkpoint).encode(TURNS[0]))
        tpu.decode(42)
        cache = {buffer.mem.addr for buffer in tpu.k + tpu.v}
    finally:
        tpu.close()
    layers = ["block_0", "block_1"]
    assert launched == ["embedding", *layers, "lm_head", "embedding"] + [
        net for i in range(2) for net in (f"block_cache_{i}", "splitkv")
    ] + ["lm_head"]  # fmt: skip
    assert len(sent) == 3 + 3 and not cache & set(sent)  # ids, positions, mask per run; never the cache
    assert [nbytes for _, nbytes in read] == [4, 4] and not cache & {addr for addr, _ in read}  # the token id


def test_the_roofline_runs_a_long_turn_of_opt_6_7b_as_a_prefill_and_a_short_one_by_decoding() -> None:
    from opt_tpu_tui.original_layout import Sizes

    sizes = Sizes(layers=32, hidden=4096, heads=32, head_dim=128, seq=512)
    int4 = NewTurn.roofline(sizes, 4_900_000_000)  # opt-7b_int4.bmodel's size, about
    assert int4.decode_is_faster(3) and not int4.decode_is_faster(12)


# tpu-mlir 1.30's model_deploy.py quantises W8F16 and W4F16 in groups of 64 along K unless told otherwise
# (--q_group_size), and compile.sh does not tell it (the older tpu-mlir of the original quantised per channel)
DEPLOY_GROUP = 64


def quantised_blocks(weights: OPTWeights, bits: int) -> OPTWeights:
    """The weights the bmodel computes with: blocks quantised as model_deploy does, lm_head F32 as compile.sh has it."""
    return replace(quantized_weights(weights, bits, DEPLOY_GROUP), lm_head=weights.lm_head)


TOLERANCE = 0.01  # of the logits' largest magnitude: the TPU's token may lose to the reference's by this much


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantised_blocks_pick_the_tokens_of_numpy_on_the_same_quantised_weights(
    clone_dir, checkpoint: Path, mode: str
) -> None:
    """Teacher-forced: at each step the TPU's token has, under the quantised numpy model, a logit within
    TOLERANCE of the best one; most steps it is the best one."""
    weights = load_weights(checkpoint)
    reference = OPTModel(quantised_blocks(weights, 8 if mode == "int8" else 4), SEQ)
    ids = Tokenizer.from_dir(checkpoint).encode(TURNS[0])
    tpu = open_backend(clone_dir(mode), "bmrt")
    try:
        picked, logits = [tpu.prefill(ids)], [reference.prefill(ids).copy()]
        for _ in range(5):
            forced = int(np.argmax(logits[-1]))
            picked.append(tpu.decode(forced))
            logits.append(reference.decode(forced).copy())
    finally:
        tpu.close()
    for token, row in zip(picked, logits):
        assert row.max() - row[token] <= TOLERANCE * np.abs(row).max()
    assert sum(token == int(np.argmax(row)) for token, row in zip(picked, logits)) >= len(picked) - 1


@pytest.mark.slow
def test_generation_stops_at_the_512_tokens_of_the_cache(clone_dir, checkpoint: Path) -> None:
    from opt_tpu_tui.generation import Generation
    from opt_tpu_tui.sampling import SamplingSettings

    tpu = open_backend(clone_dir("f16"), "bmrt")
    tokenizer = Tokenizer.from_dir(checkpoint)
    try:
        run = Generation(tpu, tokenizer, [40 + i % 300 for i in range(SEQ - 3)], SamplingSettings(max_new_tokens=16))
        list(run)
        assert (run.stats.stop_reason, run.stats.new_tokens, tpu.length) == ("context", 4, SEQ)
        with pytest.raises(UserError, match="context overflow"):
            tpu.decode(run.tokens[-1])
    finally:
        tpu.close()


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("opt-tpu-tui: error: "), err
    return err


@pytest.mark.parametrize(
    "left_out, said", [("splitkv", "has no net splitkv"), ("embedding_1", "embedding has stages for [512] tokens")]
)
def test_a_bmodel_missing_a_net_is_one_clear_line(
    built, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], left_out: str, said: str
) -> None:
    """Combined from the nets as compiled, but one (or the embedding's 1-token stage)."""
    nets = sorted((built("f16").parent / "nets").glob("*.bmodel"))
    partial = tmp_path / "opt-tiny.bmodel"
    toolchain.combine([n for n in nets if n.stem != left_out], partial, tmp_path / "scratch")
    model = clone(tmp_path / "clone", checkpoint, partial)
    err = one_line_error(["--model", str(model), "--backend", "bmrt", "-p", "hi"], capsys)
    assert said in err and str(model / partial.name) in err


def test_a_config_that_contradicts_the_bmodel_s_shapes_is_one_clear_line(
    clone_dir, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "clone"
    shutil.copytree(clone_dir("f16"), model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "num_attention_heads": 8}))
    err = one_line_error(["--model", str(model), "--backend", "bmrt", "-p", "hi"], capsys)
    assert "num_attention_heads 4" in err and "says 8" in err


def test_auto_picks_sail_for_an_original_bmodel(clone_dir, real_sail) -> None:
    assert pick_backend(clone_dir("f16")) == "sail"


def test_without_config_json_the_sizes_come_from_the_nets(clone_dir, tmp_path: Path) -> None:
    model = tmp_path / "clone"
    shutil.copytree(clone_dir("f16"), model)
    (model / "config.json").unlink()
    tpu = open_backend(model, "bmrt")
    try:
        assert (tpu.sizes.layers, tpu.sizes.hidden, tpu.sizes.heads, tpu.sizes.seq) == (2, 64, 4, SEQ)
        assert tpu.context_length == SEQ and tpu.vocab_size == len(json.loads((model / "vocab.json").read_text()))
    finally:
        tpu.close()


def test_several_bmodels_in_the_folder_are_one_clear_line(clone_dir, tmp_path: Path) -> None:
    model = tmp_path / "clone"
    shutil.copytree(clone_dir("f16"), model)
    shutil.copy(model / "opt-tiny.bmodel", model / "opt-tiny_int4.bmodel")
    with pytest.raises(UserError, match="holds 2 bmodels"):
        open_backend(model, "bmrt")
