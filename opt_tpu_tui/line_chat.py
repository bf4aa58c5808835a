"""``-c``: a chat in the terminal, one message per prompt.

It lives apart from cli.py because reading a message is more than ``input()``:

- On a terminal, readline gives line editing and ↑/↓ over the messages typed, in this
  session and earlier ones (line_history.py keeps them). It is imported only when stdin
  is a terminal: on a pipe there is nothing to edit, and loading it can write terminal
  codes to stdout.
- A line ending in a backslash continues on the next line (the prompt becomes
  ``...>``), and several lines pasted in one go are one message: after a line, input
  already waiting on the terminal is read as more of the same message.
- A line starting with ``/`` is a command and never reaches the model; an unknown one
  is refused. ``//`` sends a message that starts with a slash.
- ctrl+c means "stop" during a reply (the generation ends between two tokens, so the
  turn and the backend's cache stay consistent) and "leave?" at the prompt: a second
  ctrl+c in a row leaves, as ctrl+d does.
- Input from a pipe is echoed after its prompt, as a terminal would have shown it, so
  the transcript reads ``you> hello`` then ``bot> ...``.
- The conversation is saved in the history as the UI's are (persist.run_and_save, as
  the UI's reply worker): listed, searched and reopened in the UI, exported. A
  history that cannot be written costs one warning line, never the chat.
- SIGHUP and SIGTERM (a closed terminal, ``kill``) stop a reply as ctrl+c does and then
  leave, with exit code 128 + the signal's number; at the prompt they leave at once
  (signals.py).
"""

from __future__ import annotations

import argparse
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from opt_tpu_tui import paths
from opt_tpu_tui.chat import Conversation, ReplyStream
from opt_tpu_tui.cli import for_terminal, print_stats, terminal_width, tolerate_bad_bytes, valid_text, write_out
from opt_tpu_tui.engine import Engine
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.history import HistoryStore
from opt_tpu_tui.line_history import LineHistory
from opt_tpu_tui.native_output import native_stdout_to
from opt_tpu_tui.persist import run_and_save
from opt_tpu_tui.safe_text import terminal_safe
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.signals import Ended, Ending, ending_stops, exit_code

PROMPT, MORE = "you> ", "...> "
PASTE_WAIT = 0.025  # seconds a line waits for the rest of a paste; typing is slower than that, pasting faster
COMMANDS = {
    "/new": "start a new conversation",
    "/regen": "answer the last message again",
    "/help": "this list",
    "/quit": "leave (ctrl+d too)",
}


def help_text(history: Path, width: int | None = 80) -> str:
    """What /help prints: the commands, then the keys (``history`` is where typed messages are kept),
    wrapped at ``width`` columns (the terminal's; 80 for a pipe), so no line breaks in mid-word."""
    paragraphs = [
        "Any other /word is refused; start a message with // to send it with one slash (//etc is /etc).",
        "Keys: up/down recall earlier messages, of past sessions too, and ctrl+r searches them (on a "
        f"terminal; they are kept in {history}).",
        "A line ending in \\ continues on the next; several lines pasted at once are one message.",
        "ctrl+c stops a reply; at the prompt it drops the line and asks before leaving (ctrl+c again "
        "leaves); ctrl+d leaves.",
    ]
    width = width or 80
    commands = [f"  {name:<7} {what}" for name, what in COMMANDS.items()]  # short: no wrap needed
    return "\n".join(["Commands:", *commands] + [for_terminal(paragraph, width) for paragraph in paragraphs])


