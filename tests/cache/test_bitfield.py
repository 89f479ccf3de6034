from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.cache import Bitfield


def test_msb_first_layout_and_count() -> None:
    field = Bitfield(10)
    for i in (0, 7, 9):
        field.set(i)
    field.set(9)
    assert field.to_bytes() == bytes([0b10000001, 0b01000000])
    assert field.count == 3 and not field.all()
    field.clear(7)
    field.clear(7)
    assert list(field.indices()) == [0, 9] and field.count == 2
    with pytest.raises(IndexError):
        field.set(10)


def test_from_bytes_refuses_spare_bits_and_wrong_length() -> None:
    with pytest.raises(ValueError, match="spare"):
        Bitfield.from_bytes(10, bytes([0, 0b00100000]))
    with pytest.raises(ValueError, match="bytes"):
        Bitfield.from_bytes(10, b"\x00")


@given(
    st.integers(0, 300).flatmap(
        lambda n: st.tuples(st.just(n), st.sets(st.integers(0, max(n - 1, 0))))
    )
)
def test_roundtrip(case: tuple[int, set[int]]) -> None:
    size, bits = case
    bits = {b for b in bits if b < size}
    field = Bitfield(size)
    for b in bits:
        field.set(b)
    again = Bitfield.from_bytes(size, field.to_bytes())
    assert again == field and set(again.indices()) == bits and again.count == len(bits)
    assert again.all() == (len(bits) == size)
