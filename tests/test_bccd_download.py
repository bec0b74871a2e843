"""fetch_bccd against a local server serving a zip laid out like GitHub's repository archive.

The archive is built from the real BCCD files in the shared data folder (``DETBENCH_BCCD_DIR``,
default ``<repo>/../shared/data/bccd``); the tests skip when that folder is absent.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
from http_server import LocalHTTPServer, http_server_fixture  # noqa: F401 (fixture)

from detbench.data.bccd import BCCD_COMMIT, BCCD_URL, MANIFEST_PATH, fetch_bccd, load_manifest
from detbench.errors import DetbenchError

REPO_ROOT = Path(__file__).resolve().parents[1]
BCCD_DIR = Path(os.environ.get("DETBENCH_BCCD_DIR", REPO_ROOT.parent / "shared" / "data" / "bccd"))
TOP = f"BCCD_Dataset-{BCCD_COMMIT}"
ARCHIVE_PATH = f"/Shenggan/BCCD_Dataset/archive/{BCCD_COMMIT}.zip"
ALTERED = "JPEGImages/BloodImage_00005.jpg"


@pytest.fixture(scope="module")
def bccd_files() -> dict[str, bytes]:
    """Output-relative path -> bytes for every file the manifest lists, read once."""
    if not BCCD_DIR.is_dir():
        pytest.skip(f"BCCD data not found at {BCCD_DIR} (set DETBENCH_BCCD_DIR)")
    return {rel: (BCCD_DIR / rel).read_bytes() for rel in load_manifest()}


def _archive_name(rel: str) -> str:
    """Where a dataset file lives inside the repository archive."""
    return f"{TOP}/{rel}" if rel in ("LICENSE", "README.md") else f"{TOP}/BCCD/{rel}"


def build_archive(
    files: dict[str, bytes],
    *,
    replace: dict[str, bytes] | None = None,
    extra: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
) -> bytes:
    """A zip like GitHub's: one top folder, the dataset under BCCD/, repo code alongside."""
    contents = {_archive_name(rel): data for rel, data in files.items() if rel not in drop}
    contents.update({_archive_name(rel): data for rel, data in (replace or {}).items()})
    # Repository files that are not part of the dataset and must not be extracted.
    contents[f"{TOP}/export.py"] = b"print('export')\n"
    contents[f"{TOP}/example.jpg"] = b"\xff\xd8 not really a jpeg"
    contents[f"{TOP}/scripts/split.py"] = b"# split\n"
    contents.update(extra or {})
    buffer = io.BytesIO()
    # Stored, not deflated: keeps building fast (JPEGs barely compress anyway).
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{TOP}/", b"")
        for name in sorted(contents):
            zf.writestr(name, contents[name])
    return buffer.getvalue()


@pytest.fixture(scope="module")
def good_archive(bccd_files: dict[str, bytes]) -> bytes:
    return build_archive(bccd_files)


def _fetch(server: LocalHTTPServer, out_dir: Path, **kwargs: object) -> Path:
    kwargs.setdefault("backoff_s", 0)
    kwargs.setdefault("progress", False)
    return fetch_bccd(out_dir, url=server.url(ARCHIVE_PATH), **kwargs)  # type: ignore[arg-type]


def _leftovers(parent: Path) -> list[str]:
    """Anything in ``parent`` besides the download cache (temporary dirs must be cleaned up)."""
    return sorted(p.name for p in parent.iterdir() if p.name != ".download")


def assert_good_layout(out_dir: Path, bccd_files: dict[str, bytes]) -> None:
    got = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()}
    assert got == set(bccd_files)
    assert len(list((out_dir / "Annotations").glob("*.xml"))) == 364
    assert len(list((out_dir / "JPEGImages").glob("*.jpg"))) == 364
    assert sorted(p.name for p in (out_dir / "ImageSets" / "Main").iterdir()) == [
        "test.txt",
        "train.txt",
        "trainval.txt",
        "val.txt",
    ]
    assert (out_dir / "LICENSE").read_bytes() == bccd_files["LICENSE"]
    assert (out_dir / ALTERED).read_bytes() == bccd_files[ALTERED]


