"""Responses kept in memory, for `previous_response_id` and GET/DELETE /v1/responses/{id}.

Bounded by `limits.stored_responses` (the oldest go first) and lost at restart: this is the
state of one server process, not a database."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

from .wire import ResponseObject


@dataclass(frozen=True)
class Stored:
    """A finished response and the conversation it ends: its whole input (earlier responses'
    included) and its output, as input items for the next turn."""

    response: ResponseObject
    conversation: tuple[Any, ...]


class ResponseStore:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._by_id: collections.OrderedDict[str, Stored] = collections.OrderedDict()

    def put(self, stored: Stored) -> None:
        if self.capacity <= 0:
            return
        self._by_id[stored.response.id] = stored
        while len(self._by_id) > self.capacity:
            self._by_id.popitem(last=False)

    def get(self, response_id: str) -> Stored | None:
        return self._by_id.get(response_id)

    def delete(self, response_id: str) -> bool:
        return self._by_id.pop(response_id, None) is not None

    def __len__(self) -> int:
        return len(self._by_id)
