"""``opt-tpu-tui doctor``: on this machine (the simulator, the real sail), and on trees shaped like a box's.

The box tests point ``box.ROOTS`` at temporary ``/sys``, ``/proc`` and ``/opt/sophon`` trees
laid out as libsophon's driver makes them (``opt_tpu_tui/box.py`` says where each file
comes from), with the simulator hidden, so each failing check and its fix line is seen.
The models are the tiny converted ones of ``test_tpu_backend`` (its session fixtures), and
the OPT-TPU bmodel ``test_original_layout`` builds the original project's way.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
from device_memory import build_shim, measure
from test_original_layout import SEQ, built, checkpoint, clone_dir  # noqa: F401 - the OPT-TPU bmodel, built once
from test_tpu_backend import checkpoints, converted  # noqa: F401 - the session fixtures that convert once

from opt_tpu_tui import box, doctor
from opt_tpu_tui.cli import main

MiB = 2**20


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = main(["doctor", "--json", *argv])
    out = capsys.readouterr().out
    return code, json.loads(out)


def checks_by_name(report: dict) -> dict[str, dict]:
    return {check["name"]: check for check in report["checks"]}


# -- this machine ---------------------------------------------------------------------------------------------


def test_doctor_reports_the_simulator_its_libraries_and_the_real_sail(
    simulator: None, real_sail, capsys: pytest.CaptureFixture[str]
) -> None:
    from opt_tpu_tui import toolchain

    code, report = run_json(capsys)
    facts = report["box"]
    assert facts["platform"] == "simulator" and facts["chip"] == "BM1684X"
    assert facts["runtime"]["path"] == str(toolchain.root() / "lib")
    assert facts["sail"]["installed"] and facts["sail"]["engine_llm"]
    assert facts["sail"]["path"] == real_sail.__file__
    assert "tpu-mlir" in facts["sail"]["libbmrt"] or "tpu_mlir" in facts["sail"]["libbmrt"]  # built against the wheel's
    assert facts["memory"]["total"] is None and "simulator" in facts["memory"]["problems"][0]
    assert code == 0
    main(["doctor"])  # the text form says the same
    text = capsys.readouterr().out
    assert "simulator" in text and real_sail.__version__ in text and "Traceback" not in text


@pytest.mark.parametrize("mode", ["f16", "int8", "int4"])
def test_doctor_computes_the_device_memory_the_simulator_measures(
    converted, mode: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    """From the bmodel's header and the manifest only; the reference counts bmlib's allocations (device_memory.py)."""
    model_dir = converted("pre-ln", mode)
    code, report = run_json(capsys, "--model", str(model_dir))
    needs = report["model"]
    measured = measure(model_dir, build_shim(tmp_path), "bmrt")
    assert needs["device_memory"] == pytest.approx(measured["backend_open"], rel=0.05)
    assert needs["device_memory_unshared"] - needs["buffers"] == pytest.approx(measured["runtime_unshared"], rel=0.05)
    assert needs["chip"] == "BM1684X" and needs["tpu_mlir"] and needs["precision"].startswith({"f16": "F", "int8": "W8", "int4": "W4"}[mode])
    assert checks_by_name(report)["chip"]["ok"] is True and code == 0


def put_checkpoint_beside(converted_dir: Path, checkpoint: Path, where: Path) -> Path:
    """A copy of the converted model in ``where``, with its source checkpoint beside it under the manifest's name."""
    model = where / "model"
    shutil.copytree(converted_dir, model)
    (where / json.loads((model / "manifest.json").read_text())["source"]).symlink_to(checkpoint)
    return model


