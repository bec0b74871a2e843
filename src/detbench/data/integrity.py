"""Checks that keep bad data out of training: every image decoded once at conversion, and a
converted dataset that notices when the files it was made from are gone or changed.

Training decodes with OpenCV, which decodes a truncated or corrupt JPEG anyway (the missing part
grey) and only prints libjpeg's warning (``Premature end of JPEG file``) on stderr. Conversion
therefore decodes each image with the same call and treats anything the decoder prints as an
error, so such an image is refused (or skipped) with its name instead of training silently.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2

from detbench.errors import FileProblem


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Collect what C libraries write to file descriptor 2 inside the block.

    libjpeg and libpng report damage there, not through OpenCV's return value. The descriptor
    is process-wide: conversion runs in one thread, so nothing else's output is swallowed.
    """
    captured: list[str] = []
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.extend(sink.read().decode("utf-8", errors="replace").splitlines())


def decode_image_file(path: Path) -> tuple[int, int]:
    """(width, height) of ``path`` as training decodes it; FileProblem for a missing, unreadable,
    truncated or corrupt image (any decoder warning)."""
    if not path.is_file():
        raise FileProblem(path, "image file does not exist")
    with _stderr_captured() as messages:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    warnings = [m.strip() for m in messages if m.strip() and "[ WARN:" not in m]
    if image is None:
        detail = f" ({warnings[0]})" if warnings else ""
        raise FileProblem(path, f"not a readable image{detail}")
    if warnings:
        # e.g. "Premature end of JPEG file": the decoder filled the rest of the image with grey.
        raise FileProblem(path, f"damaged image, the decoder says: {'; '.join(warnings[:2])}")
    return int(image.shape[1]), int(image.shape[0])


# --- what a converted dataset was made from -------------------------------------------------


@dataclass(frozen=True)
class SourceFile:
    """One file a converted dataset was made from, as it was at conversion."""

    path: str  # relative to the VOC root the dataset was converted from
    size: int

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "size": self.size}


def record_files(root: Path, relative_paths: list[str]) -> list[SourceFile]:
    return [SourceFile(rel, (root / rel).stat().st_size) for rel in relative_paths]
