"""The report's joint-against-separate table (detbench.report.joint): from cell folders as the
workflow writes them, and end to end from the test configs (tests/configs/joint*.yaml)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from http_server import LocalHTTPServer, http_server_fixture  # noqa: F401 (fixture)

from detbench.data.coco import COCO_CLASSES
from detbench.evaluation.inference import save_trained_model
from detbench.models import build_model
from detbench.report.joint import compare, read_cells, write_joint
from detbench.summary.stats import describe

BLOOD = ["RBC", "WBC", "Platelets"]
REPO = Path(__file__).resolve().parents[1]


def write_cell(
    folder: Path,
    dataset: str,
    class_names: list[str],
    map50: float,
    parts: dict[str, Any] | None = None,
) -> Path:
    """A finished cell folder: weights.pt of an untrained model and a metrics.json."""
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    model = build_model("yolov3-tiny", len(class_names))
    save_trained_model(
        folder / "weights.pt", model, {"model": "yolov3-tiny", "class_names": class_names}
    )
    metrics = {
        "dataset": dataset,
        "split": "test",
        "num_images": 10,
        "eval_seconds": 0.5,
        "metrics": {
            "map50": map50,
            "map50_95": map50 / 2,
            "precision_at_conf": 0.5,
            "recall_at_conf": 0.4,
            "pr_confidence": 0.1,
        },
    }
    if parts is not None:
        metrics["parts"] = parts
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def part(map50: float) -> dict[str, Any]:
    return {"map50": map50, "map50_95": map50 / 2, "precision_at_conf": 0.6, "recall_at_conf": 0.3}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results")
    joint_map = {"blood": [0.50, 0.54, 0.52], "coco": [0.20, 0.22, 0.24]}
    for repeat, suffix in enumerate(["", "_r1", "_r2"]):
        parts = {name: part(values[repeat]) for name, values in joint_map.items()}
        write_cell(
            root / f"j/yolov3-tiny/b4_e2{suffix}",
            "joint",
            [*COCO_CLASSES, *BLOOD],
            0.3,
            parts,
        )
        write_cell(root / f"b/yolov3-tiny/b4_e2{suffix}", "blood", BLOOD, [0.6, 0.62, 0.64][repeat])
        coco_map = [0.25, 0.27, 0.26][repeat]
        write_cell(root / f"c/yolov3-tiny/b4_e2{suffix}", "coco", list(COCO_CLASSES), coco_map)
    # Another epoch count: not the joint cells' separate models.
    write_cell(root / "b/yolov3-tiny/b4_e9", "blood", BLOOD, 0.9)
    return root


def folders(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("metrics.json"))


def test_joint_cells_are_paired_with_the_separate_cells_of_their_parts(results: Path) -> None:
    [comparison] = compare(read_cells(folders(results)))
    assert (comparison.model, comparison.batch, comparison.epochs) == ("yolov3-tiny", 4, 2)
    assert len(comparison.joint_cells) == 3
    blood, coco = comparison.domains
    assert blood.domain == "blood" and blood.values("joint", "map50") == [0.50, 0.54, 0.52]
    assert sorted(blood.values("separate", "map50")) == [0.6, 0.62, 0.64]
    assert sorted(coco.values("separate", "map50")) == [0.25, 0.26, 0.27]


def test_one_model_against_two_in_size(results: Path) -> None:
    [comparison] = compare(read_cells(folders(results)))
    parameters, size = comparison.joint_size()
    separate_parameters, separate_size = comparison.separate_size()
    count = {
        n: sum(p.numel() for p in build_model("yolov3-tiny", n).parameters()) for n in (3, 80, 83)
    }
    assert parameters == count[83]
    assert separate_parameters == count[80] + count[3]
    files = {d: (results / d / "yolov3-tiny/b4_e2/weights.pt").stat().st_size for d in "jbc"}
    assert size == files["j"] and separate_size == files["b"] + files["c"]


def test_the_table_and_the_finding_give_the_numbers(results: Path, tmp_path: Path) -> None:
    paths = {ext: str(tmp_path / f"joint.{ext}") for ext in ("csv", "md", "html")}
    document = write_joint(folders(results), paths)
    markdown = Path(paths["md"]).read_text()
    assert markdown == document.to_markdown()
    joint_blood = describe([0.50, 0.54, 0.52])
    assert joint_blood is not None and joint_blood.ci_low is not None
    expected = f"0.520 [{joint_blood.ci_low:.3f}, {joint_blood.ci_high:.3f}] (n=3)"
    row = next(line for line in markdown.splitlines() if "| blood | joint" in line)
    assert expected in row
    assert "| yolov3-tiny | blood | separate | 0.620 [" in markdown
    # The finding answers the question with the numbers: size ratio and accuracy per domain.
    [comparison] = compare(read_cells(folders(results)))
    parameters, _ = comparison.joint_size()
    separate, _ = comparison.separate_size()
    assert f"{parameters / separate:.2f} times their size" in markdown
    assert "on blood its mAP@0.5 is 0.520" in markdown and "difference -0.100" in markdown
    assert "joint (1 model)" in markdown and "separate (2 models)" in markdown
    assert "50.0" in markdown  # 0.5 s over 10 images: 50 ms per image
    rows = list(csv.DictReader(io.StringIO(Path(paths["csv"]).read_text())))
    assert len(rows) == 2 * (3 + 3)  # per domain: 3 joint runs, 3 separate runs
    assert {r["models"] for r in rows} == {"joint", "separate"}


def test_without_joint_cells_the_table_says_so(tmp_path: Path) -> None:
    write_cell(tmp_path / "r/b/yolov3-tiny/b4_e2", "blood", BLOOD, 0.6)
    paths = {ext: str(tmp_path / f"joint.{ext}") for ext in ("csv", "md", "html")}
    document = write_joint(folders(tmp_path / "r"), paths)
    assert "No joint cell" in document.to_markdown()


# --- end to end: the test configs ---------------------------------------------------------------


def _config(name: str, coco_url: str, folder: Path) -> Path:
    text = (REPO / "tests/configs" / name).read_text().replace("COCO_URL", coco_url)
    path = folder / name
    path.write_text(text)
    return path


@pytest.mark.slow
def test_the_test_configs_produce_the_joint_table(
    http_server: LocalHTTPServer, workflow_copy: Path, snakemake, tmp_path: Path
) -> None:
    from test_merge import serve_coco_like

    url = serve_coco_like(http_server)
    for name in ("blood", "coco"):
        config = _config(f"joint-{name}.yaml", url, tmp_path)
        targets = [f"results/test-{name}/yolov3-tiny/b3_e1{s}/metrics.json" for s in ("", "_r1")]
        run = snakemake(workflow_copy, *targets, "--cores", "2", "--configfile", config)
        assert run.returncode == 0, run.describe()
    config = _config("joint.yaml", url, tmp_path)
    target = "results/report/joint/joint.md"
    run = snakemake(workflow_copy, target, "--cores", "2", "--configfile", config)
    assert run.returncode == 0, run.describe()
    assert run.job_stats().get("report_joint") == 1

    folder = workflow_copy / "results/report/joint"
    markdown = (folder / "joint.md").read_text()
    for domain in ("coco", "blood"):
        for side in ("joint (1 model)", "separate"):
            row = next(line for line in markdown.splitlines() if f"| {domain} | {side}" in line)
            assert "(n=2)" in row, row  # two repeats a side: a mean and an interval
    assert "times their size" in markdown and "on blood its mAP@0.5 is" in markdown
    assert "separate (2 models)" in markdown
    metrics = json.loads(
        (workflow_copy / "results/test-joint/yolov3-tiny/b3_e1/metrics.json").read_text()
    )
    assert set(metrics["parts"]) == {"coco", "blood"}
    assert len(metrics["metrics"]["per_class"]) == 83
    rows = list(csv.DictReader(io.StringIO((folder / "joint.csv").read_text())))
    assert len(rows) == 2 * (2 + 2)
