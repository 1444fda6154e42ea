"""A read-only sequence whose items are made on access (``_one(i)``), indexed and compared as the list it
stands for: slices are lists, negative indices count from the end, equality is element-wise."""

from __future__ import annotations

import operator
from collections.abc import Sequence


class LazyList(Sequence):
    def _one(self, i: int):  # pragma: no cover - each subclass makes its items
        raise NotImplementedError

    def __getitem__(self, i):
        n = len(self)
        if isinstance(i, slice):
            return [self._one(j) for j in range(*i.indices(n))]
        i = operator.index(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"item {i} of {n}")
        return self._one(i)

    def __eq__(self, other) -> bool:
        if isinstance(other, (LazyList, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]
