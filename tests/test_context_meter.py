"""The context meter has one definition everywhere: the tokens the model sees (issue 22, item 10).

That is the prompt as sent (old turns left out) and the reply so far while a reply
streams, and the next prompt before the user's words otherwise (chat.ChatSession.context_use).
"""

from __future__ import annotations

import threading

import pytest
from scripted import ScriptedBackend
from tiny import train_tokenizer
from tui_support import FIXED_SAMPLE, finish, make_app, ready, script_ids, send, submit, wait_until

from opt_tpu_tui.chat import ChatSession
from opt_tpu_tui.config import Settings
from opt_tpu_tui.sampling import SamplingSettings
from opt_tpu_tui.tokenizer import Tokenizer
from opt_tpu_tui.tui.messages import DeviceSampled
from opt_tpu_tui.tui.widgets.status import StatusLine

pytestmark = pytest.mark.anyio
SHORT = Settings(sampling=SamplingSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=16))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return Tokenizer.from_dir(train_tokenizer(tmp_path_factory.mktemp("tok")))


def gate_prefill(backend: ScriptedBackend) -> threading.Event:
    """Hold the backend's prefills until the returned event is set (a big model's slow prefill)."""
    go_on, prefill = threading.Event(), backend.prefill

    def held(ids: list[int]):  # type: ignore[no-untyped-def]
        go_on.wait(30)
        return prefill(ids)

    backend.prefill = held  # type: ignore[method-assign]
    return go_on


def test_a_streaming_reply_counts_its_prompt_as_sent_and_its_tokens(tokenizer: Tokenizer) -> None:
    backend = ScriptedBackend(script_ids(tokenizer, "one two three four five six", eos=True), tokenizer.vocab_size, 256)
    session = ChatSession(backend, tokenizer)
    reserve = session.reserve(SHORT.sampling)
    idle = session.context_use(reserve)
    reply = session.send("France", SHORT.sampling)
    assert session.context_use(reserve, reply).used == len(reply.generation.prompt_ids) >= idle.used > 0  # before any token
    pieces = iter(reply)
    next(pieces)
    assert session.context_use(reserve, reply).used == len(backend.prefills[-1]) + reply.stats.new_tokens
    list(pieces)
    after = session.context_use(reserve)
    reply = session.send("France", SHORT.sampling)
    assert len(tokenizer.encode(" France", add_bos=False)) == 1  # it takes the place of the empty message's " "
    assert len(reply.generation.prompt_ids) == after.used


async def test_the_meter_at_the_first_reply_start_is_the_prompt_not_zero(tokenizer: Tokenizer) -> None:
    app, backend = make_app(tokenizer, settings=SHORT)
    go_on = gate_prefill(backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        status = app.screen.query_one(StatusLine)
        try:
            await submit(pilot, "France")
            await wait_until(pilot, lambda: app.screen.streaming)
            app.screen.post_message(DeviceSampled(FIXED_SAMPLE))  # a stats tick while the prefill runs
            await pilot.pause()
            prompt = app.screen.in_flight.reply.generation.prompt_ids
            assert status.context_used == len(prompt) > 0
        finally:
            go_on.set()
        await finish(pilot, 1)


async def test_a_reply_after_old_turns_dropped_does_not_read_full(tokenizer: Tokenizer) -> None:
    app, backend = make_app(tokenizer, settings=SHORT)
    backend.context_length = 200
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        status = app.screen.query_one(StatusLine)
        for _ in range(30):
            if status.drops_next:
                break
            await send(pilot, "France")
        assert status.drops_next, "the meter never said the context was full"
        go_on = gate_prefill(backend)
        try:
            await submit(pilot, "France")  # this one leaves the oldest turns out
            await wait_until(pilot, lambda: app.screen.streaming)
            app.screen.post_message(DeviceSampled(FIXED_SAMPLE))
            await pilot.pause()
            prompt = app.screen.in_flight.reply.generation.prompt_ids
            assert (status.context_used, status.drops_next) == (len(prompt), False)
        finally:
            go_on.set()
        await finish(pilot, app.screen.finished_replies + 1)


async def test_a_reopened_chat_reads_as_it_did_live_on_every_reopening(tokenizer: Tokenizer) -> None:
    app, backend = make_app(tokenizer, settings=SHORT)
    backend.context_length = 200
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        screen, status = app.screen, app.screen.query_one(StatusLine)
        dropped = 0
        for _ in range(40):  # past the first drop, and a few turns on, so the boundary is where the drops put it
            await send(pilot, "France")
            if len(backend.prefills) > 1 and len(backend.prefills[-1]) < len(backend.prefills[-2]):
                dropped += 1
            if dropped and not status.drops_next and len(screen.conversation.turns) % 3 == 0:
                break
        assert dropped
        live = (status.context_used, status.drops_next, len(screen.query(".context-start")))
        cid = screen.conversation.id
        readings = []
        for _ in range(3):
            await pilot.press("ctrl+n")
            await pilot.pause()
            await screen.open_conversation(cid)
            await pilot.pause()
            readings.append((status.context_used, status.drops_next, len(screen.query(".context-start"))))
        assert readings == [live] * 3
        await send(pilot, "France")  # and the next prompt is what the meter said it would be (" France" for " ")
        assert len(backend.prefills[-1]) == live[0]


def test_prompt_lengths_are_the_tokenizers_count_of_the_prompt(tokenizer: Tokenizer) -> None:
    """The reopening's replay counts prompts per turn; each count is the encoded prompt's, for hostile text too."""
    import random

    from opt_tpu_tui.chat import PromptLengths, Turn, transcript

    rnd = random.Random(7)
    pieces = [*"ab cd\n\t  é漢😀.,:!?*_-'s", "User:", "Assistant:", "\n\n", "  \n", "\r\n", "\x1b[31m", "123"]

    def text() -> str:
        return "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 30)))

    for _ in range(100):
        turns = [Turn(text(), text()) for _ in range(rnd.randint(1, 5))]
        preamble = rnd.choice(["", "A conversation.", text()])
        lengths = PromptLengths(tokenizer, preamble, turns)
        for sent in range(len(turns)):
            for first in range(sent + 1):
                prompt = transcript(preamble, turns[first:sent], turns[sent].user)
                assert lengths.prompt(first, sent) == len(tokenizer.encode(prompt)), (preamble, turns[first : sent + 1])
