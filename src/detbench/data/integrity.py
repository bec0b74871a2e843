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
from typing import Any

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


# The step that rebuilds a converted dataset from its source (the workflow's rule names).
REBUILD_HINT = "then rerun the data steps (snakemake --forcerun download)"


@dataclass(frozen=True)
class MadeFrom:
    """What a converted dataset's manifest says it was made from."""

    manifest: Path
    copy_root: Path  # the VOC folder the labels were converted from
    origin_root: Path  # the user's dataset it was copied from (== copy_root for named sources)
    sizes: dict[str, int]  # relative path -> size in bytes at conversion

    @classmethod
    def from_manifest(cls, manifest: Path, raw: dict[str, Any]) -> MadeFrom | None:
        """None for a manifest written before conversion recorded its files."""
        if "source_files" not in raw or "source" not in raw:
            return None
        copy_root = Path(raw["source"])
        return cls(
            manifest=manifest,
            copy_root=copy_root,
            origin_root=Path(raw.get("origin") or copy_root),
            sizes={item["path"]: int(item["size"]) for item in raw["source_files"]},
        )

    def check(self, relative_paths: list[str]) -> None:
        """DetbenchError naming the user's file when one of these is gone or has changed.

        A deleted source file is reported before a missing copy: a failed copy step removes
        the whole copy, and the file to restore is the deleted one, not the first of the list.
        """
        converted = self.manifest.parent
        recorded = [rel for rel in relative_paths if rel in self.sizes]
        missing = [rel for rel in recorded if not (self.copy_root / rel).is_file()]
        deleted = [rel for rel in missing if not (self.origin_root / rel).is_file()]
        if deleted:
            raise FileProblem(
                self.origin_root / deleted[0],
                f"image file does not exist, but {converted} was converted from it; restore "
                f"it or remove it from the ImageSets/Main lists, {REBUILD_HINT}",
            )
        if missing:
            raise FileProblem(
                self.copy_root / missing[0],
                f"image file does not exist (the workflow's copy of "
                f"{self.origin_root / missing[0]}, which does); {REBUILD_HINT}",
            )
        for rel in recorded:
            size = (self.copy_root / rel).stat().st_size
            if size != self.sizes[rel]:
                raise FileProblem(
                    self.origin_root / rel,
                    f"changed since {converted} was converted from it ({self.sizes[rel]} bytes "
                    f"then, {size} now); {REBUILD_HINT}",
                )
