from __future__ import annotations

import pytest

from shoal.cache.layout import MAX_PIECE_SIZE, MAX_PIECES, MiB, choose_piece_size, piece_count


@pytest.mark.parametrize(
    ("size", "piece"),
    [
        (0, 512 << 10),
        (586, 512 << 10),  # an image config: one small piece
        (16 * MiB, 512 << 10),  # a small layer: 32 pieces, short hops down the trees
        (32 * MiB, 512 << 10),
        (32 * MiB + 1, 1 * MiB),
        (64 * MiB, 1 * MiB),
        (64 * MiB + 1, 2 * MiB),
        (512 * MiB, 8 * MiB),
        (10 * 1024 * MiB, 16 * MiB),  # capped: 640 pieces
    ],
)
def test_automatic_piece_size_follows_the_blob(size: int, piece: int) -> None:
    assert choose_piece_size(size) == piece


def test_a_configured_piece_size_wins_unless_the_blob_would_need_too_many() -> None:
    assert choose_piece_size(512 * MiB, 4 * MiB) == 4 * MiB
    huge = MAX_PIECES * 4 * MiB + 1
    got = choose_piece_size(huge, 1 * MiB)
    assert piece_count(huge, got) <= MAX_PIECES and got <= MAX_PIECE_SIZE