def test_run_decodes_the_cpu_backends_greedy_tokens(
    converted, checkpoints, tpu_kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    model = put_checkpoint_beside(converted("pre-ln", "f16"), checkpoints["pre-ln"], tmp_path)
    code, report = run_json(capsys, "--model", str(model), "--run", "--backend", tpu_kind)
    run = report["run"]
    assert run["backend"] == tpu_kind and len(run["tokens"]) == doctor.RUN_TOKENS
    assert run["tokens"] == run["cpu_tokens"]
    assert run["load_seconds"] > 0 and run["first_token_seconds"] > 0 and run["tokens_per_second"] > 0
    assert checks_by_name(report)["run"]["ok"] is True and code == 0


def test_run_says_when_tokens_differ_and_exits_1(
    converted, checkpoints, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    """The CPU reference beside it is another model (post-LN): the tokens differ, which an f16 model must not."""
    model = put_checkpoint_beside(converted("pre-ln", "f16"), checkpoints["post-ln"], tmp_path)
    code, report = run_json(capsys, "--model", str(model), "--run", "--backend", "bmrt")
    check = checks_by_name(report)["run"]
    if report["run"]["tokens"] == report["run"]["cpu_tokens"]:
        pytest.skip("the two random models happen to agree")
    assert check["ok"] is False and "differs" in check["detail"] and check["fix"] and code == 1


@pytest.mark.slow
def test_doctor_computes_the_device_memory_the_simulator_measures_for_an_opt_tpu_bmodel(
    clone_dir, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    """The sizes from the nets' shapes in the header (no manifest, no weights); bmlib's allocations the reference."""
    model_dir = clone_dir("f16")
    code, report = run_json(capsys, "--model", str(model_dir))
    needs = report["model"]
    assert (needs["kind"], needs["context"], needs["precision"]) == ("original", SEQ, "F16")
    measured = measure(model_dir, build_shim(tmp_path), "bmrt")
    assert needs["device_memory"] == pytest.approx(measured["backend_open"], rel=0.05)
    assert needs["device_memory_unshared"] - needs["buffers"] == pytest.approx(measured["runtime_unshared"], rel=0.05)
    # the backend's own buffers (the KV cache above all) alone: a small share of the total for this tiny model
    assert needs["buffers"] == pytest.approx(measured["backend_open"] - measured["runtime_shared"], rel=0.05)
    assert needs["chip"] == "BM1684X" and checks_by_name(report)["chip"]["ok"] is True and code == 0


def opt_tpu_clone_with_weights(clone: Path, checkpoint: Path, where: Path) -> Path:  # noqa: F811
    """The OPT-TPU folder as a clone that fetched its LFS files has it: the checkpoint's weights beside the bmodel."""
    model = where / "opt-tpu"
    shutil.copytree(clone, model)
    for weights in checkpoint.glob("*.safetensors"):
        (model / weights.name).symlink_to(weights)
    return model


@pytest.mark.slow
def test_run_on_an_opt_tpu_bmodel_decodes_the_cpu_backends_greedy_tokens(
    clone_dir, checkpoint: Path, tpu_kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    model = opt_tpu_clone_with_weights(clone_dir("f16"), checkpoint, tmp_path)
    code, report = run_json(capsys, "--model", str(model), "--run", "--backend", tpu_kind)
    run = report["run"]
    assert run["backend"] == tpu_kind and len(run["tokens"]) == doctor.RUN_TOKENS
    assert run["cpu_checkpoint"] == str(model) and run["tokens"] == run["cpu_tokens"]
    assert run["load_seconds"] > 0 and run["first_token_seconds"] > 0 and run["tokens_per_second"] > 0
    assert checks_by_name(report)["run"]["ok"] is True and code == 0


@pytest.mark.slow
def test_run_on_an_opt_tpu_clone_whose_weights_are_lfs_pointers_compares_with_nothing(
    clone_dir, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    """A GIT_LFS_SKIP_SMUDGE clone, as OPT-TPU's users have it: the pointers are no checkpoint to run."""
    model = tmp_path / "opt-tpu"
    shutil.copytree(clone_dir("f16"), model)
    (model / "pytorch_model.bin").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 13\n")
    code, report = run_json(capsys, "--model", str(model), "--run", "--backend", "bmrt")
    check = checks_by_name(report)["run"]
    assert len(report["run"]["tokens"]) == doctor.RUN_TOKENS and "cpu_tokens" not in report["run"]
    assert check["ok"] is True and "no CPU checkpoint" in check["detail"] and code == 0


@pytest.mark.slow
@pytest.mark.parametrize("name, ok, exit_code", [("opt-tiny.bmodel", False, 1), ("opt-tiny_int8.bmodel", None, 0)])
def test_run_on_an_opt_tpu_bmodel_judges_differing_tokens_by_its_precision(
    clone_dir, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, ok: bool | None, exit_code: int  # noqa: F811
) -> None:
    """Weights of another seed beside it: the tokens differ, a failure for an F16 bmodel, to be expected of an int8 one."""
    from tiny import make_model

    other = make_model(tmp_path / "other", seed=1, max_position_embeddings=SEQ)
    model = opt_tpu_clone_with_weights(clone_dir("f16"), other, tmp_path)
    (model / "opt-tiny.bmodel").rename(model / name)
    code, report = run_json(capsys, "--model", str(model), "--run", "--backend", "bmrt")
    if report["run"]["tokens"] == report["run"]["cpu_tokens"]:
        pytest.skip("the two random models happen to agree")
    check = checks_by_name(report)["run"]
    assert check["ok"] is ok and "differs" in check["detail"] and code == exit_code


# -- trees shaped like a box's --------------------------------------------------------------------------------


def write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def libsophon(base: Path, version: str) -> Path:
    real = base / f"opt/sophon/libsophon-{version}"
    for name in ("lib/libbmrt.so", "lib/libbmlib.so.0"):
        write(real / name, "not a library")  # libbmlib fails to load: its figures are a line saying so
    (base / "opt/sophon/libsophon-current").symlink_to(real)
    return base / "opt/sophon/libsophon-current"


def region(proc: Path, name: str, compatible: str, size: int) -> None:
    node = proc / "device-tree/reserved-memory" / name
    write(node / "compatible", compatible + "\0")
    write(node / "reg", (0x1_0510_0000).to_bytes(8, "big") + size.to_bytes(8, "big"))


def soc_tree(base: Path, npu: int, npu_used: int = 0, version: str = "0.5.1") -> box.Roots:
    """A BM1684X SoC: bm-tpu class, bmtpu module, device-tree carve-outs, ion's summaries (as root sees them)."""
    sys_, proc = base / "sys", base / "proc"
    write(sys_ / "class/bm-tpu/bm-tpu0/device/npu_usage", "usage:0 avusage:0\n")
    write(sys_ / "module/bmtpu/version", f"{version}\n")
    write(proc / "bmsophon/card_num", "1\n")
    write(proc / "device-tree/compatible", "bitmain,bm1684x\0")
    for name, size, used in (("npu", npu, npu_used), ("vpu", 2048 * MiB, 0), ("vpp", 3072 * MiB, 0)):
        region(proc, f"ion_{name}_mem", f"{name}-region", size if name != "npu" else npu)
        summary = f"[2] {name} heap size:{size} bytes, used:{used} bytes        usage rate:0%, memory usage peak 0 bytes\n"
        write(sys_ / f"kernel/debug/ion/bm_{name}_heap_dump/summary", summary)
    return box.Roots(sys_, proc, libsophon(base, version))


def pcie_tree(base: Path, chipid: str = "0x1684x", version: str = "0.5.1", driver: str = "0.5.1",
              heap: int = 4096 * MiB) -> box.Roots:  # fmt: skip
    """A PCIe host with one card: bm-sophon class, /proc/bmsophon/card0/bmsophon0 with its heap file."""
    sys_, proc = base / "sys", base / "proc"
    write(sys_ / "class/bm-sophon/bm-sophon0/device/npu_usage", '"usage": 0, "avusage": 0\n')
    write(proc / "bmsophon/driver_version", f"release version:{driver}   release date: 20240315-101010\n")
    write(proc / "bmsophon/card0/chipid", chipid + "\n")
    write(proc / "bmsophon/card0/mode", "pcie\n")
    write(proc / "bmsophon/card0/bmsophon0/heap",
          f"heap0, size = 0x{heap:x}, start_addr =0x100000000\nheap1, size = 0x0, start_addr =0x0\n"
          f"heap2, size = 0x{heap // 2:x}, start_addr =0x300000000\n")  # fmt: skip
    return box.Roots(sys_, proc, libsophon(base, version))


@pytest.fixture
def on_box(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Point doctor at a box tree: its roots, no simulator, no sail (unless a test gives one)."""

    def use(roots: box.Roots, sail: object = None) -> None:
        monkeypatch.setattr(box, "ROOTS", roots)
        monkeypatch.setattr(doctor, "simulator_dir", lambda: (None, "no tpu-mlir here"))
        monkeypatch.delenv("OPT_TPU_TUI_BMRT_LIB", raising=False)
        monkeypatch.setitem(sys.modules, "sophon", None if sail is None else types.ModuleType("sophon"))
        monkeypatch.setitem(sys.modules, "sophon.sail", sail)

    return use


def fake_sail() -> types.ModuleType:
    sail = types.ModuleType("sophon.sail")
    sail.__version__ = "3.10.7"  # type: ignore[attr-defined]
    sail.EngineLLM = object  # type: ignore[attr-defined]
    return sail


def test_a_pcie_box_where_all_is_well_exits_0(
    converted, on_box, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    on_box(pcie_tree(tmp_path), fake_sail())
    code, report = run_json(capsys, "--model", str(converted("pre-ln", "f16")))
    facts = report["box"]
    assert (facts["platform"], facts["chip"], facts["driver"]["version"]) == ("pcie", "BM1684X", "0.5.1")
    assert facts["libsophon"]["version"] == "0.5.1" and facts["devices"] == [0]
    assert facts["memory"]["total"] == 6144 * MiB and [h["name"] for h in facts["memory"]["heaps"]] == ["heap0", "heap2"]
    assert any(p.startswith("libbmlib") for p in facts["memory"]["problems"])  # the library did not load: said so
    assert all(c["ok"] is not False for c in report["checks"]), report["checks"]
    assert checks_by_name(report)["backend"]["detail"].startswith("auto picks sail")
    assert code == 0


def test_a_model_larger_than_the_free_memory_of_a_soc_gives_the_memory_edit_command(
    converted, on_box, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    model = converted("pre-ln", "f16")
    needs = doctor.model_needs(model)
    # the vpu and vpp heaps are busy and the npu heap's 4 KiB of room past the model is taken: it does not fit
    roots = soc_tree(tmp_path, npu=needs["device_memory"] + 4096, npu_used=0)
    write(roots.sys / "kernel/debug/ion/bm_vpu_heap_dump/summary", f"vpu heap size:{2048 * MiB} bytes, used:{2048 * MiB} bytes\n")
    write(roots.sys / "kernel/debug/ion/bm_vpp_heap_dump/summary", f"vpp heap size:{3072 * MiB} bytes, used:{3072 * MiB} bytes\n")
    write(roots.sys / "kernel/debug/ion/bm_npu_heap_dump/summary", "npu heap size:1 bytes, used:8192 bytes\n")
    on_box(roots)
    code, report = run_json(capsys, "--model", str(model))
    assert report["box"]["platform"] == "soc" and report["box"]["chip"] == "BM1684X"
    assert report["box"]["driver"] == {"version": "0.5.1", "source": str(roots.sys / "module/bmtpu/version")}
    check = checks_by_name(report)["device memory"]
    assert check["ok"] is False and code == 1
    assert "memory_edit.sh -c -npu " in check["fix"] and "-vpu 2048 -vpp 3072" in check["fix"]
    main(["doctor", "--model", str(model)])
    text = capsys.readouterr().out
    assert "[FAIL] device memory" in text and "fix: enlarge the TPU's heap" in text and "memory_edit.sh -c" in text


def test_libsophon_too_old_fails_with_the_upgrade_to_make(
    converted, on_box, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    on_box(pcie_tree(tmp_path, version="0.4.6", driver="0.4.6"))
    code, report = run_json(capsys, "--model", str(converted("pre-ln", "f16")))
    check = checks_by_name(report)["libsophon"]
    assert check["ok"] is False and "0.4.6 is older than 0.5.0" in check["detail"]
    assert "upgrade libsophon" in check["fix"] and code == 1


def test_a_driver_from_another_release_than_libsophon_fails(
    on_box, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    on_box(pcie_tree(tmp_path, version="0.5.1", driver="0.4.9"))
    code, report = run_json(capsys)
    check = checks_by_name(report)["libsophon"]
    assert check["ok"] is False and "sophon-driver 0.5.1" in check["fix"] and code == 1


def test_an_open_file_limit_too_low_for_engine_llm_gives_the_limit_to_set(
    converted, on_box, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    on_box(pcie_tree(tmp_path), fake_sail())
    monkeypatch.setattr(box, "open_file_limit", lambda: (32, 64))
    code, report = run_json(capsys, "--model", str(converted("pre-ln", "f16")))
    check = checks_by_name(report)["open files"]
    assert check["ok"] is False and code == 1
    assert "ulimit -Hn" in check["fix"] and "falls back to sail.Engine" in check["fix"]
    needs = report["model"]
    extra = needs["device_memory_unshared"] - needs["device_memory"]
    assert extra > 0 and doctor.mib(extra) in check["fix"]


def test_a_bmodel_for_another_chip_fails_the_chip_check(
    converted, on_box, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    on_box(pcie_tree(tmp_path, chipid="0x1684"))  # a BM1684 card; the model is for the BM1684X
    code, report = run_json(capsys, "--model", str(converted("pre-ln", "f16")))
    check = checks_by_name(report)["chip"]
    assert check["ok"] is False and "BM1684X" in check["detail"] and "BM1684" in check["detail"]
    assert check["fix"] and code == 1


def test_missing_and_unreadable_sources_are_lines_not_tracebacks(
    converted, on_box, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    roots = box.Roots(tmp_path / "sys", tmp_path / "proc", tmp_path / "opt/sophon/libsophon-current")
    (roots.proc / "bmsophon/card0/bmsophon0/heap").mkdir(parents=True)  # a folder where a file should be
    write(roots.proc / "bmsophon/card0/chipid", "0x9999\n")  # names no chip
    on_box(roots)
    model = tmp_path / "broken"
    shutil.copytree(converted("pre-ln", "f16"), model)
    (model / "model.bmodel").write_bytes(b"\xee\xaa\x55\xff" + b"\0" * 12)  # a bmodel header with nothing after it
    code = main(["doctor", "--model", str(model)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    text = captured.out
    assert f"no {roots.libsophon}" in text
    assert str(roots.proc / "bmsophon/card0/bmsophon0/heap") in text  # the unreadable heap file, named
    assert "names no Sophgo chip" in text and "no " + str(roots.proc / "bmsophon/driver_version") in text
    assert "cannot read its header" in text and "[FAIL] model" in text
    assert code == 1


def test_a_missing_model_directory_and_a_bad_device_index(on_box, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    on_box(pcie_tree(tmp_path))
    assert main(["doctor", "--model", str(tmp_path / "nowhere")]) == 1
    assert "no such model directory" in capsys.readouterr().out
    assert main(["doctor", "--device", "-1"]) == 2
    assert "opt-tpu-tui: error: --device -1" in capsys.readouterr().err
