"""Every file of the report, named in one place with its report category, subcategory and labels.

``rules/report.smk`` declares these files as outputs (flagged with ``report()`` for
``snakemake --report``), and the report scripts write them; both ask this module, so the names
agree by construction. Standard library only: the workflow imports it at parse time.

The platforms shown are the measured ones (the active platform first, then any other platform
whose cells are under ``results/``) and the two published 2020 platforms.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from detbench.report.reference import REFERENCE_PLATFORMS, platform_label, reference_cells
from detbench.study.cells import Cell

REPORT_DIR = "results/report"

# Report categories (the menu of report.html).
FINDINGS = "Findings"
ACCURACY = "Accuracy"
TRAINING_TIME = "Training time"
RESOURCES = "Resources"
PLATFORMS = "Platforms"
DATA = "Data"
DEPLOYMENT = "Deployment"


@dataclasses.dataclass(frozen=True)
class ReportEntry:
    """One output file; ``category`` None: written beside the report, not shown in it."""

    path: str
    category: str | None = None
    subcategory: str | None = None
    labels: dict[str, str] | None = None
    caption: str | None = None  # file name under report/ (the captions folder)

    def report_options(self) -> dict[str, Any]:
        """Keyword arguments of Snakemake's ``report()`` for this file (rules/ is one folder
        below the captions in report/)."""
        return {
            "caption": f"../report/{self.caption}",
            "category": self.category,
            "subcategory": self.subcategory,
            "labels": self.labels,
        }


def slug(label: str) -> str:
    """File-name form of a platform label: ``x (published 2020)`` -> ``x-published-2020``."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", label).strip("-")


