"""The decode loop's stops, cancellation and timing, and the chat transcript around it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from scripted import ArgmaxScriptedBackend, GreedyScriptedBackend, ScriptedBackend
from tiny import torch_and_transformers

from opt_tpu_tui.backends import open_backend, open_model
from opt_tpu_tui.chat import STOP_STRINGS, ChatSession, Conversation, Turn, transcript
from opt_tpu_tui.demo import DEMO_MODEL_DIR
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.generation import Generation, StopStringFilter
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.tokenizer import Tokenizer

GREEDY = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=100)


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Tokenizer:
    return Tokenizer.from_dir(tiny_model)


def script_for(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_bos=False)


def run(backend, tokenizer, settings=GREEDY, stops=(), cancel=None, prompt=(2, 40, 41)) -> tuple[str, Generation]:
    generation = Generation(backend, tokenizer, list(prompt), settings, stops, cancel)
    return "".join(generation), generation


def test_stops_at_eos_without_emitting_it(tokenizer: Tokenizer) -> None:
    script = script_for(tokenizer, "Hello world") + [tokenizer.eos_id, 50]
    text, generation = run(ScriptedBackend(script, tokenizer.vocab_size), tokenizer)
    assert text == "Hello world"
    assert generation.stats.stop_reason == "eos"
    assert generation.tokens == script[:-2]


def test_a_model_that_emits_token_ids_decodes_greedily_whatever_the_sampling_settings(tokenizer: Tokenizer) -> None:
    script = script_for(tokenizer, "Hello world") + [tokenizer.eos_id, 50]
    hot = SamplingSettings(temperature=1.5, top_k=0, top_p=1.0, repetition_penalty=2.0, max_new_tokens=100, seed=1)
    text, generation = run(GreedyScriptedBackend(script, tokenizer.vocab_size), tokenizer, hot)
    assert (text, generation.tokens, generation.stats.stop_reason) == ("Hello world", script[:-2], "eos")
    assert generation.stats.decode_steps == len(script) - 2


@pytest.mark.parametrize(
    "settings, backend_picks",
    [
        (GREEDY, True),
        (SamplingSettings(temperature=0, repetition_penalty=1.1, max_new_tokens=100), False),  # needs every logit
        (SamplingSettings(temperature=0.7, repetition_penalty=1.0, max_new_tokens=100, seed=3), False),
    ],
)
def test_the_backend_picks_the_token_itself_only_when_the_settings_take_the_largest_logit(
    tokenizer: Tokenizer, settings: SamplingSettings, backend_picks: bool
) -> None:
    """A backend that can pick the greedy token (a converted model's greedy head on the TPU) is asked to,
    among the tokenizer's ids, when greedy without a repetition penalty; any other settings sample the logits."""
    script = script_for(tokenizer, "Hello world") + [tokenizer.eos_id, 50]
    backend = ArgmaxScriptedBackend(script, tokenizer.vocab_size + 8)  # OPT's padding rows past the tokenizer's ids
    text, generation = run(backend, tokenizer, settings)
    assert (text, generation.tokens, generation.stats.stop_reason) == ("Hello world", script[:-2], "eos")
    assert backend.asked == [tokenizer.vocab_size if backend_picks else None] * (len(script) - 1)


def test_stops_at_max_new_tokens(tokenizer: Tokenizer) -> None:
    script = script_for(tokenizer, "The quick brown fox jumps over the lazy dog")
    settings = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=3)
    text, generation = run(ScriptedBackend(script, tokenizer.vocab_size), tokenizer, settings)
    assert generation.tokens == script[:3] and text == tokenizer.decode(script[:3])
    assert generation.stats.stop_reason == "max_new_tokens" and generation.stats.new_tokens == 3


def test_stops_at_the_context_limit_without_decoding_past_it(tokenizer: Tokenizer) -> None:
    backend = ScriptedBackend(script_for(tokenizer, "fox " * 40), tokenizer.vocab_size, context_length=10)
    _, generation = run(backend, tokenizer)
    assert generation.stats.stop_reason == "context"
    assert backend.length == 10 and generation.stats.new_tokens == 10 - 3 + 1


def test_prompt_that_fills_the_context_is_refused(tokenizer: Tokenizer) -> None:
    backend = ScriptedBackend([5], tokenizer.vocab_size, context_length=3)
    with pytest.raises(UserError, match="the prompt is 3 tokens, but the context holds 3"):
        run(backend, tokenizer)
    with pytest.raises(UserError, match="the prompt is empty"):
        run(backend, tokenizer, prompt=())


def test_stop_string_cuts_the_text_and_nothing_of_it_is_shown(tokenizer: Tokenizer) -> None:
    script = script_for(tokenizer, "Paris is the capital.\nUser: and more")
    backend = ScriptedBackend(script, tokenizer.vocab_size)
    generation = Generation(backend, tokenizer, [2, 40], GREEDY, ("\nUser:",))
    pieces = list(generation)
    assert "".join(pieces) == "Paris is the capital."
    assert generation.stats.stop_reason == "stop_string"


