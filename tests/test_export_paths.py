"""Where ``opt-tpu-tui export`` writes: a terminal (model text made safe), a pipe (byte-exact), or a named file
(never replaced unasked, never a device, a FIFO or a folder)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
import tmux
from files_support import mode
from pty_child import PtyChild

from opt_tpu_tui import cli
from opt_tpu_tui.chat import Turn
from opt_tpu_tui.export import conversation_markdown
from opt_tpu_tui.history import HistoryStore

HOSTILE = (
    "Sure.\x1b]0;pwned-title\x07\x1b]52;c;UFdORUQ=\x07\x1b[2J"  # retitle, write the clipboard, clear the screen
    "\u202eevil\u202c and the rest"  # a right-to-left override around "evil"
)


def saved(user: str, assistant: str) -> tuple[int, str]:
    """A saved one-turn conversation: its id and its Markdown, as export writes it."""
    store, _ = HistoryStore.open()
    try:
        cid = store.create_conversation(user)
        store.save_reply(store.add_turn(cid, user), assistant, complete=True)
        updated = next(c.updated for c in store.list_conversations() if c.id == cid)
    finally:
        store.close()
    return cid, conversation_markdown(user, [Turn(user, assistant)], updated)


def export_command(*args: str) -> list[str]:
    return [tmux.SCRIPT, "export", *args]


@pytest.mark.skipif(not tmux.available(), reason="needs the installed opt-tpu-tui script")
def test_export_to_a_terminal_shows_the_models_control_characters_instead_of_obeying_them() -> None:
    cid, _ = saved("hello", HOSTILE)
    child = PtyChild(export_command(str(cid), "-o", "-"), {**os.environ, **tmux.app_env()})
    try:
        child.expect("and the rest")
        assert child.exit_code() == 0
    finally:
        child.close()
    shown = child.output.decode()
    assert "\x1b" not in shown and "\u202e" not in shown and "\u202c" not in shown
    assert "␛]0;pwned-title␇" in shown and "␛]52;c;UFdORUQ=␇" in shown and "␛[2J" in shown
    assert "<U+202E>evil<U+202C> and the rest" in shown


@pytest.mark.skipif(not tmux.available(), reason="needs the installed opt-tpu-tui script")
def test_export_to_a_pipe_is_byte_exact() -> None:
    cid, markdown = saved("hello", HOSTILE)
    result = subprocess.run(
        export_command(str(cid), "-o", "-"), env={**os.environ, **tmux.app_env()}, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == markdown.encode("utf-8") and b"\x1b]52;" in result.stdout


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["export", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code: int, err: str, *words: str) -> None:
    assert code == 2 and err.count("\n") == 1 and err.startswith("opt-tpu-tui: error: "), err
    assert all(word in err for word in words), err


def test_a_new_file_is_written_private(tmp_path: Path, capsys: pytest.CaptureFixture[str], umask_022: None) -> None:
    cid, markdown = saved("hello", "hi")
    target = tmp_path / "new.md"
    code, out, _ = run(capsys, str(cid), "-o", str(target))
    assert code == 0 and out == f"{target}\n"
    assert target.read_text() == markdown and mode(target) == 0o600


def test_an_existing_file_is_replaced_only_with_force_and_keeps_its_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cid, markdown = saved("hello", "hi")
    target = tmp_path / "notes.md"
    target.write_text("my own notes")
    target.chmod(0o644)
    code, _, err = run(capsys, str(cid), "-o", str(target))
    assert_refused(code, err, f"{target}: exists; --force replaces it")
    assert target.read_text() == "my own notes"
    code, _, err = run(capsys, str(cid), "-o", str(target), "--force")
    assert code == 0 and err == ""
    assert target.read_text() == markdown and mode(target) == 0o644


def test_a_link_to_a_file_is_written_through_only_with_force_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cid, markdown = saved("hello", "hi")
    real = tmp_path / "real.md"
    real.write_text("before")
    real.chmod(0o640)
    link = tmp_path / "link.md"
    link.symlink_to(real)
    code, _, err = run(capsys, str(cid), "-o", str(link))
    assert_refused(code, err, f"{link}: exists (a link to {real})")
    assert real.read_text() == "before"
    code, _, err = run(capsys, str(cid), "-o", str(link), "-f")
    assert code == 0 and err == f"opt-tpu-tui: {link} is a symbolic link: writing its target, {real}\n"
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == markdown and mode(real) == 0o640


def character_device(folder: Path) -> Path:
    """A /dev/null-like node of our own (root may make one), else a link to /dev/null itself."""
    node = folder / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (OSError, AttributeError):
        node.symlink_to(os.devnull)
    return node


@pytest.mark.parametrize("kind", ["fifo", "device", "link to /dev/null", "folder", "dangling link"])
def test_what_is_not_a_regular_file_is_never_replaced(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    """Not even with --force (the real /dev/null is only reached through a link: the old code would have
    replaced whatever the path named)."""
    cid, _ = saved("hello", "hi")
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "target"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "device":
        target = character_device(folder)
    elif kind == "link to /dev/null":
        target.symlink_to(os.devnull)
    elif kind == "folder":
        target.mkdir()
    else:
        target.symlink_to(folder / "nowhere")
    before = os.lstat(target)
    code, _, err = run(capsys, str(cid), "-o", str(target), "--force")
    assert_refused(code, err, str(target))
    assert "regular file" in err
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert [p.name for p in folder.iterdir()] == [target.name]  # no temporary file left either
