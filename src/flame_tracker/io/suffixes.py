"""The file suffixes flame-tracker reads as photos and as videos (light: no decoder is imported, so
the batch driver can sort its inputs with them)."""

from __future__ import annotations

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES"]
