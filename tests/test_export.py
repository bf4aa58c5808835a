"""Conversations as Markdown (``opt-tpu-tui export`` and the app's keys) and the copy helpers."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from tui_support import make_app, ready, script_ids, send, wait_until

from opt_tpu_tui import cli, paths
from opt_tpu_tui.chat import Turn
from opt_tpu_tui.export import conversation_markdown, last_code_block
from opt_tpu_tui.history import HistoryStore
from opt_tpu_tui.tokenizer import Tokenizer

CODE_REPLY = "Like this:\n\n```python\nprint('hi')\n```\n\nor this:\n\n~~~\nls -l\n~~~\n"


def saved(turns: list[tuple[str, str]]) -> int:
    store, _ = HistoryStore.open()
    cid = store.create_conversation(turns[0][0])
    for user, assistant in turns:
        store.save_reply(store.add_turn(cid, user), assistant, complete=True)
    store.close()
    return cid


def test_last_code_block_takes_the_body_of_the_last_fence() -> None:
    assert last_code_block(CODE_REPLY) == "ls -l\n"
    assert last_code_block("```python\nprint('hi')\n```") == "print('hi')\n"
    assert last_code_block("no code here, just `inline`") is None


def test_export_last_writes_markdown_privately(capsys: pytest.CaptureFixture[str]) -> None:
    saved([("First question", "First answer")])
    cid = saved([("How do I list files?", CODE_REPLY), ("Thanks", "You are welcome.")])
    assert cli.main(["export", "--last"]) == 0
    path = paths.data_dir() / "exports" / f"conversation-{cid}.md"
    assert capsys.readouterr().out.strip() == str(path)
    text = path.read_text()
    assert text.startswith("# How do I list files?\n")
    assert text.index("How do I list files?", 5) < text.index("```python") < text.index("Thanks") < text.index("You are welcome.")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_export_an_id_to_stdout_and_a_missing_one_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    cid = saved([("Hello", "Hi there")])
    assert cli.main(["export", str(cid), "-o", "-"]) == 0
    assert capsys.readouterr().out == conversation_markdown("Hello", [Turn("Hello", "Hi there")], _updated(cid))
    assert cli.main(["export", str(cid + 1)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no conversation {cid + 1}" in err


def _updated(cid: int) -> float:
    store, _ = HistoryStore.open()
    try:
        return next(c.updated for c in store.list_conversations() if c.id == cid)
    finally:
        store.close()


@pytest.mark.anyio
async def test_the_app_copies_the_reply_and_its_code_and_exports(tiny_model: Path) -> None:
    tokenizer = Tokenizer.from_dir(tiny_model)
    app, _ = make_app(tokenizer, script=script_ids(tokenizer, CODE_REPLY))
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        await pilot.press("f5")  # nothing to copy yet: refused, nothing written
        assert not (paths.data_dir() / "clipboard.txt").exists()
        await send(pilot, "show me code")
        reply = app.screen.conversation.turns[-1].assistant
        assert "```python" in reply
        await pilot.press("f5")
        await wait_until(pilot, lambda: app.clipboard == reply)
        assert (paths.data_dir() / "clipboard.txt").read_text() == reply
        await pilot.press("f8")
        await wait_until(pilot, lambda: app.clipboard == "ls -l\n")
        await pilot.press("f9")
        path = paths.data_dir() / "exports" / f"conversation-{app.screen.conversation.id}.md"
        await wait_until(pilot, path.exists)
        assert "show me code" in path.read_text() and "print('hi')" in path.read_text()


def test_export_from_a_history_found_damaged_is_one_line_and_the_file_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    for n in range(2):
        saved([(f"question {n}.{i} " + "x" * 300, "answer " + "y" * 300) for i in range(20)])
    path = paths.history_file()
    data = bytearray(path.read_bytes())
    data[4096::97] = b"\xab" * len(data[4096::97])  # damaged pages behind an intact header
    path.write_bytes(data)
    assert cli.main(["export", "--last"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged" in err and "Traceback" not in err
    assert path.read_bytes() == data  # kept as it is; the next start sets it aside
