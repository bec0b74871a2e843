"""Joint against separate: one model trained on a merged dataset (detbench.data.merge) against
the separate models of its parts, the 2020 study's open question ("a single model for both use
cases ... the size of the model can be halved. But it is to be seen how this would impact the
accuracy").

A *joint cell* is a cell whose metrics.json has ``parts``; its *separate cells* are the cells
of the same model, batch and epochs whose dataset is named as a part (the separate studies give
their dataset the part's name; a COCO study's cells carry its manifest's name, which the part
records too), on any platform. Per domain (part): the joint cell's metrics on
that part's images and classes against the separate cell's metrics, as mean and 95% interval
over the repeats; then parameters and file size (one model against the sum of the separate
ones) and prediction time per image (the evaluation's forward, losses and NMS over its split).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detbench import atomic
from detbench.report.document import Document
from detbench.study import cells
from detbench.summary.stats import compare_means, describe

ACCURACY_METRICS = {
    "map50": "mAP@0.5",
    "map50_95": "mAP@.5:.95",
    "precision_at_conf": "P",
    "recall_at_conf": "R",
}


@dataclass(frozen=True)
class CellResult:
    """What the comparison needs of one finished cell."""

    platform: str
    model: str
    batch: int
    epochs: int
    repeat: int
    dataset: str
    split: str
    metrics: dict[str, float | None]  # the whole split's ACCURACY_METRICS
    parts: dict[str, dict[str, Any]]  # metrics.json "parts" (empty for a single dataset)
    pr_confidence: float | None
    parameters: int | None
    file_bytes: int | None
    seconds_per_image: float | None

    @property
    def group(self) -> tuple[str, int, int]:
        return self.model, self.batch, self.epochs


def read_cell(folder: Path) -> CellResult | None:
    """A cell folder's results; None when it is not a finished cell."""
    cell = cells.Cell.from_folder(folder)
    metrics_path = folder / cells.METRICS
    if cell is None or not metrics_path.is_file():
        return None
    evaluation = json.loads(metrics_path.read_text(encoding="utf-8"))
    values = evaluation.get("metrics", {})
    weights = folder / cells.WEIGHTS
    images = evaluation.get("num_images") or 0
    seconds = evaluation.get("eval_seconds")
    return CellResult(
        platform=cell.platform,
        model=cell.model,
        batch=cell.batch,
        epochs=cell.epochs,
        repeat=cell.repeat,
        dataset=str(evaluation.get("dataset")),
        split=str(evaluation.get("split")),
        metrics={key: values.get(key) for key in ACCURACY_METRICS},
        parts=dict(evaluation.get("parts") or {}),
        pr_confidence=values.get("pr_confidence"),
        parameters=parameter_count(weights),
        file_bytes=weights.stat().st_size if weights.is_file() else None,
        seconds_per_image=seconds / images if seconds is not None and images else None,
    )


def parameter_count(weights: Path) -> int | None:
    """Trainable parameters of the model in a cell's weights.pt (its architecture and class
    count; buffers such as BN statistics and anchors left out)."""
    if not weights.is_file():
        return None
    import torch

    from detbench.models import build_model

    payload = torch.load(weights, map_location="cpu", weights_only=True)
    model = build_model(payload["model"], num_classes=len(payload["class_names"]))
    return sum(int(p.numel()) for p in model.parameters())


def read_cells(folders: Iterable[str | Path]) -> list[CellResult]:
    results = (read_cell(Path(folder)) for folder in folders)
    return [result for result in results if result is not None]


# --- the comparison ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainComparison:
    """One part of one joint group: the joint model's runs against the separate model's."""

    domain: str
    joint: list[dict[str, float | None]]  # per joint run: ACCURACY_METRICS on the part
    separate: list[dict[str, float | None]]  # per separate run: ACCURACY_METRICS (whole split)
    separate_cells: list[CellResult]

    def values(self, side: str, metric: str) -> list[float]:
        runs = self.joint if side == "joint" else self.separate
        return [float(run[metric]) for run in runs if run.get(metric) is not None]