class LineReader:
    """Reads whole messages from stdin: through readline on a terminal, line by line from a pipe."""

    def __init__(self, stdin: TextIO, history: LineHistory | None = None) -> None:
        self.stdin = stdin
        self.terminal = _isatty(stdin)
        self.readline = None
        self.history = history
        if self.terminal:
            import readline

            readline.set_auto_history(False)  # a message goes into the history once, whole, not line by line
            self.readline = readline
            for entry in history.load() if history is not None else ():
                readline.add_history(entry)

    def read_message(self) -> str:
        """The next message, its lines joined by newlines.

        EOFError at ctrl+d (or the end of stdin) on an empty prompt; KeyboardInterrupt
        at ctrl+c, which drops what was typed of the message. A trailing backslash
        continues the message only on the last line read: in the middle of a paste it is
        kept as text.
        """
        lines: list[str] = []
        prompt = PROMPT
        while True:
            try:
                line = input(prompt)
            except EOFError:
                if not lines:
                    raise
                write_out("\n")
                break
            if not self.terminal:  # nothing echoed a piped line: the transcript shows it after its prompt
                write_out(echo(line) + "\n")
            if self.more_pending():
                lines.append(line)
            elif line.endswith("\\"):
                lines.append(line[:-1])
            else:
                lines.append(line)
                break
            prompt = MORE
        message = "\n".join(lines)
        if self.readline is not None and message.strip():
            self.readline.add_history(message)
            if self.history is not None:
                self.history.append(message)
        return message

    def more_pending(self) -> bool:
        """Whether input is waiting on the terminal, within PASTE_WAIT: the rest of a paste.

        The terminal is in canonical mode between two reads, where a line without its
        newline yet does not count as readable; so canonical mode (and echo, so that
        readline alone shows the text) is off while this looks.
        """
        if not self.terminal:
            return False
        import termios

        descriptor = self.stdin.fileno()
        try:
            cooked = termios.tcgetattr(descriptor)
        except termios.error:
            return False
        raw = list(cooked)
        raw[3] = cooked[3] & ~(termios.ICANON | termios.ECHO)
        raw[6] = list(cooked[6])
        raw[6][termios.VMIN], raw[6][termios.VTIME] = 0, 0
        termios.tcsetattr(descriptor, termios.TCSANOW, raw)
        try:
            ready, _, _ = select.select([descriptor], [], [], PASTE_WAIT)
        finally:
            termios.tcsetattr(descriptor, termios.TCSANOW, cooked)
        return bool(ready)


