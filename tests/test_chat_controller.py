"""The chat controller (chat_controller.py) without Textual: sending, stopping, regenerating, resending,
variants, the context meter and a conversation's own settings, against a scripted in-process engine and
against a real ``opt-tpu-tui serve`` (the same controller calls, the same text and meter)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripted import ScriptedBackend
from serve_support import ServeProcess, child_env
from tiny import make_model, train_tokenizer

from opt_tpu_tui.chat import transcript
from opt_tpu_tui.chat_controller import ChatController, Streaming
from opt_tpu_tui.devices import DeviceSample
from opt_tpu_tui.engine import LocalEngine
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.history import HistoryStore
from opt_tpu_tui.overrides import Overrides
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.tokenizer import Tokenizer

REPLY = "Paris is the capital of France."
GREEDY = SamplingSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=24)
PREAMBLE = "A short test conversation."


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_dir(train_tokenizer(tmp_path_factory.mktemp("tok")))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[HistoryStore]:
    store, _ = HistoryStore.open(tmp_path / "history.sqlite3")
    yield store
    store.close()


class Told:
    """The controller's notify: the lines it would show."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, text: str, title: str, severity: str, seconds: float) -> None:
        self.lines.append((severity, text))


def scripted(tokenizer: Tokenizer, store: HistoryStore, delay: float = 0.0, context: int = 512) -> tuple[ChatController, ScriptedBackend, Told]:
    ids = tokenizer.encode(" " + REPLY, add_bos=False) + [tokenizer.eos_id]
    backend = ScriptedBackend(ids, tokenizer.vocab_size, context_length=context, delay=delay)
    told = Told()
    chat = ChatController(store, lambda: (GREEDY, PREAMBLE), told)
    chat.attach(LocalEngine(backend, tokenizer, lambda name: FixedMonitor()))
    return chat, backend, told


class FixedMonitor:
    def sample(self) -> DeviceSample:
        return DeviceSample("host", cpu_percent=12.0, mem_used=1, mem_total=2)


def run(chat: ChatController, streaming: Streaming) -> str:
    """The reply run to its end as the screen's worker runs it, then finished as the screen does."""
    outcome = chat.run(streaming)
    assert chat.end_stream() is streaming
    return chat.finish(streaming, outcome)