@dataclass(frozen=True)
class JointComparison:
    """A joint model (model, batch, epochs) against its parts' separate models."""

    model: str
    batch: int
    epochs: int
    joint_cells: list[CellResult]
    domains: list[DomainComparison] = field(default_factory=list)

    def joint_size(self) -> tuple[int | None, int | None]:
        first = self.joint_cells[0]
        return first.parameters, first.file_bytes

    def separate_size(self) -> tuple[int | None, int | None]:
        """Summed over one separate model per domain (None when a domain has none)."""
        firsts = [d.separate_cells[0] if d.separate_cells else None for d in self.domains]
        if any(c is None or c.parameters is None or c.file_bytes is None for c in firsts):
            return None, None
        return (
            sum(c.parameters for c in firsts if c and c.parameters),
            sum(c.file_bytes for c in firsts if c and c.file_bytes),
        )


def compare(results: Sequence[CellResult]) -> list[JointComparison]:
    """One comparison per joint (model, batch, epochs), its repeats and platforms pooled."""
    comparisons = []
    joint_groups: dict[tuple[str, int, int], list[CellResult]] = {}
    for result in results:
        if result.parts:
            joint_groups.setdefault(result.group, []).append(result)
    for (model, batch, epochs), joint_cells in sorted(joint_groups.items()):
        comparison = JointComparison(model, batch, epochs, joint_cells)
        for domain, scored in joint_cells[0].parts.items():
            # The separate study names its dataset as the part, or (COCO) its manifest does.
            names = {domain, scored.get("dataset") or domain}
            separate = [
                r
                for r in results
                if not r.parts and r.dataset in names and r.group == (model, batch, epochs)
            ]
            comparison.domains.append(
                DomainComparison(
                    domain,
                    [{k: c.parts[domain].get(k) for k in ACCURACY_METRICS} for c in joint_cells],
                    [dict(c.metrics) for c in separate],
                    separate,
                )
            )
        comparisons.append(comparison)
    return comparisons


# --- rendering ---------------------------------------------------------------------------------


def interval_text(values: Sequence[float]) -> str:
    """``0.512 [0.488, 0.536] (n=3)``; a single run has no interval."""
    summary = describe(values)
    if summary is None:
        return "missing"
    if summary.ci_low is None or summary.ci_high is None:
        return f"{summary.mean:.3f} (n=1)"
    return f"{summary.mean:.3f} [{summary.ci_low:.3f}, {summary.ci_high:.3f}] (n={summary.n})"


def accuracy_rows(comparison: JointComparison) -> list[list[str]]:
    rows = []
    for domain in comparison.domains:
        for side, label in (("joint", "joint (1 model)"), ("separate", "separate")):
            rows.append(
                [
                    comparison.model,
                    domain.domain,
                    label,
                    *(interval_text(domain.values(side, m)) for m in ACCURACY_METRICS),
                ]
            )
    return rows


def _millions(count: int | None) -> str:
    return "NA" if count is None else f"{count / 1e6:.2f}"


def _megabytes(size: int | None) -> str:
    return "NA" if size is None else f"{size / 1e6:.1f}"


def _ms(values: Iterable[float | None]) -> str:
    times = [v for v in values if v is not None]
    return "NA" if not times else f"{sum(times) / len(times) * 1000:.1f}"


def size_rows(comparison: JointComparison) -> list[list[str]]:
    parameters, size = comparison.joint_size()
    joint_ms = _ms(c.seconds_per_image for c in comparison.joint_cells)
    rows = [
        [comparison.model, "joint (1 model)", _millions(parameters), _megabytes(size), joint_ms]
    ]
    separate_parameters, separate_size = comparison.separate_size()
    per_domain = "; ".join(
        f"{d.domain} {_ms(c.seconds_per_image for c in d.separate_cells)}"
        for d in comparison.domains
    )
    label = f"separate ({len(comparison.domains)} models)"
    rows.append(
        [
            comparison.model,
            label,
            _millions(separate_parameters),
            _megabytes(separate_size),
            per_domain,
        ]
    )
    return rows


