"""Which KV slot a new request takes, and where its prompt prefix comes from: pure decisions
over the token lists the slots hold (no llama.cpp here; the engine applies them).

Two facts of llama.cpp with one KV stream per slot shape them: its attention spans every
stream from the lowest busy slot to the highest (four streams spread over eight slots decoded
at half the speed of four packed ones), and a copy between streams moves a whole stream, worth
it for a shared system prompt but not for a few tokens."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MIN_SHARED_PREFIX", "choose_slot", "common_prefix", "prefix_source"]

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