def test_the_controller_and_both_engines_import_without_textual() -> None:
    code = (
        "import sys; import opt_tpu_tui.chat_controller, opt_tpu_tui.engine, opt_tpu_tui.serve.client; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'textual'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_send_runs_saves_and_the_meter_reads_the_next_prompt(tokenizer: Tokenizer, store: HistoryStore) -> None:
    chat, backend, told = scripted(tokenizer, store)
    before = chat.context_use()
    assert before is not None and before.used > 0 and not before.full
    streaming = chat.send("What is the capital of France?")
    with pytest.raises(UserError, match="streaming"):  # one reply at a time
        chat.send("and another")
    assert run(chat, streaming) == "kept"
    turn = chat.conversation.turns[-1]
    assert (turn.user, turn.assistant, turn.stopped) == ("What is the capital of France?", REPLY, False)
    assert chat.conversation.id is not None
    assert store.load(chat.conversation.id)[-1].assistant == REPLY
    use = chat.context_use()
    assert use is not None and use.used == len(tokenizer.encode(transcript(PREAMBLE, chat.conversation.turns, "")))
    assert chat.figures.tokens_per_second == streaming.reply.stats.tokens_per_second
    assert told.lines == []


def test_the_meter_while_a_reply_streams_is_its_prompt_and_its_tokens(tokenizer: Tokenizer, store: HistoryStore) -> None:
    chat, backend, _ = scripted(tokenizer, store, delay=0.02)
    streaming = chat.send("Hello")
    worker = threading.Thread(target=chat.run, args=(streaming,))
    worker.start()
    try:
        while streaming.reply.stats.new_tokens < 3 and worker.is_alive():
            worker.join(0.01)
        use = chat.context_use()
        assert use is not None and use.used >= streaming.reply.prompt_tokens + 3
        assert streaming.reply.prompt_tokens == len(backend.prefills[-1])
    finally:
        worker.join()


def test_stop_ends_the_reply_within_a_token_marked_stopped_and_saved(tokenizer: Tokenizer, store: HistoryStore) -> None:
    chat, _, _ = scripted(tokenizer, store, delay=0.05)
    assert not chat.stop()  # nothing to stop
    streaming = chat.send("Tell me")
    worker = threading.Thread(target=lambda: setattr(streaming, "outcome", chat.run(streaming)))
    worker.start()
    while streaming.reply.stats.new_tokens < 2 and worker.is_alive():
        worker.join(0.01)
    assert chat.stop()
    worker.join(5)
    assert not worker.is_alive() and streaming.done.is_set()
    tokens = streaming.reply.stats.new_tokens
    chat.end_stream()
    assert chat.finish(streaming, streaming.outcome) == "kept"  # type: ignore[attr-defined]
    turn = chat.conversation.turns[-1]
    assert turn.stopped and 0 < len(turn.assistant) < len(REPLY) and tokens < len(tokenizer.encode(REPLY))
    saved = store.load(chat.conversation.id)[-1]  # type: ignore[arg-type]
    assert saved.stopped and saved.assistant == turn.assistant


def test_regenerate_and_resend_keep_the_old_turns_as_variants(tokenizer: Tokenizer, store: HistoryStore) -> None:
    chat, backend, _ = scripted(tokenizer, store)
    with pytest.raises(UserError, match="no reply to regenerate"):
        chat.regenerate()
    run(chat, chat.send("first"))
    run(chat, chat.send("second"))
    assert run(chat, chat.regenerate()) == "kept"
    assert [t.user for t in chat.conversation.turns] == ["first", "second"]
    assert chat.variants() == {1: (2, 2)}
    assert len(backend.prefills[-1]) == len(backend.prefills[-2])  # the same prompt again
    run(chat, chat.resend(0, "FIRST"))
    assert [t.user for t in chat.conversation.turns] == ["FIRST"]
    assert chat.variants() == {0: (2, 2)}
    turns, variants = chat.switch_variant(0, -1)
    assert [t.user for t in turns] == ["first", "second"] and variants[0] == (1, 2)
    assert chat.kept_turns() == 2  # both still in the context


def test_a_search_match_in_a_variant_not_shown_is_shown_before_it_opens(tokenizer: Tokenizer, store: HistoryStore) -> None:
    chat, _, told = scripted(tokenizer, store)
    run(chat, chat.send("first"))
    run(chat, chat.send("second"))
    run(chat, chat.resend(0, "other"))
    [hit] = [hit for hit in store.search("first") if hit.field == "user"]
    assert hit.variant and hit.turn == 0
    cid = chat.conversation.id
    chat.new_conversation()
    assert chat.show_match(hit) == 0 and chat.open(cid)
    assert [t.user for t in chat.conversation.turns] == ["first", "second"]
    store.delete_conversation(cid)  # gone meanwhile: the conversation would open as it is, and the user is told
    assert chat.show_match(hit) is None and told.lines[-1][0] == "warning"


def test_a_conversations_own_settings_are_saved_with_its_first_reply(tokenizer: Tokenizer, store: HistoryStore) -> None:
    chat, _, told = scripted(tokenizer, store)
    chat.set_own({"max_new_tokens": 3}, frozenset({"max_new_tokens"}))
    assert chat.effective_settings()[0].max_new_tokens == 3 and chat.overrides_unsaved
    streaming = chat.send("hello")
    run(chat, streaming)
    assert streaming.reply.stats.new_tokens == 3
    assert store.conversation_settings(chat.conversation.id)[0] == chat.conversation.overrides  # type: ignore[arg-type]
    chat.follow_defaults()
    assert chat.conversation.overrides == Overrides() and "kept with it" in told.lines[0][1]
    chat.new_conversation()
    assert chat.conversation.turns == [] and chat.conversation.id is None


def test_a_message_that_cannot_be_saved_is_taken_back(tokenizer: Tokenizer, store: HistoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    chat, _, told = scripted(tokenizer, store)

    def refuse(*args: object, **kwargs: object) -> int:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "create_conversation", refuse)
    assert run(chat, chat.send("hello")) == "taken back"
    assert chat.conversation.turns == [] and told.lines[0][0] == "error"



def test_a_reply_that_fails_before_its_first_word_leaves_no_turn(
    tokenizer: Tokenizer, store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server gone, a backend error: the reply was never given, so neither the conversation nor the history
    keeps its turn, and a regeneration that fails shows the reply it was to replace again, as the only one."""
    chat, backend, told = scripted(tokenizer, store)
    answer = backend.prefill

    def fail(ids: list[int]) -> object:
        raise RuntimeError("device lost")

    monkeypatch.setattr(backend, "prefill", fail)
    assert run(chat, chat.send("hello")) == "taken back"
    assert chat.conversation.turns == [] and chat.conversation.id is None and store.list_conversations() == []
    assert told.lines[-1] == ("error", "reply failed: RuntimeError: device lost")
    monkeypatch.setattr(backend, "prefill", answer)
    run(chat, chat.send("first"))
    monkeypatch.setattr(backend, "prefill", fail)
    assert run(chat, chat.regenerate()) == "reloaded"
    assert [(t.user, t.assistant) for t in chat.conversation.turns] == [("first", REPLY)]
    assert chat.variants() == {} and [(t.user, t.assistant) for t in store.load(chat.conversation.id)] == [("first", REPLY)]  # type: ignore[arg-type]


# the same controller against a real server


@pytest.fixture(scope="module")
def server(tiny_model: Path) -> Iterator[ServeProcess]:
    pytest.importorskip("uvicorn", reason="the serve extra (starlette, uvicorn) is not installed")
    with ServeProcess("--model", str(tiny_model)) as process:
        yield process.wait_ready()


def test_the_server_engine_replies_and_counts_as_in_process(server: ServeProcess, tiny_model: Path, store: HistoryStore) -> None:
    from opt_tpu_tui.backends import open_model
    from opt_tpu_tui.serve.client import RemoteEngine

    local_backend, local_tokenizer = open_model(tiny_model, "cpu", None)
    remote = RemoteEngine.connect(server.url)
    readings = []
    try:
        for engine in (LocalEngine(local_backend, local_tokenizer), remote):
            chat = ChatController(store, lambda: (GREEDY, PREAMBLE))
            chat.attach(engine)
            meter = [chat.context_use()]
            for text in ("Hello world, this is", "What is the capital of France?"):
                assert run(chat, chat.send(text)) == "kept"
                meter.append(chat.context_use())
            assert run(chat, chat.regenerate()) == "kept"
            readings.append(([t.assistant for t in chat.conversation.turns], meter, chat.kept_turns()))
    finally:
        local_backend.close()
    assert readings[0] == readings[1]
    assert all(reply for reply in readings[0][0])
    sample = remote.sample_device()
    assert sample.kind == "host" and sample.mem_total and remote.name.startswith("cpu @ 127.0.0.1:")


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A model big enough that a long reply takes seconds: room to stop it midway."""
    pytest.importorskip("uvicorn", reason="the serve extra (starlette, uvicorn) is not installed")
    config = dict(hidden_size=384, num_hidden_layers=6, ffn_dim=1536, num_attention_heads=6, max_position_embeddings=1024)
    model = make_model(tmp_path_factory.mktemp("slow") / "slow-opt", **config)
    with ServeProcess("--model", str(model)) as process:
        yield process.wait_ready()


def test_stopping_a_server_reply_closes_its_stream(slow_server: ServeProcess, store: HistoryStore) -> None:
    from opt_tpu_tui.serve.client import RemoteEngine

    chat = ChatController(store, lambda: (SamplingSettings(temperature=0.0, max_new_tokens=400), PREAMBLE))
    chat.attach(RemoteEngine.connect(slow_server.url))
    streaming = chat.send("Tell me a long story")
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(chat.run(streaming)))
    worker.start()
    while not streaming.reply.turn.assistant and worker.is_alive():
        worker.join(0.01)
    chat.stop()
    worker.join(10)
    assert not worker.is_alive()
    chat.end_stream()
    chat.finish(streaming, outcome[0])  # type: ignore[arg-type]
    turn = chat.conversation.turns[-1]
    assert turn.stopped and turn.stop_reason == "cancelled" and streaming.reply.stats.new_tokens < 400


def test_over_a_server_the_meter_counts_here_with_the_server_models_tokenizer(tiny_model: Path, store: HistoryStore) -> None:
    """Over --server the meter counts with the server model's own tokenizer, fetched once: the same figures as
    in-process, and no round trip per count (they ran on the UI thread), so even a server gone away leaves it."""
    pytest.importorskip("uvicorn", reason="the serve extra (starlette, uvicorn) is not installed")
    from opt_tpu_tui.serve.client import RemoteEngine

    told: list[str] = []
    with ServeProcess("--model", str(tiny_model)) as process:
        process.wait_ready()
        chat = ChatController(store, lambda: (GREEDY, PREAMBLE), lambda text, *_: told.append(text))
        chat.attach(RemoteEngine.connect(process.url))
        assert run(chat, chat.send("Hello world, this is")) == "kept"
        assert process.stop() == 0
    chat.conversation.turns[0].user += " and more"  # text never counted before
    use = chat.context_use()
    expected = transcript(PREAMBLE, chat.conversation.turns, "")
    assert use is not None and use.used == len(Tokenizer.from_dir(tiny_model).encode(expected))
    assert chat.kept_turns() == 1 and told == []