@dataclasses.dataclass(frozen=True)
class ReportLayout:
    """What the report shows: platforms, their models, the study grid and the batch sizes."""

    measured: tuple[str, ...]
    measured_models: dict[str, tuple[str, ...]]
    published: tuple[str, ...]
    published_models: dict[str, tuple[str, ...]]
    grid_batch_sizes: tuple[int, ...]
    grid_epochs: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    root: str = REPORT_DIR
    joint: bool = False  # a merged dataset: the joint-against-separate section (report.joint)

    @property
    def platforms(self) -> tuple[str, ...]:
        return self.measured + self.published

    @property
    def models(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for models in (*self.measured_models.values(), *self.published_models.values()):
            seen.update(dict.fromkeys(models))
        return tuple(seen)

    def platform_models(self) -> list[tuple[str, str]]:
        """(platform, model) pairs that get a study table, in report order."""
        pairs = [(p, m) for p in self.measured for m in self.measured_models[p]]
        pairs += [(p, m) for p in self.published for m in self.published_models[p]]
        return pairs

    # -- files, one method per report rule -------------------------------------------------

    def tables(self) -> list[ReportEntry]:
        entries = []
        for platform, model in self.platform_models():
            stem = self.table_stem(platform, model)
            entries += [
                ReportEntry(f"{stem}.csv"),
                ReportEntry(f"{stem}.md"),
                ReportEntry(
                    f"{stem}.html",
                    PLATFORMS,
                    "Study tables (platform × model)",
                    {"platform": platform, "model": model},
                    "study_table.rst",
                ),
            ]
        return entries

    def table_stem(self, platform: str, model: str) -> str:
        return f"{self.root}/tables/{slug(platform)}_{model}"

    def comparison(self) -> list[ReportEntry]:
        folder = f"{self.root}/comparison"
        return [
            ReportEntry(f"{folder}/cells.csv"),
            ReportEntry(f"{folder}/summary.csv"),
            ReportEntry(f"{folder}/comparison.md"),
            ReportEntry(
                f"{folder}/comparison.html",
                PLATFORMS,
                "Platform comparison",
                {"table": "platform comparison per model and batch size"},
                "comparison.rst",
            ),
        ]

    def findings(self) -> list[ReportEntry]:
        return [
            ReportEntry(f"{self.root}/findings.md"),
            ReportEntry(
                f"{self.root}/findings.html",
                FINDINGS,
                None,
                {"text": "findings"},
                "findings.rst",
            ),
        ]

    def waiting(self) -> list[ReportEntry]:
        """The section "Waiting and allocation" (detbench.report.waiting)."""
        return [
            ReportEntry(f"{self.root}/waiting.md"),
            ReportEntry(
                f"{self.root}/waiting.html",
                RESOURCES,
                "Waiting and allocation",
                {"text": "queue wait, efficiency, GPU-hours, time to target"},
                "waiting.rst",
            ),
        ]

    def deployment(self) -> list[ReportEntry]:
        return [
            ReportEntry(f"{self.root}/deployment.md"),
            ReportEntry(
                f"{self.root}/deployment.html",
                DEPLOYMENT,
                None,
                {"text": "deployment"},
                "deployment.rst",
            ),
        ]

    def dataset(self) -> list[ReportEntry]:
        folder = f"{self.root}/data"
        return [
            ReportEntry(f"{folder}/dataset.csv"),
            ReportEntry(f"{folder}/dataset.md"),
            ReportEntry(
                f"{folder}/dataset.html",
                DATA,
                None,
                {"table": "dataset manifest"},
                "dataset.rst",
            ),
        ]

    def joint_models(self) -> list[ReportEntry]:
        """Joint against separate models (detbench.report.joint); only for a merged dataset."""
        if not self.joint:
            return []
        folder = f"{self.root}/joint"
        return [
            ReportEntry(f"{folder}/joint.csv"),
            ReportEntry(f"{folder}/joint.md"),
            ReportEntry(
                f"{folder}/joint.html",
                ACCURACY,
                "Joint against separate models",
                {"table": "joint against separate"},
                "joint.rst",
            ),
        ]

    def plots(self) -> list[ReportEntry]:
        entries: list[ReportEntry] = []
        for batch in self.batch_sizes:
            entries += self._figure(
                f"train_time_b{batch}",
                TRAINING_TIME,
                "Train time vs epochs",
                {"batch": str(batch)},
                "train_time.rst",
            )
        for model in self.models:
            for batch in self.batch_sizes:
                entries += self._figure(
                    f"accuracy_{model}_b{batch}",
                    ACCURACY,
                    "Precision, recall and mAP vs epochs",
                    {"model": model, "batch": str(batch)},
                    "accuracy.rst",
                )
        for platform in self.measured:
            for model in self.measured_models[platform]:
                entries += self._figure(
                    f"loss_{slug(platform)}_{model}",
                    TRAINING_TIME,
                    "Loss curves",
                    {"platform": platform, "model": model},
                    "loss_curves.rst",
                )
        for model in self.models:
            entries += self._figure(
                f"speed_ratio_{model}",
                PLATFORMS,
                "Speed ratio",
                {"model": model},
                "speed_ratio.rst",
            )
            entries += self._figure(
                f"memory_{model}",
                RESOURCES,
                "Memory vs batch size",
                {"model": model},
                "memory.rst",
            )
        for model in self.models:
            entries += self._figure(
                f"spread_{model}",
                TRAINING_TIME,
                "Repeats: every run, mean and 95% interval",
                {"model": model},
                "spread.rst",
            )
        entries += self._figure(
            "consistency", PLATFORMS, "Consistency over repeats", {"table": "CV"}, "consistency.rst"
        )
        for platform in self.measured:
            entries += self._figure(
                f"time_breakdown_{slug(platform)}",
                TRAINING_TIME,
                "Where the time went",
                {"platform": platform},
                "time_breakdown.rst",
            )
        for platform in self.measured:
            entries += self._figure(
                f"gpu_utilisation_{slug(platform)}",
                RESOURCES,
                "GPU utilisation of the longest cell",
                {"platform": platform},
                "gpu_utilisation.rst",
            )
        return entries

    def plot_path(self, name: str) -> str:
        return f"{self.root}/plots/{name}.png"

    def _figure(
        self, name: str, category: str, subcategory: str, labels: dict[str, str], caption: str
    ) -> list[ReportEntry]:
        # PNG for the report, SVG beside it for papers and slides.
        png = self.plot_path(name)
        return [
            ReportEntry(png, category, subcategory, labels, caption),
            ReportEntry(png[: -len(".png")] + ".svg"),
        ]

    def all_paths(self) -> list[str]:
        groups = (
            self.tables,
            self.comparison,
            self.findings,
            self.deployment,
            self.dataset,
            self.plots,
            self.waiting,
            self.joint_models,
        )
        return [entry.path for group in groups for entry in group()]

    # -- passing the layout to the report scripts (Snakemake params) -----------------------

    def to_params(self) -> dict[str, Any]:
        params = dataclasses.asdict(self)
        params["measured_models"] = {k: list(v) for k, v in self.measured_models.items()}
        params["published_models"] = {k: list(v) for k, v in self.published_models.items()}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ReportLayout:
        return cls(
            measured=tuple(params["measured"]),
            measured_models={k: tuple(v) for k, v in params["measured_models"].items()},
            published=tuple(params["published"]),
            published_models={k: tuple(v) for k, v in params["published_models"].items()},
            grid_batch_sizes=tuple(int(b) for b in params["grid_batch_sizes"]),
            grid_epochs=tuple(int(e) for e in params["grid_epochs"]),
            batch_sizes=tuple(int(b) for b in params["batch_sizes"]),
            root=params.get("root", REPORT_DIR),
            joint=bool(params.get("joint", False)),
        )


def build_layout(
    platform: str,
    models: Iterable[str],
    batch_sizes: Iterable[int],
    epochs: Iterable[int],
    other_cells: Iterable[str | Path] = (),
    reference: str | Path | None = None,
    root: str = REPORT_DIR,
    *,
    joint: bool = False,
) -> ReportLayout:
    """The layout of a study on ``platform`` with other platforms' cell folders beside it."""
    measured_models: dict[str, dict[str, None]] = {platform: dict.fromkeys(models)}
    batches = {int(b) for b in batch_sizes}
    for folder in other_cells:
        cell = Cell.from_folder(folder)
        if cell is None:
            continue
        measured_models.setdefault(cell.platform, {})[cell.model] = None
        batches.add(cell.batch)
    published_models: dict[str, dict[str, None]] = {}
    for label, model, batch, _ in reference_cells(reference):
        published_models.setdefault(label, {})[model] = None
        batches.add(batch)
    others = sorted(p for p in measured_models if p != platform)
    labels = [platform_label(p) for p in REFERENCE_PLATFORMS]
    published = [label for label in labels if label in published_models]
    return ReportLayout(
        measured=(platform, *others),
        measured_models={p: tuple(measured_models[p]) for p in (platform, *others)},
        published=tuple(published),
        published_models={p: tuple(published_models[p]) for p in published},
        grid_batch_sizes=tuple(int(b) for b in batch_sizes),
        grid_epochs=tuple(int(e) for e in epochs),
        batch_sizes=tuple(sorted(batches)),
        root=root,
        joint=joint,
    )