def test_manifest_is_the_pinned_dataset() -> None:
    manifest = load_manifest()
    assert len(manifest) == 364 + 364 + 4 + 2
    assert MANIFEST_PATH.name == "bccd_files.sha256"
    assert BCCD_URL == (
        "https://github.com/Shenggan/BCCD_Dataset/archive/"
        "d272fb14cdff6e473fafeeeba32aba5f560e9e43.zip"
    )


def test_good_archive_is_extracted_and_verified(
    http_server: LocalHTTPServer,
    tmp_path: Path,
    good_archive: bytes,
    bccd_files: dict[str, bytes],
) -> None:
    http_server.add(ARCHIVE_PATH, good_archive)
    out_dir = tmp_path / "bccd"
    assert _fetch(http_server, out_dir) == out_dir
    assert_good_layout(out_dir, bccd_files)
    assert _leftovers(tmp_path) == ["bccd"]
    assert (tmp_path / ".download" / f"BCCD_Dataset-{BCCD_COMMIT}.zip").is_file()
    # A second call finds a verified dataset (extra files allowed) and makes no request.
    (out_dir / "labels").mkdir()
    _fetch(http_server, out_dir)
    assert len(http_server.requests) == 1
    assert (out_dir / "labels").is_dir()


def test_cache_dir_is_used(
    http_server: LocalHTTPServer, tmp_path: Path, good_archive: bytes
) -> None:
    http_server.add(ARCHIVE_PATH, good_archive)
    cache = tmp_path / "cache"
    _fetch(http_server, tmp_path / "out" / "bccd", cache_dir=cache)
    assert [p.name for p in cache.iterdir()] == [f"BCCD_Dataset-{BCCD_COMMIT}.zip"]


