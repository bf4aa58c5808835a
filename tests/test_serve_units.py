"""Parts of the server that need no HTTP: the slots' choice of K/V, and the registry that names a running server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from opt_tpu_tui import backends
from opt_tpu_tui.backends.cpu import CPUBackend
from opt_tpu_tui.errors import UserError
from opt_tpu_tui.serve import registry
from opt_tpu_tui.serve.slots import Slots


def run(backend: CPUBackend, slots: Slots, ids: list[int], new: int = 4) -> int:
    """One request as the engine runs it: prepare, prefill, a few decodes, finish; the prompt tokens reused."""
    slots.prepare(ids)
    backend.prefill(ids)
    reused = backend.reused
    for token in range(10, 10 + new):
        backend.decode(token)
    slots.finish()
    return reused


def test_slots_keep_each_conversation_and_give_the_same_logits(tiny_model: Path) -> None:
    backend = CPUBackend(tiny_model)
    slots = Slots(backend, 2)
    first, second = [2, 5, 6, 7, 8, 9], [2, 5, 30, 31, 32]
    run(backend, slots, first)  # the cache then holds first + the four decoded tokens 10..13
    run(backend, slots, second)
    continued = first + [10, 11, 12, 13, 40]  # the next turn of the first conversation
    assert run(backend, slots, continued) == len(continued) - 1  # its K/V came back from RAM
    logits = backend.model.prefill(continued[-1:], start=len(continued) - 1).copy()
    assert np.allclose(CPUBackend(tiny_model).prefill(continued), logits, rtol=1e-5, atol=1e-5)  # as if run again
    assert run(backend, slots, second + [10, 11, 12, 13, 41]) == len(second) + 4
    one = Slots(CPUBackend(tiny_model), 1)
    assert one.count == 1


def test_a_tpu_load_that_fails_names_the_running_server(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise UserError("out of TPU device memory allocating 3900.0 MiB")

    monkeypatch.setattr(backends, "open_backend", refuse)
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # stands for a live server
    try:
        folder = registry.folder()
        folder.mkdir(parents=True)
        entry = {"pid": server.pid, "url": "http://127.0.0.1:8123", "backend": "bmrt", "model": "opt-6.7b"}
        (folder / f"{server.pid}.json").write_text(json.dumps(entry))
        with pytest.raises(UserError) as raised:
            backends.open_model(tiny_model, "bmrt")
        assert str(raised.value) == (
            "out of TPU device memory allocating 3900.0 MiB -- `opt-tpu-tui serve` (pid "
            f"{server.pid}) holds opt-6.7b on the TPU: use it with --server http://127.0.0.1:8123, or stop it first"
        )
        with pytest.raises(UserError, match=r"^out of TPU device memory allocating 3900.0 MiB$"):
            backends.open_model(tiny_model, "cpu")  # a CPU load is not kept from the TPU by a server
    finally:
        server.kill()
        server.wait()
    with pytest.raises(UserError, match=r"^out of TPU device memory allocating 3900.0 MiB$"):
        backends.open_model(tiny_model, "bmrt")  # its process is gone: the file is stale



def test_the_model_card_says_whether_the_device_picks_the_tokens(monkeypatch) -> None:  # noqa: ANN001
    """A greedy-only model (an OPT-TPU bmodel) says so in /v1/models, and a --server client reads it there,
    so the UI shows the sampling settings as not applying, as in-process."""
    from opt_tpu_tui.serve import client as serve_client
    from opt_tpu_tui.serve import openai_api as oa

    card = oa.model_card(oa.Model("opt-7b", None, 512, 0, greedy_only=True))  # type: ignore[arg-type]
    assert card["greedy_only"] is True and card["context_length"] == 512

    class Client:  # the server's answers, without a server
        def __init__(self, url: str, origin: object = None) -> None:
            self.url = url

        def model(self) -> dict:
            return card

        def device(self) -> tuple:
            return ("sail", None)

        def tokenizer(self) -> None:
            return None

    monkeypatch.setattr(serve_client, "ServerClient", Client)
    assert serve_client.RemoteEngine.connect("http://127.0.0.1:1").greedy_only is True
    card["greedy_only"] = False
    assert serve_client.RemoteEngine.connect("http://127.0.0.1:1").greedy_only is False


def test_a_stream_gets_the_text_made_meanwhile_as_one_piece_and_its_end_at_once() -> None:
    """The device thread's pieces wait for the stream's next write (one chunk), but the reply's end does not."""
    import asyncio
    import threading
    import time

    from opt_tpu_tui.generation import GenerationStats
    from opt_tpu_tui.serve.app import Inbox
    from opt_tpu_tui.serve.engine import Done, Piece

    async def scenario() -> tuple[list, list, float]:
        loop = asyncio.get_running_loop()
        inbox = Inbox(loop)
        done = Done(GenerationStats(stop_reason="eos"), "stop")

        def device(pieces: list[str], end: bool) -> None:
            for text in pieces:
                inbox.put(Piece(text))
                time.sleep(0.002)
            if end:
                inbox.put(done)

        first_thread = threading.Thread(target=device, args=(["a", "b", "c"], False))
        first_thread.start()
        first = await inbox.take(not_before=loop.time() + 0.5)  # the pieces of the next half second at most
        first_thread.join()
        threading.Thread(target=device, args=(["d", "e"], True)).start()
        started = loop.time()
        second = await inbox.take(not_before=started + 30)
        return first, second, loop.time() - started

    first, second, waited = asyncio.run(scenario())
    assert first == [Piece("abc")]
    assert second[0] == Piece("de") and isinstance(second[1], Done) and len(second) == 2
    assert waited < 10  # the end went out when it came, not 30 s later