def echo(line: str) -> str:
    """A piped ``line`` as the transcript shows it: control characters visible, a byte that is not UTF-8
    (read as a surrogate) as U+FFFD, so the echo is text whatever the line held."""
    return terminal_safe(line.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def ctrl_c_stops(cancel: threading.Event) -> Iterator[None]:
    """For the block, ctrl+c sets ``cancel`` (the generation stops before its next token).

    A second ctrl+c raises KeyboardInterrupt as usual, for a step that does not return
    (a long prefill on a slow device).
    """

    def stop(signum: int, frame: object) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def command_of(message: str) -> str | None:
    """The command ``message`` is (``/new``...), or None for a message to the model (``//`` included)."""
    text = message.strip()
    if not text.startswith("/") or text.startswith("//"):
        return None
    return text


def refusal(command: str) -> str:
    """Why ``command`` is not run: an unknown name, or text after a known one."""
    name = command.split()[0]
    if name in COMMANDS:
        return f"{name} takes nothing after it"
    return f"unknown command {name}: /help lists the commands (// starts a message with a slash)"


def to_model(message: str) -> str:
    """What the model is sent for ``message``: a leading ``//`` stands for one slash."""
    stripped = message.lstrip()
    return stripped[1:] if stripped.startswith("//") else message


def run_chat(args: argparse.Namespace, engine: Engine, settings: SamplingSettings) -> int:
    """The chat loop with ``engine`` (loaded here or a server's), saving to the history; returns the exit
    status (0: the user left; 128 + n: signal n ended it, signals.py)."""
    history = Saving()
    try:
        with ending_stops() as ending:
            try:
                return chat_loop(args, engine, settings, history, ending)
            except Ended as ended:
                return exit_code(ended.signum)
    finally:
        history.store.close()


class Saving:
    """The history this chat is saved in, and whether its trouble was already said (once is enough)."""

    def __init__(self) -> None:
        self.store, warning = HistoryStore.open()
        self.said = warning is not None
        if warning is not None:
            print(f"opt-tpu-tui: warning: {warning}", file=sys.stderr)
        self.conversation = Conversation()

    def new(self) -> None:
        """/new: the next message starts another conversation in the history."""
        self.conversation = Conversation()

    def run(self, reply: ReplyStream, cancel: threading.Event, line: BotLine) -> bool:
        """Stream ``reply`` to stdout after ``line``'s ``bot>`` (control characters made visible) while saving it
        as it grows; False when it failed before its first piece, so was taken back (persist.py): ``line`` goes."""
        failed: list[Exception] = []

        def emit(piece: str) -> None:
            if failed:
                return
            try:
                line.start()
                write_out(terminal_safe(piece))
            except (OSError, UserError) as error:  # stdout is gone: stop the reply, then end as write_out would
                failed.append(error)
                cancel.set()

        outcome = run_and_save(reply, self.conversation, self.store, emit=emit)
        if failed:
            raise failed[0]
        if outcome.taken_back:
            line.forget()
        if outcome.error:  # after a piece, on a line of its own; a reply taken back left none
            lead = "" if outcome.taken_back else "\n"
            print(f"{lead}error: {outcome.error}", file=sys.stderr)
        if outcome.unsaved and not self.said:
            self.said = True
            print(f"\nopt-tpu-tui: warning: not saved: {outcome.unsaved}", file=sys.stderr)
        return not outcome.taken_back


def chat_loop(args: argparse.Namespace, engine: Engine, settings: SamplingSettings, history: Saving, ending: Ending) -> int:
    """The messages and replies; a reply runs with ``ending`` set to stop it, and its end leaves if it did."""
    session = engine.session(history.conversation, args.preamble)
    tolerate_bad_bytes(sys.stdin)
    reader = LineReader(sys.stdin, LineHistory(paths.line_history_file()))
    print(
        for_terminal(
            f"Chatting with {engine.model_name} on {engine.name} ({engine.context_length}-token context). "
            "/help lists the commands; ctrl+c stops a reply, ctrl+d leaves.",
            terminal_width(sys.stdin),
        )
    )
    leaving = False  # ctrl+c was pressed at the prompt: another one leaves
    while True:
        if ending.signum is not None:  # it came during a reply, which stopped for it (and is kept): now leave
            return exit_code(ending.signum)
        try:
            message = reader.read_message()
        except EOFError:
            write_out("\n")
            return 0
        except KeyboardInterrupt:
            if leaving:
                write_out("\n")
                return 0
            leaving = True
            write_out("\n(ctrl+c again leaves, ctrl+d too; or type a message)\n")
            continue
        leaving = False
        command = command_of(message)
        if command == "/quit":
            return 0
        if command == "/help":
            print(help_text(paths.line_history_file(), terminal_width(sys.stdin)))
            continue
        if command == "/new":
            history.new()
            session = engine.session(history.conversation, args.preamble)
            print("(new conversation)")
            continue
        if command is not None and command != "/regen":
            print(f"error: {refusal(command)}", file=sys.stderr)
            continue
        if not message.strip():
            continue
        cancel = threading.Event()
        with ctrl_c_stops(cancel), ending.stopping(cancel):  # from before the reply starts: none falls between handlers
            try:
                if command == "/regen":
                    reply = session.regenerate(settings, cancel)
                else:
                    reply = session.send(valid_text(to_model(message), "that line"), settings, cancel)
            except UserError as error:
                print(f"error: {error}", file=sys.stderr)
                continue
            given = stream_reply(reply, lambda line: history.run(reply, cancel, line))
        if given and not args.quiet:
            print_stats(reply.stats)


class BotLine:
    """The ``bot>`` a reply is printed after: at once on a terminal (someone waits through the prefill), else
    with the first piece; a reply never given (failed before its first piece) takes it back, so it prints none."""

    def __init__(self, terminal: bool) -> None:
        self.shown = False
        self.terminal = terminal
        if terminal:
            self.start()

    def start(self) -> None:
        if not self.shown:
            self.shown = True
            write_out("bot> ")

    def forget(self) -> None:
        if self.shown:
            self.shown = False
            write_out("\r\x1b[K")  # only ever shown at once on a terminal, which this clears


def stream_reply(reply: ReplyStream, run: Callable[[BotLine], bool]) -> bool:
    """Print ``reply`` after ``bot>`` as ``run`` streams it (and the history saves it); when ctrl+c stopped
    it, mark it ``[stopped]``. False, with nothing printed, for a reply that failed before its first piece: it
    was never given (``run`` said its error), so it has no ``bot>`` line, no mark and no stats."""
    line = BotLine(_isatty(sys.stdout))
    try:
        with native_stdout_to(paths.native_output_log(), append=True):  # parked only here, not around input()
            if not run(line):
                return False
    except KeyboardInterrupt:  # a second ctrl+c, inside a step
        reply.stats.stop_reason = "cancelled"
        reply.turn.stopped = True
    line.start()
    if reply.turn.stopped:
        write_out(" [stopped]")
    write_out("\n")
    return True