def test_stop_string_filter_holds_back_only_a_possible_start() -> None:
    f = StopStringFilter(["\nUser:"])
    assert f.feed("Hi\nUs") == "Hi"
    assert f.feed("ed to it") == "\nUsed to it"
    assert f.feed("\n") == "" and f.finish() == "\n"
    g = StopStringFilter(["\nUser:", "###"])
    assert g.feed("a#") == "a" and g.feed("#") == "" and g.feed("#x") == "" and g.stopped


def test_cancel_stops_between_tokens(tokenizer: Tokenizer) -> None:
    cancel = threading.Event()
    backend = ScriptedBackend(script_for(tokenizer, "one two three four five six"), tokenizer.vocab_size)
    generation = Generation(backend, tokenizer, [2, 40], GREEDY, cancel=cancel)
    pieces = []
    for piece in generation:
        pieces.append(piece)
        cancel.set()
    assert generation.stats.stop_reason == "cancelled"
    assert generation.stats.new_tokens == 1 and backend.length == 2  # no decode after the cancel


def test_stats_count_prefill_and_decode(tokenizer: Tokenizer) -> None:
    backend = ScriptedBackend(script_for(tokenizer, "fox " * 10), tokenizer.vocab_size, delay=0.002)
    settings = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=6)
    _, generation = run(backend, tokenizer, settings)
    stats = generation.stats
    assert stats.prompt_tokens == 3 and stats.new_tokens == 6 and stats.decode_steps == 5
    assert stats.context_used == 8 and 0 < stats.tokens_per_second < 1 / 0.002


def test_greedy_generation_on_the_cpu_backend_equals_transformers(tiny_model: Path, tokenizer: Tokenizer) -> None:
    torch, transformers = torch_and_transformers()
    reference = transformers.OPTForCausalLM.from_pretrained(tiny_model).eval()
    prompt = tokenizer.encode("Hello world, this is")
    settings = SamplingSettings(temperature=0, repetition_penalty=1.3, max_new_tokens=40)
    generation = Generation(open_backend(tiny_model, "cpu"), tokenizer, prompt, settings)
    text = "".join(generation)
    with torch.no_grad():
        out = reference.generate(
            torch.tensor([prompt]), max_new_tokens=40, do_sample=False, repetition_penalty=1.3,
            eos_token_id=tokenizer.eos_id, pad_token_id=1, suppress_tokens=list(range(tokenizer.vocab_size, 408)),
        )  # fmt: skip
    expected = [t for t in out[0, len(prompt) :].tolist() if t != tokenizer.eos_id]
    assert generation.tokens == expected[: len(generation.tokens)] and len(generation.tokens) == len(expected)
    assert text == tokenizer.decode(expected)


def test_turns_are_dropped_in_batches_so_the_next_turns_keep_their_start_in_the_cache(tokenizer: Tokenizer) -> None:
    backend = ScriptedBackend(script_for(tokenizer, " fine thanks") + [tokenizer.eos_id], tokenizer.vocab_size, 200)
    session = ChatSession(backend, tokenizer, preamble="P.")
    settings = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=8)
    dropped, reused = [], []
    for i in range(14):
        reply = session.send(f"question number {i}", settings)
        list(reply)
        dropped.append(reply.dropped_turns)
        reused.append(backend.reused)
        assert len(backend.prefills[-1]) + 8 <= 200
    drops = [i for i in range(1, 14) if dropped[i] > dropped[i - 1]]
    assert len(drops) >= 2  # the chat outgrew the context more than once
    for i in drops[:-1]:  # after each drop, the next turn keeps the whole previous prompt and its reply
        assert dropped[i + 1] == dropped[i] and reused[i + 1] > len(backend.prefills[i])
    assert len(drops) <= 5  # not one turn at a time: 14 turns of ~32 tokens each in a 200-token context


def test_the_next_chat_turn_runs_only_its_new_tokens_and_replies_as_from_scratch() -> None:
    backend, tokenizer = open_model(DEMO_MODEL_DIR, "cpu")
    settings = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=24)
    session = ChatSession(backend, tokenizer)
    first = session.send("What is a list?", settings)
    list(first)
    assert first.stats.cached_tokens == 0
    second = session.send("And a tuple?", settings)
    text = "".join(second)
    assert second.dropped_turns == 0
    prompt = tokenizer.encode(transcript(session.preamble, session.turns[:1], "And a tuple?"))
    # the cache kept the first turn's prompt at least; only the rest ran
    assert len(first.generation.prompt_ids) <= second.stats.cached_tokens < len(prompt)
    fresh = Generation(open_backend(DEMO_MODEL_DIR, "cpu"), tokenizer, prompt, settings, STOP_STRINGS)
    assert "".join(fresh).strip() == text.strip() and fresh.tokens == second.generation.tokens
    assert fresh.stats.cached_tokens == 0