def test_a_client_counts_the_tokens_a_chunk_says_it_holds() -> None:
    """A chunk may hold several tokens (the server sends what was made since its last write): the reply's count,
    which the context meter reads while it streams, follows the server's ``tokens``, not one per chunk."""
    from opt_tpu_tui.serve.client import RemoteReply

    class Client:
        def stream(self, path: str, body: dict, cancel: object) -> object:
            yield {"choices": [{"index": 0, "text": "Hello", "tokens": 3}]}
            yield {"choices": [{"index": 0, "text": " world", "tokens": "many"}]}  # not a count: one more, as before
            yield {"choices": [{"index": 0, "text": "!", "tokens": 9}]}
            timings = {"prefill_seconds": 0.25, "decode_seconds": 0.5, "decode_steps": 8}
            yield {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9, "timings": timings}}

    reply = RemoteReply(Client(), "/v1/completions", {}, prompt_tokens=5)  # type: ignore[arg-type]
    counts = [(piece, reply.stats.new_tokens, reply.stats.context_used, reply.stats.decode_steps) for piece in reply]
    assert counts == [("Hello", 3, 8, 0), (" world", 4, 9, 1), ("!", 9, 14, 6)]  # steps after the first chunk's
    stats = reply.stats  # then the device's own times: chunks that arrive at once are no measure of its speed
    assert (stats.prefill_seconds, stats.decode_seconds, stats.decode_steps, stats.tokens_per_second) == (0.25, 0.5, 8, 16)


def engine_with_a_held_job(tiny_model: Path, queue_limit: int) -> tuple:
    """An Engine on the tiny model whose first job holds the device until the returned event is set."""
    import threading

    from opt_tpu_tui.backends import open_model
    from opt_tpu_tui.sampling import SamplingSettings
    from opt_tpu_tui.serve.engine import Engine, Job

    backend, tokenizer = open_model(tiny_model, "cpu")
    engine = Engine(backend, tokenizer, queue_limit=queue_limit)
    release, running = threading.Event(), threading.Event()

    def held(event: object) -> None:  # on the device thread: the job runs until released
        running.set()
        release.wait(30)

    settings = SamplingSettings(max_new_tokens=4, temperature=0.0)
    engine.submit(Job(tokenizer.encode("Hello"), settings, held))
    assert running.wait(30)
    return engine, release, lambda sink: Job(tokenizer.encode("Hello"), settings, sink)


def test_queue_0_runs_one_and_lets_none_wait(tiny_model: Path) -> None:
    """--queue 0 refused every request, the idle device's too: it means one running and none waiting."""
    from opt_tpu_tui.serve.engine import QueueFull

    engine, release, job = engine_with_a_held_job(tiny_model, queue_limit=0)  # the first one was taken
    with pytest.raises(QueueFull):
        engine.submit(job(lambda event: None))
    release.set()
    engine.close()


def test_a_job_that_never_ran_is_told_the_server_is_shutting_down(tiny_model: Path) -> None:
    """At SIGTERM a queued job ends as EngineClosed (a 503), not as a finished empty reply (a 200 "stop")."""
    from opt_tpu_tui.serve.engine import Done, EngineClosed, Failed

    engine, release, job = engine_with_a_held_job(tiny_model, queue_limit=2)
    events: list = []
    engine.submit(job(events.append))
    engine.stop_all()
    release.set()
    engine.close()
    assert len(events) == 1 and isinstance(events[0], Failed) and isinstance(events[0].error, EngineClosed), events
    assert not any(isinstance(event, Done) for event in events)


@pytest.mark.parametrize(
    "host, loopback",
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("box", False), ("", False)],
)  # fmt: skip
def test_loopback_hosts_need_no_key(host: str, loopback: bool) -> None:
    """--host localhost was refused as letting other machines connect (it does not)."""
    from opt_tpu_tui.serve.command import is_loopback

    assert is_loopback(host) is loopback
