"""The hostile checkpoint (tests/hostile.py) does what the terminal-safety tests rely on.

If it stopped producing its escapes, every "no escape reached the terminal" test would
pass for the wrong reason; so its reply is checked here, through the app's own CPU
backend (chat and raw prompts, greedy and default sampling) and through transformers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile import REPLY, SEQUENCE, make_hostile_model, sequence_ids
from tiny import torch_and_transformers

from opt_tpu_tui.backends import open_model
from opt_tpu_tui.chat import ChatSession
from opt_tpu_tui.generation import Generation
from opt_tpu_tui.sampling import SamplingSettings

GREEDY = SamplingSettings(temperature=0.0, repetition_penalty=1.0, max_new_tokens=50)


@pytest.fixture(scope="module")
def hostile_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hostile_model(tmp_path_factory.mktemp("hostile") / "hostile-opt")


@pytest.mark.parametrize("settings", [GREEDY, SamplingSettings(max_new_tokens=50, seed=1)], ids=["greedy", "default"])
def test_cpu_backend_chat_reply_is_the_hostile_sequence(hostile_model: Path, settings: SamplingSettings) -> None:
    backend, tokenizer = open_model(hostile_model, "cpu")
    session = ChatSession(backend, tokenizer)
    first = session.send("hi", settings)
    text = "".join(first)
    assert first.generation.tokens == sequence_ids()[:-1] and first.stats.stop_reason == "eos"
    assert text == REPLY.lstrip()
    second = session.send("and again?", settings)  # a transcript holding the escapes still ends in "Assistant:"
    assert "".join(second) == REPLY.lstrip()


def test_cpu_backend_raw_reply_is_the_hostile_sequence(hostile_model: Path) -> None:
    backend, tokenizer = open_model(hostile_model, "cpu")
    generation = Generation(backend, tokenizer, tokenizer.encode("hi"), GREEDY)
    assert "".join(generation) == REPLY
    assert generation.tokens == sequence_ids()[:-1] and generation.stats.stop_reason == "eos"


def test_transformers_greedy_decode_agrees(hostile_model: Path) -> None:
    torch, transformers = torch_and_transformers()
    from opt_tpu_tui.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(hostile_model)
    model = transformers.OPTForCausalLM.from_pretrained(hostile_model).eval()
    for prompt in ("A conversation.\n\nUser: hi\nAssistant:", "hi"):
        ids = tokenizer.encode(prompt)
        with torch.no_grad():
            for _ in range(len(SEQUENCE) + 1):
                logits = model(torch.tensor([ids])).logits[0, -1]
                ids.append(int(torch.argmax(logits)))
                if ids[-1] == tokenizer.eos_id:
                    break
        reply = ids[len(tokenizer.encode(prompt)) :]
        assert reply == sequence_ids(), prompt
        assert tokenizer.decode(reply) == REPLY


def test_the_reply_holds_every_escape_and_the_visible_text() -> None:
    assert "\x1b]0;" in REPLY and "\x1b]52;c;" in REPLY and "\x1b[2J" in REPLY and "\u009b" in REPLY
    assert REPLY.endswith(" visible-text")