def finding(comparison: JointComparison) -> str:
    """The 2020 question answered with this comparison's numbers."""
    parameters, size = comparison.joint_size()
    separate_parameters, separate_size = comparison.separate_size()
    epochs = f"{comparison.epochs} epoch{'s' if comparison.epochs != 1 else ''}"
    text = f"{comparison.model} (batch {comparison.batch}, {epochs}): one model "
    text += f"for {' and '.join(d.domain for d in comparison.domains)} has "
    if parameters and separate_parameters and size and separate_size:
        text += (
            f"{_millions(parameters)} M parameters ({_megabytes(size)} MB) against "
            f"{_millions(separate_parameters)} M ({_megabytes(separate_size)} MB) for the "
            f"separate models, {parameters / separate_parameters:.2f} times their size"
        )
    else:
        text += "a size that cannot be compared (a separate model is missing)"
    clauses = []
    for domain in comparison.domains:
        joint, separate = domain.values("joint", "map50"), domain.values("separate", "map50")
        if not joint or not separate:
            clauses.append(f"{domain.domain}: no separate cell to compare")
            continue
        difference = compare_means(joint, separate, ("joint", "separate"))
        interval = (
            f" [{difference.ci_low:+.3f}, {difference.ci_high:+.3f}]"
            if difference.ci_low is not None and difference.ci_high is not None
            else ""
        )
        clauses.append(
            f"on {domain.domain} its mAP@0.5 is {interval_text(joint)} against "
            f"{interval_text(separate)} alone (difference {difference.difference:+.3f}"
            f"{interval}: {difference.verdict})"
        )
    return text + "; " + "; ".join(clauses) + "."


def joint_document(comparisons: Sequence[JointComparison]) -> Document:
    document = Document("Joint against separate models")
    if not comparisons:
        document.paragraph("No joint cell (a study with dataset.source: merge) is finished yet.")
        return document
    document.paragraph(
        "One model trained on the merged dataset against a separate model per part, with the "
        "same model, batch size and epochs. Accuracy per domain on that domain's evaluation "
        "images: for the joint model its metrics on the part's images and classes, for a "
        "separate model its own evaluation. Mean over the repeats with a 95% Student-t "
        "interval [low, high] and the number of runs n."
    )
    document.bullets([finding(c) for c in comparisons])
    pr_confidence = next(
        (c.pr_confidence for comp in comparisons for c in comp.joint_cells if c.pr_confidence),
        None,
    )
    document.heading("Accuracy per domain")
    document.table(accuracy_headers(), [row for c in comparisons for row in accuracy_rows(c)])
    document.note(
        "mAP@0.5 and mAP@.5:.95: COCO 101-point AP, mean over the domain's classes with ground "
        f"truth; P and R at confidence {pr_confidence}, IoU 0.5, class mean."
    )
    document.heading("Size and speed")
    document.table(size_headers(), [row for c in comparisons for row in size_rows(c)])
    document.note(
        "Parameters: trainable parameters of the trained weights (M = 10^6); file: the cell's "
        "weights.pt (MB = 10^6 bytes), summed over the separate models; prediction time: the "
        "evaluation's forward pass, losses and NMS per image on its evaluation split (ms, its "
        "device and evaluate.batch_size), mean over runs, per domain for the separate models."
    )
    return document


def accuracy_headers() -> list[str]:
    return ["Model", "Domain", "Models", *ACCURACY_METRICS.values()]


def size_headers() -> list[str]:
    return ["Model", "Models", "Parameters (M)", "File (MB)", "Prediction time (ms/image)"]


def joint_csv(comparisons: Sequence[JointComparison]) -> str:
    """One row per run and domain: the figures behind the accuracy table."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            *("model", "batch", "epochs", "domain", "models", "platform", "repeat", "dataset"),
            *ACCURACY_METRICS,
            *("parameters", "file_bytes", "seconds_per_image"),
        ]
    )
    for comparison in comparisons:
        for domain in comparison.domains:
            sides = (
                ("joint", comparison.joint_cells, domain.joint),
                ("separate", domain.separate_cells, domain.separate),
            )
            for side, side_cells, runs in sides:
                for cell, run in zip(side_cells, runs, strict=True):
                    writer.writerow(
                        [comparison.model, comparison.batch, comparison.epochs, domain.domain]
                        + [side, cell.platform, cell.repeat, cell.dataset]
                        + ["" if run[m] is None else run[m] for m in ACCURACY_METRICS]
                        + [cell.parameters, cell.file_bytes, cell.seconds_per_image]
                    )
    return buffer.getvalue()


def write_joint(cell_folders: Iterable[str | Path], paths: dict[str, str]) -> Document:
    """The comparison of the finished cells among ``cell_folders`` into ``paths`` (csv, md,
    html)."""
    comparisons = compare(read_cells(cell_folders))
    document = joint_document(comparisons)
    atomic.write_text(paths["csv"], joint_csv(comparisons))
    atomic.write_text(paths["md"], document.to_markdown())
    atomic.write_text(paths["html"], document.to_html())
    return document