def test_transcript_format_is_exactly_as_documented() -> None:
    turns = [Turn("What is 2+2?", " 4. "), Turn("And 3+3?", "6")]
    assert transcript("Be brief.", turns, "Thanks!") == (
        "Be brief.\n\nUser: What is 2+2?\nAssistant: 4.\nUser: And 3+3?\nAssistant: 6\nUser: Thanks!\nAssistant:"
    )
    assert transcript("", [], "Hi") == "User: Hi\nAssistant:"


def test_chat_reply_is_trimmed_recorded_and_stops_at_the_next_user_turn(tokenizer: Tokenizer) -> None:
    backend = ScriptedBackend(script_for(tokenizer, " Paris, of course.\nUser: next"), tokenizer.vocab_size, 128)
    session = ChatSession(backend, tokenizer, preamble="Quiz.")
    reply = session.send("Capital of France?", GREEDY)
    assert "".join(reply) == "Paris, of course."
    assert session.turns == [Turn("Capital of France?", "Paris, of course.", stopped=False)]
    assert backend.prefills[-1] == tokenizer.encode("Quiz.\n\nUser: Capital of France?\nAssistant:")
    again = session.regenerate(GREEDY)
    assert "".join(again) == "Paris, of course." and len(session.turns) == 1


def test_editing_a_message_answers_it_after_the_turns_before_it_only(tokenizer: Tokenizer) -> None:
    backend = ScriptedBackend(script_for(tokenizer, " Fine.\nUser: x"), tokenizer.vocab_size, 256)
    turns = [Turn("one", "1"), Turn("two", "2"), Turn("three", "3")]
    session = ChatSession(backend, tokenizer, preamble="P.", conversation=Conversation(turns))
    reply = session.edit(1, "TWO", GREEDY)
    assert "".join(reply) == "Fine."
    assert [t.user for t in session.turns] == ["one", "TWO"]
    assert backend.prefills[-1] == tokenizer.encode("P.\n\nUser: one\nAssistant: 1\nUser: TWO\nAssistant:")
    with pytest.raises(UserError, match="the message is empty"):
        session.edit(0, "  ", GREEDY)
    assert [t.user for t in session.turns] == ["one", "TWO"]  # a refused edit changes nothing
    with pytest.raises(UserError, match="no message 3"):
        session.edit(2, "x", GREEDY)


def test_chat_drops_the_oldest_turns_to_fit_and_refuses_a_message_too_long(tokenizer: Tokenizer) -> None:
    backend = ScriptedBackend([tokenizer.eos_id], tokenizer.vocab_size, context_length=100)
    turns = [Turn(f"question number {i}", f"answer number {i}") for i in range(6)]
    session = ChatSession(backend, tokenizer, preamble="P.", conversation=Conversation(turns))
    settings = SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=8)
    reply = session.send("last one", settings)
    list(reply)
    assert 0 < reply.dropped_turns < 6
    prompt = tokenizer.decode(backend.prefills[-1])
    assert prompt.startswith("P.\n\nUser: question number") and prompt.endswith("User: last one\nAssistant:")
    assert "question number 0" not in prompt and len(backend.prefills[-1]) + 8 <= 100
    with pytest.raises(UserError, match="but the context holds 100"):
        session.send("word " * 80, settings)
    with pytest.raises(UserError, match="the message is empty"):
        session.send("   ", settings)


def test_the_meter_never_exceeds_the_context_when_every_earlier_turn_was_dropped_or_the_chat_is_reopened(
    tokenizer: Tokenizer,
) -> None:
    """The meter is what the next prompt holds before the user's words: after a message that left every
    earlier turn out, and for a saved chat that outgrew the context, opened in a new session."""
    context, settings = 100, SamplingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=8)
    backend = ScriptedBackend(script_for(tokenizer, " ok") + [tokenizer.eos_id], tokenizer.vocab_size, context)
    session = ChatSession(backend, tokenizer, preamble="P.")
    list(session.send("word " * 20, settings))  # 2 tokens a word
    reply = session.send("word " * 25, settings)  # too long to keep the first turn beside it
    list(reply)
    assert reply.dropped_turns == 1
    reserve = session.reserve(settings)
    meter = session.next_prompt_tokens(reserve)
    assert session.first_kept(reserve) == 1 and meter <= context
    assert meter == len(tokenizer.encode(transcript("P.", session.turns[1:], "")))
    list(session.send("France", settings))
    assert backend.prefills[-1] == tokenizer.encode(transcript("P.", session.turns[1:2], "France"))
    assert len(tokenizer.encode(" France", add_bos=False)) == 1 and len(backend.prefills[-1]) == meter  # as in the TUI test

    live = session.next_prompt_tokens(reserve)

    saved = [Turn(t.user, t.assistant) for t in session.turns]  # as loaded from the history
    reopened = ChatSession(backend, tokenizer, preamble="P.", conversation=Conversation(saved))
    assert reopened.first_kept(reserve) == 1 and reopened.next_prompt_tokens(reserve) == live <= context
