"""The dataset the cells trained and were evaluated on, from its ``manifest.json``: a Data table."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from detbench import atomic
from detbench.errors import DetbenchError, read_json
from detbench.report.document import Document
from detbench.report.layout import ReportLayout


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    manifest = read_json(path, missing="missing (convert the dataset first)")
    if "counts" not in manifest or "class_names" not in manifest:
        raise DetbenchError(f"{path}: no 'counts' or 'class_names' (not a detbench manifest)")
    return manifest


def split_rows(manifest: dict[str, Any], dataset: dict[str, Any]) -> tuple[list[str], list[list]]:
    """Headers and one row per split: images, boxes per class, boxes in all, its role."""
    classes = list(manifest["class_names"])
    roles = {
        dataset.get("train_split", "train"): "training",
        dataset.get("eval_split", "test"): "evaluation",
    }
    headers = ["Split", "Role", "Images", *(f"{c} boxes" for c in classes), "Boxes (all)"]
    rows = []
    for split, counts in manifest["counts"].items():
        boxes = [int(counts.get("boxes", {}).get(c, 0)) for c in classes]
        rows.append([split, roles.get(split, "—"), int(counts["images"]), *boxes, sum(boxes)])
    return headers, rows


def dataset_document(manifest: dict[str, Any], dataset: dict[str, Any]) -> Document:
    headers, rows = split_rows(manifest, dataset)
    document = Document(f"Dataset: {manifest.get('dataset', dataset.get('name', 'NA'))}")
    document.paragraph(
        f"Source: {dataset.get('source', 'NA')}. Classes in label order: "
        f"{', '.join(manifest['class_names'])}. Counts are of the converted YOLO labels the "
        "cells read (images, and boxes per class)."
    )
    document.table(headers, [[str(v) for v in row] for row in rows])
    dropped = len(manifest.get("dropped_boxes", []))
    clipped = manifest.get("clipped_boxes", 0)
    document.note(
        f"Conversion: {dropped} degenerate boxes dropped, {clipped} boxes clipped to the image."
    )
    skipped = manifest.get("skipped_images", [])
    if skipped:
        # dataset.on_bad_image: skip; the reader must know the cells trained on fewer images.
        names = "; ".join(f"{item['file']} ({item['problem']})" for item in skipped[:10])
        more = f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        document.note(
            f"Skipped {len(skipped)} bad images (dataset.on_bad_image: skip): {names}{more}."
        )
    return document


def write_dataset(manifest_path: str | Path, dataset: dict[str, Any], layout: ReportLayout) -> None:
    manifest = read_manifest(manifest_path)
    headers, rows = split_rows(manifest, dataset)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(rows)
    document = dataset_document(manifest, dataset)
    entries = {e.path.rsplit(".", 1)[-1]: e.path for e in layout.dataset()}
    atomic.write_text(entries["csv"], buffer.getvalue())
    atomic.write_text(entries["md"], document.to_markdown())
    atomic.write_text(entries["html"], document.to_html())
