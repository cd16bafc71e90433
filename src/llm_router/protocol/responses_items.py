"""The output items `/v1/responses` answered with, kept so that a later request may name one as
`{"type": "item_reference", "id": "msg_..."}` instead of sending it again. The AI SDK's OpenAI
provider (`createOpenAI(...)(model)`, whose `store` is true unless told otherwise) sends every
earlier assistant message of a conversation that way, so its second turn was a 400 here.

Only the items are kept, not the responses (`previous_response_id` stays a 400), and only in
this process's memory: the most recent, within a count and a total size, lost on a restart
(and, under `serve --workers N`, seen by the process that answered). An item is found only by
the caller it was answered to (the same API key, or the same lack of one); a request with
`store: false` leaves none."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

__all__ = ["OutputItems"]

MAX_ITEMS = 10_000
MAX_CHARS = 64 << 20  # of the items as JSON: a bound on the memory they take


class OutputItems:
    """The most recent output items by id, each with its owner (an API key's hash, or None)."""

    def __init__(self, max_items: int = MAX_ITEMS, max_chars: int = MAX_CHARS) -> None:
        self.max_items = max_items
        self.max_chars = max_chars
        self.chars = 0
        self._items: OrderedDict[str, tuple[str | None, dict[str, Any], int]] = OrderedDict()

    def keep(self, owner: str | None, items: list[dict[str, Any]]) -> None:
        for item in items:
            size = len(json.dumps(item, ensure_ascii=False))
            if size > self.max_chars:
                continue  # larger than all may be: not kept, rather than evicting everything
            old = self._items.pop(item["id"], None)
            if old is not None:
                self.chars -= old[2]
            self._items[item["id"]] = (owner, item, size)
            self.chars += size
        while len(self._items) > self.max_items or self.chars > self.max_chars:
            _, (_, _, size) = self._items.popitem(last=False)
            self.chars -= size

    def get(self, owner: str | None, item_id: Any) -> dict[str, Any] | None:
        """The item, if it is still kept and was answered to `owner`."""
        found = self._items.get(item_id) if isinstance(item_id, str) else None
        if found is None or found[0] != owner:
            return None
        return found[1]
