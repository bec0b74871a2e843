"""benchmarks/common.py: the data cache is per source, and the scripts' --help descriptions."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# The benchmark scripts; the other modules (common, roofline, coco_reference) are their helpers.
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if "__main__" in p.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def common() -> Any:
    spec = importlib.util.spec_from_file_location("benchmarks_common", BENCHMARKS / "common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_conversion(common: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stand-ins for the data stages: the manifest names the source it was prepared from."""
    prepared: list[str] = []

    def prepare(dataset: dict[str, Any], voc: Path, *, seed: int) -> None:
        prepared.append(dataset["source"])
        voc.mkdir(parents=True)

    def convert(dataset: dict[str, Any], voc: Path, yolo: Path) -> dict[str, Any]:
        yolo.mkdir(parents=True)
        (yolo / "manifest.json").write_text(json.dumps({"source": dataset["source"]}))
        return {}

    monkeypatch.setattr(common, "prepare_voc_dataset", prepare)
    monkeypatch.setattr(common, "convert_dataset", convert)
    return prepared


def test_switching_source_never_reuses_the_other_sources_data(
    common: Any, fake_conversion: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bccd = tmp_path / "bccd"
    (bccd / "Annotations").mkdir(parents=True)
    work = tmp_path / "work"

    def run(bccd_dir: Path) -> tuple[str, str]:
        monkeypatch.setenv("DETBENCH_BCCD_DIR", str(bccd_dir))
        manifest, label = common.prepare_manifest(work)
        return json.loads(manifest.read_text())["source"], label

    assert run(tmp_path / "missing") == ("synthetic", "synthetic, BCCD-sized (BCCD not found)")
    assert run(bccd) == (str(bccd.resolve()), f"BCCD ({bccd.resolve()})")
    assert run(tmp_path / "missing")[0] == "synthetic"
    assert run(bccd / ".." / "bccd")[0] == str(bccd.resolve())  # one folder, two spellings
    assert fake_conversion == ["synthetic", str(bccd.resolve())]  # each prepared once


def test_source_keys_differ_per_source(common: Any, tmp_path: Path) -> None:
    keys = {common.source_key(None), common.source_key(tmp_path / "a"),
            common.source_key(tmp_path / "b")}
    assert len(keys) == 3
    assert common.source_key(None) == "synthetic-205-87-72-640x480-seed0"


def test_no_bccd_without_fallback_names_the_path_tried(
    common: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DETBENCH_BCCD_DIR", str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match="missing"):
        common.prepare_data(tmp_path, synthetic_fallback=False)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_description_is_whole_and_without_issue_numbers(common: Any, script: Path) -> None:
    source = script.read_text(encoding="utf-8")
    assert "description=description(__doc__)" in source
    text = common.description(ast.get_docstring(ast.parse(source)))
    assert text.endswith("."), text
    assert "issue" not in text.lower() and "\n" not in text and "()" not in text, text
