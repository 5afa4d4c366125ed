"""The replay buffer of DistiLLM's student-generated outputs: bounded, first in first out.

When full, pushing evicts the oldest sequences (the student that generated them is the most
out of date). Sampling draws without replacement from a caller-seeded generator.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["ReplayBuffer"]


class ReplayBuffer:
    """A FIFO buffer of training sequences (feature dicts of int lists).

    Parameters
    ----------
    capacity : int >= 1
        Sequences kept; DistiLLM uses 1000.
    """

    def __init__(self, capacity: int = 1000) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self._items: deque[dict[str, list[int]]] = deque(maxlen=self.capacity)
        self.pushed = 0  # sequences ever pushed (evicted ones included)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) == self.capacity

    def push(self, items: Iterable[dict[str, list[int]]]) -> None:
        """Append sequences; when full, the oldest ones are evicted."""
        for item in items:
            self._items.append({k: list(v) for k, v in item.items()})
            self.pushed += 1

    def sample(self, n: int, generator: torch.Generator) -> list[dict[str, list[int]]]:
        """``n`` distinct sequences drawn uniformly (``n`` <= len)."""
        if not 0 < n <= len(self._items):
            raise ValueError(f"cannot sample {n} sequences from a replay buffer holding {len(self._items)}")
        order = torch.randperm(len(self._items), generator=generator)[:n].tolist()
        return [dict(self._items[i]) for i in order]

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "pushed": self.pushed, "items": list(self._items)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"saved replay buffer has capacity {state['capacity']}, this run {self.capacity}")
        self._items = deque((dict(i) for i in state["items"]), maxlen=self.capacity)
        self.pushed = int(state["pushed"])
