"""Piece buffers kept for reuse by a downloader (``shoal.cache.buffers``, re-exported
here because the peer client is what fills them)."""

from __future__ import annotations

from shoal.cache.buffers import BufferPool

__all__ = ["BufferPool"]
