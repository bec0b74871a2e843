"""Fetch the official BCCD dataset (Shenggan/BCCD_Dataset, pinned commit), verified per file.

Code hosts generate repository archives on the fly, so the zip's own bytes (and its sha256) may
change over time even for a fixed commit. What must not change is the content of each file, so
every extracted file is checked against ``bccd_files.sha256`` shipped with this package.

Result, in Pascal VOC layout directly inside ``out_dir``::

    Annotations/BloodImage_NNNNN.xml  ImageSets/Main/{train,val,trainval,test}.txt
    JPEGImages/BloodImage_NNNNN.jpg   LICENSE  README.md
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from detbench.atomic import atomic_directory, sha256_file
from detbench.data.download import CHUNK_SIZE, download
from detbench.errors import DetbenchError

BCCD_COMMIT = "d272fb14cdff6e473fafeeeba32aba5f560e9e43"
BCCD_URL = f"https://github.com/Shenggan/BCCD_Dataset/archive/{BCCD_COMMIT}.zip"
MANIFEST_PATH = Path(__file__).with_name("bccd_files.sha256")

# Inside the archive everything sits under one top folder (``BCCD_Dataset-<commit>/``); the
# dataset itself is in its ``BCCD/`` subfolder, the licence and readme at the top.
_DATASET_DIRS = ("Annotations", "ImageSets", "JPEGImages")
_TOP_LEVEL_FILES = ("LICENSE", "README.md")


def load_manifest(path: Path = MANIFEST_PATH) -> dict[str, str]:
    """Parse a ``sha256sum``-style file into {relative path: hex digest}."""
    manifest: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name:
            raise DetbenchError(f"{path}:{number}: expected '<sha256>  <path>', got {line!r}")
        manifest[name] = digest.lower()
    return manifest


def fetch_bccd(
    out_dir: Path,
    *,
    url: str = BCCD_URL,
    cache_dir: Path | None = None,
    retries: int = 5,
    backoff_s: float = 1.0,
    progress: bool | None = None,
) -> Path:
    """Download, extract and verify BCCD into ``out_dir``; return ``out_dir``.

    The archive is kept in ``cache_dir`` (default ``<out_dir's parent>/.download``). Any missing,
    unexpected or altered dataset file raises :class:`DetbenchError` naming it, and ``out_dir`` is
    then left as it was (the work happens in a temporary sibling that is renamed at the end).
    An ``out_dir`` that already matches the manifest is returned without downloading.
    """
    out_dir = Path(out_dir)
    manifest = load_manifest()
    if _directory_matches(out_dir, manifest):
        return out_dir
    cache = Path(cache_dir) if cache_dir is not None else out_dir.parent / ".download"
    archive = cache / f"BCCD_Dataset-{PurePosixPath(urlparse(url).path).name or 'archive.zip'}"
    download(url, archive, retries=retries, backoff_s=backoff_s, progress=progress)
    try:
        with atomic_directory(out_dir) as tmp:
            _extract_verified(archive, tmp, manifest)
    except DetbenchError:
        # A cached archive that fails verification is useless: let the next call fetch it again.
        archive.unlink(missing_ok=True)
        raise
    return out_dir


def _directory_matches(out_dir: Path, manifest: dict[str, str]) -> bool:
    """Every manifest file present and intact (files added later, e.g. labels, are allowed)."""
    return all(
        (out_dir / name).is_file() and sha256_file(out_dir / name) == digest
        for name, digest in manifest.items()
    )


def _extract_verified(archive: Path, dest: Path, manifest: dict[str, str]) -> None:
    """Extract the manifest's files from ``archive`` into ``dest``, hashing while writing."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [info for info in zf.infolist() if not info.is_dir()]
            for info in members:
                _check_member_name(archive, info.filename)
            _check_single_top_folder(archive, members)
            seen: set[str] = set()
            for info in members:
                rel = _dataset_path(info.filename)
                if rel is None:
                    continue  # repository code, example images...: not part of the dataset
                if rel not in manifest:
                    raise DetbenchError(
                        f"{archive}: unexpected file {info.filename} (not in {MANIFEST_PATH.name})"
                    )
                digest = _extract_member(zf, info, dest / rel)
                if digest != manifest[rel]:
                    raise DetbenchError(
                        f"{archive}: {info.filename} has sha256 {digest}, "
                        f"expected {manifest[rel]} ({MANIFEST_PATH.name})"
                    )
                seen.add(rel)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise DetbenchError(
            f"{archive}: not a valid zip archive ({error}); deleted it, run again to re-download"
        ) from error
    missing = sorted(set(manifest) - seen)
    if missing:
        raise DetbenchError(
            f"{archive}: {missing[0]} is missing from the archive"
            + (f" (and {len(missing) - 1} more files)" if len(missing) > 1 else "")
        )


def _check_member_name(archive: Path, name: str) -> None:
    """Zip-slip guard: refuse absolute paths, drive letters and '..' components."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DetbenchError(f"{archive}: refusing unsafe member path {name!r}")


def _check_single_top_folder(archive: Path, members: list[zipfile.ZipInfo]) -> None:
    """A repository archive holds one folder; its name depends on the host, so it is not fixed."""
    tops = {PurePosixPath(info.filename).parts[0] for info in members}
    if len(tops) != 1 or any(len(PurePosixPath(i.filename).parts) < 2 for i in members):
        raise DetbenchError(
            f"{archive}: expected one top-level folder (a repository archive), found {sorted(tops)}"
        )


def _dataset_path(name: str) -> str | None:
    """Map an archive member to its path in the output folder, or None if it is not extracted."""
    parts = PurePosixPath(name).parts[1:]  # drop ``BCCD_Dataset-<commit>``
    if len(parts) == 1 and parts[0] in _TOP_LEVEL_FILES:
        return parts[0]
    if len(parts) >= 3 and parts[0] == "BCCD" and parts[1] in _DATASET_DIRS:
        return PurePosixPath(*parts[1:]).as_posix()
    return None


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> str:
    """Copy one member to ``target`` and return its sha256 (one pass over the bytes)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with zf.open(info) as source, open(target, "wb") as sink:
        while chunk := source.read(CHUNK_SIZE):
            digest.update(chunk)
            sink.write(chunk)
    return digest.hexdigest()
