"""The server's K/V cache across requests: the last N distinct conversations, each able to continue cheaply.

A backend has one cache, and its ``prefill`` already keeps the longest start it
shares with a new prompt (``backends.base.reusable_prefix``): with one slot that is
all the server needs, and the next turn of the last conversation pays only its new
tokens. With ``--slots N`` the conversations that are not in the cache keep a copy of
their K/V in RAM (the backend's ``save_cache`` / ``restore_cache``): a request goes to
the slot sharing the longest start with its prompt, whose copy is put back into the
cache before the prefill. Copying is a memcpy of the positions a conversation holds,
far cheaper than running them again (bench/serve.py and the README give the figures);
the copy is taken only when another conversation takes the cache (not after every
request), so one conversation alone costs nothing.

A prompt continues a slot when it starts with the slot's whole last prompt: the next
turn of a chat (its transcript grows at the end), or the same prompt again (regenerate).
Otherwise it is a new conversation and takes a free slot, or the least recently used
one (an edited message too: its old branch stays in its slot). A share of the tokens
would not do, as llama.cpp's ``slot_prompt_similarity`` (half) shows for short chats:
two conversations with one long preamble share most of their first prompts. Whatever
slot a request goes to, its K/V start from the slot sharing the longest start with it. A backend without ``save_cache`` (the TPU backends keep the
K/V on the device) has one slot, its own cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opt_tpu_tui.backends.base import Backend, reusable_prefix


@dataclass
class Slot:
    """One conversation's tokens, and a copy of their K/V while another slot holds the cache."""

    ids: list[int] = field(default_factory=list)  # what the cache held after its last request
    prompt: int = 0  # tokens of its last request's prompt
    snapshot: Any = None  # from backend.save_cache(); None while this slot is the one in the cache
    last_used: int = 0


def can_snapshot(backend: Backend) -> bool:
    """Whether ``backend`` can copy its cache out and back (the CPU backend can)."""
    return callable(getattr(backend, "save_cache", None)) and callable(getattr(backend, "restore_cache", None))


class Slots:
    """Chooses, before each prefill, whose K/V the backend's cache holds. Used by the device thread only."""

    def __init__(self, backend: Backend, count: int) -> None:
        self.backend = backend
        self.count = max(1, count) if can_snapshot(backend) else 1
        self.slots: list[Slot] = []
        self.resident: Slot | None = None  # the slot whose tokens the cache holds
        self.target: Slot | None = None  # the slot the running request will leave its tokens in
        self.prompt = 0  # tokens of the running request's prompt
        self.clock = 0
        self.swaps = 0  # snapshots put back into the cache

    @property
    def snapshot_bytes(self) -> int:
        return sum(getattr(slot.snapshot, "nbytes", 0) for slot in self.slots)

    def prepare(self, ids: list[int]) -> None:
        """Before the prefill of ``ids``: put into the cache the slot sharing the longest start with them."""
        self.clock += 1
        self.prompt = len(ids)
        if self.count == 1:
            return
        shared = {id(slot): reusable_prefix(slot.ids, ids) for slot in self.slots}
        best = max(self.slots, key=lambda slot: shared[id(slot)], default=None)
        continued = [slot for slot in self.slots if shared[id(slot)] >= min(slot.prompt, len(ids) - 1)]
        if continued:
            self.target = max(continued, key=lambda slot: shared[id(slot)])
        elif len(self.slots) < self.count:
            self.target = Slot()
            self.slots.append(self.target)
        else:
            self.target = min(self.slots, key=lambda slot: slot.last_used)
        resident_shares = shared.get(id(self.resident), 0)
        if self.resident is not None and self.resident is not self.target and self.resident.snapshot is None:
            self.resident.snapshot = self.backend.save_cache()  # type: ignore[attr-defined]  # it stays a slot
        if best is not None and best is not self.resident and shared[id(best)] > resident_shares:
            self.backend.restore_cache(best.snapshot)  # type: ignore[attr-defined]
            self.resident = best
            self.swaps += 1

    def finish(self) -> None:
        """After the generation (whole, stopped or failed): the cache now holds the target slot's conversation."""
        if self.count == 1 or self.target is None:
            return
        target, self.target = self.target, None
        target.ids = list(getattr(self.backend, "ids", []))
        target.prompt = self.prompt
        target.snapshot = None  # stale: taken again when another conversation takes the cache
        target.last_used = self.clock
        self.resident = target
