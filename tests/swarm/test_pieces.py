from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.swarm import (
    PieceIndexError,
    from_bitfield,
    indices_of,
    lowest,
    mask_of,
    piece_count,
    piece_length,
    to_bitfield,
)


def test_piece_arithmetic() -> None:
    assert piece_count(0, 4) == 0
    assert piece_count(9, 4) == 3
    assert piece_length(9, 4, 2) == 1
    assert piece_length(8, 4, 1) == 4
    with pytest.raises(PieceIndexError):
        piece_length(8, 4, 2)
    with pytest.raises(PieceIndexError):
        piece_count(8, 0)


def test_bitfield_is_bittorrent_layout() -> None:
    assert to_bitfield(mask_of([0]), 10) == b"\x80\x00"
    assert to_bitfield(mask_of([9]), 10) == b"\x00\x40"
    with pytest.raises(PieceIndexError):
        from_bitfield(b"\x00\x01", 10)  # spare bit set


@given(
    st.integers(min_value=1, max_value=300).flatmap(
        lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1)))
    )
)
def test_bitfield_roundtrip(case: tuple[int, set[int]]) -> None:
    n, idx = case
    mask = mask_of(idx)
    assert from_bitfield(to_bitfield(mask, n), n) == mask
    assert list(indices_of(mask)) == sorted(idx)
    assert lowest(mask) == (min(idx) if idx else -1)