def test_altered_image_names_the_file_and_leaves_nothing(
    http_server: LocalHTTPServer, tmp_path: Path, bccd_files: dict[str, bytes]
) -> None:
    tampered = bytearray(bccd_files[ALTERED])
    tampered[len(tampered) // 2] ^= 0xFF
    http_server.add(ARCHIVE_PATH, build_archive(bccd_files, replace={ALTERED: bytes(tampered)}))
    out_dir = tmp_path / "bccd"
    with pytest.raises(DetbenchError, match=r"BCCD/JPEGImages/BloodImage_00005\.jpg has sha256"):
        _fetch(http_server, out_dir)
    assert not out_dir.exists()
    assert _leftovers(tmp_path) == []
    # The archive does not verify, so it is not kept for the next call.
    assert list((tmp_path / ".download").iterdir()) == []


def test_missing_file_is_named(
    http_server: LocalHTTPServer, tmp_path: Path, bccd_files: dict[str, bytes]
) -> None:
    dropped = "Annotations/BloodImage_00410.xml"
    http_server.add(ARCHIVE_PATH, build_archive(bccd_files, drop=(dropped,)))
    out_dir = tmp_path / "bccd"
    with pytest.raises(DetbenchError, match=rf"{dropped} is missing from the archive"):
        _fetch(http_server, out_dir)
    assert not out_dir.exists()
    assert _leftovers(tmp_path) == []


def test_extra_dataset_file_is_named(
    http_server: LocalHTTPServer, tmp_path: Path, bccd_files: dict[str, bytes]
) -> None:
    extra = {f"{TOP}/BCCD/JPEGImages/BloodImage_99999.jpg": b"\xff\xd8"}
    http_server.add(ARCHIVE_PATH, build_archive(bccd_files, extra=extra))
    out_dir = tmp_path / "bccd"
    with pytest.raises(DetbenchError, match=r"unexpected file .*BloodImage_99999\.jpg"):
        _fetch(http_server, out_dir)
    assert not out_dir.exists()


@pytest.mark.parametrize("member", ["/etc/evil", f"{TOP}/BCCD/../../evil", "C:/evil"])
def test_unsafe_member_paths_are_refused(
    http_server: LocalHTTPServer, tmp_path: Path, member: str
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(f"{TOP}/LICENSE", b"MIT")
        zf.writestr(member, b"boom")
    http_server.add(ARCHIVE_PATH, buffer.getvalue())
    with pytest.raises(DetbenchError, match="refusing unsafe member path"):
        _fetch(http_server, tmp_path / "sub" / "bccd")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "sub" / "bccd").exists()


def test_connection_cut_halfway_resumes_with_range(
    http_server: LocalHTTPServer,
    tmp_path: Path,
    good_archive: bytes,
    bccd_files: dict[str, bytes],
) -> None:
    half = len(good_archive) // 2
    http_server.add(ARCHIVE_PATH, good_archive, cut_after=half)
    out_dir = tmp_path / "bccd"
    _fetch(http_server, out_dir)
    assert_good_layout(out_dir, bccd_files)
    first, second = http_server.requests
    assert first.range is None
    assert (second.range, second.status) == (f"bytes={half}-", 206)


def test_truncated_archive_is_reported_deleted_and_refetched(
    http_server: LocalHTTPServer,
    tmp_path: Path,
    good_archive: bytes,
    bccd_files: dict[str, bytes],
) -> None:
    # The server sends half an archive with a matching Content-Length: the download "succeeds".
    http_server.add(ARCHIVE_PATH, good_archive[: len(good_archive) // 2])
    out_dir = tmp_path / "bccd"
    archive = tmp_path / ".download" / f"BCCD_Dataset-{BCCD_COMMIT}.zip"
    with pytest.raises(DetbenchError, match=r"not a valid zip archive") as info:
        _fetch(http_server, out_dir)
    assert str(archive) in str(info.value)
    assert not archive.exists()
    assert not out_dir.exists()
    assert _leftovers(tmp_path) == []
    # Once the server is fixed, the next call downloads again and succeeds.
    http_server.add(ARCHIVE_PATH, good_archive)
    _fetch(http_server, out_dir)
    assert_good_layout(out_dir, bccd_files)


def test_corrupt_member_bytes_are_reported(
    http_server: LocalHTTPServer, tmp_path: Path, good_archive: bytes
) -> None:
    # Flip a byte inside a stored member: the zip opens, but its CRC check fails on reading.
    start = good_archive.index(b"\xff\xd8\xff")  # the first JPEG's data
    corrupt = bytearray(good_archive)
    corrupt[start + 1000] ^= 0xFF
    http_server.add(ARCHIVE_PATH, bytes(corrupt))
    out_dir = tmp_path / "bccd"
    with pytest.raises(DetbenchError, match=r"not a valid zip archive \(Bad CRC-32"):
        _fetch(http_server, out_dir)
    assert not out_dir.exists()


def test_503_then_success(
    http_server: LocalHTTPServer,
    tmp_path: Path,
    good_archive: bytes,
    bccd_files: dict[str, bytes],
) -> None:
    http_server.add(ARCHIVE_PATH, good_archive, fail_first=2)
    out_dir = tmp_path / "bccd"
    _fetch(http_server, out_dir, retries=3)
    assert_good_layout(out_dir, bccd_files)
    assert [r.status for r in http_server.requests] == [503, 503, 200]


def test_existing_incomplete_out_dir_is_replaced(
    http_server: LocalHTTPServer,
    tmp_path: Path,
    good_archive: bytes,
    bccd_files: dict[str, bytes],
) -> None:
    http_server.add(ARCHIVE_PATH, good_archive)
    out_dir = tmp_path / "bccd"
    (out_dir / "Annotations").mkdir(parents=True)
    (out_dir / "stale.txt").write_text("old")
    _fetch(http_server, out_dir)
    assert_good_layout(out_dir, bccd_files)
