"""The KV slots of a llama.cpp context: one KV stream per slot, the tokens each holds, and the
effects on llama.cpp's memory of slots.py's decisions (which slot a prompt takes, a prefix
copied from another slot, a gap closed).

A slot keeps its tokens after its request ends, a cache for the next prompt sharing them.
Copies between streams are queued by llama.cpp and done at the start of the next decode,
before the batch writes: a busy source gives exactly the tokens it had evaluated by then.
Runs on the worker's loop thread, as the engine does."""

from __future__ import annotations

from typing import Any

import llama_cpp as lc

from .slots import choose_slot, closing_move, common_prefix, prefix_source

__all__ = ["KvSlots"]


class KvSlots:
    """`tokens[slot]`: what slot `slot`'s KV stream holds (appended to as the engine
    evaluates); `free`: the slots no sequence uses. Counts go to `stats` (the engine's)."""

    def __init__(self, memory: Any, parallel: int, stats: dict[str, int]) -> None:
        self._mem = memory
        self._stats = stats
        self.free = list(range(parallel))
        self.tokens: list[list[int]] = [[] for _ in range(parallel)]

    def take(self, prompt: list[int], *, reuse: bool) -> tuple[int, int]:
        """A free slot for `prompt` (slots.choose_slot) and how many of its tokens the slot
        holds already, its own or copied from another slot (none unless `reuse`); the slot's
        cells past those are dropped. The last prompt token is always left to evaluate."""
        slot, common = choose_slot(self.free, self.tokens, prompt)
        self.free.remove(slot)
        common = self._share_prefix(slot, common, prompt) if reuse else 0
        keep = min(common, len(prompt) - 1)
        if keep <= 0 or not lc.llama_memory_seq_rm(self._mem, slot, keep, -1):
            lc.llama_memory_seq_rm(self._mem, slot, -1, -1)
            keep = 0
        del self.tokens[slot][keep:]
        self._stats["prompt_tokens_reused"] += keep
        return slot, keep

    def held(self, prompt: list[int]) -> int:
        """The longest prefix of `prompt` any slot holds now."""
        return max(common_prefix(t, prompt) for t in self.tokens)

    def release(self, slot: int) -> None:
        """The slot is free; its cells stay, for the next request sharing the prefix."""
        self.free.append(slot)

    def clear(self, slot: int) -> None:
        """Forget what the slot holds (after a failed decode its cells are not to be trusted)."""
        lc.llama_memory_seq_rm(self._mem, slot, -1, -1)
        self.tokens[slot].clear()

    def close_gaps(self, busy: list[int]) -> list[tuple[int, int]]:
        """Keep the busy slots consecutive (see slots.closing_move): the moves (from, to), in
        order, each the copy of the highest busy slot's stream into a gap, queued; the caller
        moves their sequences. The slot left keeps a copy of its tokens so far, a cache like any
        other; the gap's own cache (the request that just ended there) is what this costs."""
        slots, moves = list(busy), []
        while (move := closing_move(slots, self.free)) is not None:
            src, dst = move
            self._copy(src, dst)
            slots[slots.index(src)] = dst
            self.free.remove(dst)
            self.free.append(src)
            self._stats["slot_moves"] += 1
            moves.append(move)
        return moves

    def _share_prefix(self, slot: int, kept: int, prompt: list[int]) -> int:
        """Copy into `slot` the stream of a slot holding more of `prompt`, if one is worth it
        (see slots.prefix_source); returns the prefix `slot` now holds."""
        found = prefix_source(slot, kept, self.tokens, prompt)
        if found is None:
            return kept
        src, shared = found
        self._copy(src, slot)
        self._stats["prompt_prefix_copies"] += 1
        return shared

    def _copy(self, src: int, dst: int) -> None:
        """Slot `dst`'s stream becomes a copy of `src`'s, whole (llama.cpp copies across
        streams only whole); queued, it happens before the next decode writes."""
        lc.llama_memory_seq_cp(self._mem, src, dst, -1, -1)
        self.tokens[dst] = list(self.tokens[src])
