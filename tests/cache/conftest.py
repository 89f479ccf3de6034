from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from shoal.cache import PieceStore

StoreFactory = Callable[..., PieceStore]


@pytest.fixture
def store_factory(tmp_path: Path) -> StoreFactory:
    def make(path: Path | None = None, capacity: int = 1 << 30, **kw: Any) -> PieceStore:
        return PieceStore(path or tmp_path / "cache", capacity=capacity, **kw)

    return make


@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[PieceStore]:
    async with store_factory() as s:
        yield s
