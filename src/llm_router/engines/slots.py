"""Which KV slot a new request takes, and where its prompt prefix comes from: pure decisions
over the token lists the slots hold (no llama.cpp here; the engine applies them).

Two facts of llama.cpp with one KV stream per slot shape them. It splits a batch wherever its
sequence ids stop being consecutive (`split_equal(sequential=true)`: "accept only increasing
sequence ids") and runs the whole model once per piece, so busy slots {0, 2, 3, 5} cost three
passes where {0, 1, 2, 3} cost one (measured: five streams decoding 1.7x slower with gaps).
And a copy between streams moves a whole stream: worth it for a shared system prompt or to
close a gap, not for a few tokens."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MIN_SHARED_PREFIX", "choose_slot", "closing_move", "common_prefix", "prefix_source"]

# Reuse a slot out of the packing order, or copy another slot's stream, only when it saves at
# least this many prompt tokens.
MIN_SHARED_PREFIX = 32


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def choose_slot(
    free: Sequence[int], held: Sequence[Sequence[int]], tokens: Sequence[int]
) -> tuple[int, int]:
    """The free slot for `tokens` and the prefix of them it holds (`held[slot]` is what each
    slot's cache holds): the one holding the longest prefix when that saves at least
    MIN_SHARED_PREFIX tokens (a chat's next turn), else the lowest free slot (packing)."""
    lowest = min(free)
    kept = common_prefix(held[lowest], tokens)
    best, best_len = lowest, kept
    for slot in free:
        n = common_prefix(held[slot], tokens)
        if n > best_len:
            best, best_len = slot, n
    return (best, best_len) if best_len - kept >= MIN_SHARED_PREFIX else (lowest, kept)


def prefix_source(
    slot: int, kept: int, held: Sequence[Sequence[int]], tokens: Sequence[int]
) -> tuple[int, int] | None:
    """Another slot, busy or free, holding at least MIN_SHARED_PREFIX more tokens of `tokens`
    than `slot` does (eight chats with one system prompt, say), and how many: copy it rather
    than evaluate the prefix again. None when no slot is worth copying."""
    src, shared = slot, kept
    for other, cached in enumerate(held):
        if other != slot and len(cached) > shared:
            n = common_prefix(cached, tokens)
            if n > shared:
                src, shared = other, n
    if src == slot or shared - kept < MIN_SHARED_PREFIX:
        return None
    return src, shared


def closing_move(busy: Sequence[int], free: Sequence[int]) -> tuple[int, int] | None:
    """A move (from, to) of the highest busy slot into the lowest free slot below it, when the
    busy slots are not one consecutive run (a request that finished, or one placed by its
    cached prefix, left a gap); None when they are. Repeated, it leaves them consecutive."""
    if not busy:
        return None
    low, high = min(busy), max(busy)
    gaps = [f for f in free if low < f < high]
    return (high, min(gaps)) if gaps else None
