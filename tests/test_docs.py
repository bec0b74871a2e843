"""The README is a front page whose links resolve; the manual in docs/ builds strictly and its
map of the code names every part of the package."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README_MAX_LINES = 200
# Markdown files read on GitHub (or the workflow catalog), where a relative link is a file path.
REPOSITORY_PAGES = ("README.md", "config/README.md", "profiles/slurm/README.md")
# [text](target) and ![alt](target); the target up to whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(text: str) -> list[str]:
    """The link targets of a Markdown text that point into the repository (no URL, no bare
    anchor), without their anchors; links inside code blocks and code spans are left out."""
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = [match.group(1) for match in LINK.finditer(text)]
    return [
        target.split("#", 1)[0]
        for target in targets
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")
    ]


def test_relative_links_finds_file_links_only() -> None:
    text = (
        "[a](docs/a.md#x) ![img](img/b.png) [web](https://x.org/y) [anchor](#here) "
        "[mail](mailto:a@b.c) `[code](not/a/link.md)`\n```\n[block](no.md)\n```\n"
    )
    assert relative_links(text) == ["docs/a.md", "img/b.png"]


def test_readme_is_a_front_page(repo_root: Path) -> None:
    lines = (repo_root / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


@pytest.mark.parametrize("page", REPOSITORY_PAGES)
def test_relative_links_resolve(repo_root: Path, page: str) -> None:
    path = repo_root / page
    links = relative_links(path.read_text(encoding="utf-8"))
    missing = [link for link in links if not (path.parent / link).exists()]
    assert not missing, f"{page}: links to missing files {missing}"


def test_readme_links_into_the_manual(repo_root: Path) -> None:
    links = relative_links((repo_root / "README.md").read_text(encoding="utf-8"))
    assert any(link.startswith("docs/") for link in links)


def test_docs_build_strictly(repo_root: Path, tmp_path: Path) -> None:
    """A broken link or anchor, a page in the nav that does not exist or a missing included
    file fails the build (mkdocs.yml: strict, pymdownx.snippets check_paths)."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "index.html").is_file()
    # The included files arrive in their pages (the Slurm profile's README in the Slurm page).
    slurm = (tmp_path / "slurm" / "index.html").read_text(encoding="utf-8")
    assert "What to edit for your cluster" in slurm and "--8&lt;--" not in slurm


def test_map_of_the_code_names_every_part_of_the_package(repo_root: Path) -> None:
    package = repo_root / "src" / "detbench"
    subpackages = sorted(p.parent.name for p in package.glob("*/__init__.py"))
    modules = sorted(p.stem for p in package.glob("*.py"))
    assert {"study", "training", "web"} <= set(subpackages) and "cli" in modules
    text = (repo_root / "docs" / "architecture.md").read_text(encoding="utf-8")
    unnamed = [name for name in subpackages + modules if f"| `{name}` |" not in text]
    assert not unnamed, f"docs/architecture.md does not describe {unnamed}"
