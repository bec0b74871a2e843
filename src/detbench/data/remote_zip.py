"""Single members of a remote zip archive, fetched with HTTP range requests.

A zip keeps its table of contents (the central directory) at its end, so a suffix-range request
for the archive's tail, and one more when the directory is longer than that tail, tells where
every member lies, how big it is and its CRC-32, without reading the rest. The stdlib's
``zipfile`` parses that directory, ZIP64 included (COCO's train2017.zip is 19 GB), from a file
object that fetches the bytes it is asked for on demand.

Each member is then fetched on its own: its local header and compressed bytes go to
``<dest>.zipped`` through :func:`~detbench.data.download.download_range` (retries with backoff,
resume of ``<dest>.zipped.part`` after a cut connection), are inflated, checked against the
directory's CRC-32 and size, and renamed to ``dest``: ``dest`` existing means "verified".

A server that answers a range request with the whole file raises
:class:`~detbench.data.download.RangesUnsupported`, before any of that body is read.
"""

from __future__ import annotations

import io
import itertools
import os
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from detbench.atomic import atomic_open
from detbench.data.download import CHUNK_SIZE, download_range, fetch_tail
from detbench.errors import DetbenchError

# The first request reads this much of the archive's end: the end-of-directory records (at most
# 22 + 65,535 bytes of comment + 76 of ZIP64) and the directory of a zip with a few thousand
# members (70-100 bytes each: likely all of val2017's 5,000); a longer one costs one more request.
TAIL_BYTES = 1 << 20
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature ... file name length, extra field length
_LOCAL_SIGNATURE = b"PK\x03\x04"
# A member's local header plus its data descriptor can take at most this much beyond the
# compressed bytes (30-byte header, 64 KiB name, 64 KiB extra field, 24-byte ZIP64 descriptor).
_MAX_MEMBER_OVERHEAD = 30 + 2 * 0xFFFF + 24
_INFLATERS: dict[int, Callable[[], zlib._Decompress | None]] = {
    zipfile.ZIP_STORED: lambda: None,
    zipfile.ZIP_DEFLATED: lambda: zlib.decompressobj(-zlib.MAX_WBITS),
}


@dataclass(frozen=True)
class Retry:
    """How hard each request tries (see :func:`detbench.data.download.download`)."""

    retries: int = 5
    backoff_s: float = 1.0
    timeout_s: float = 60

    def as_kwargs(self) -> dict[str, Any]:
        return {"retries": self.retries, "backoff_s": self.backoff_s, "timeout_s": self.timeout_s}


@dataclass(frozen=True)
class RemoteMember:
    """Where one member lies in the archive and what its bytes must check out to."""

    name: str
    start: int  # its local header
    end: int  # where the next member or the central directory begins (an upper bound)
    compress_type: int
    compress_size: int
    file_size: int
    crc: int


@dataclass(frozen=True)
class RemoteZip:
    url: str
    size: int
    members: dict[str, RemoteMember]
    retry: Retry

    @classmethod
    def open(
        cls, url: str, *, retry: Retry = Retry(), expected_size: int | None = None
    ) -> RemoteZip:
        """Read the central directory of the zip at ``url``.

        ``expected_size`` (bytes of the whole archive) is checked when given. Raises
        :class:`RangesUnsupported` when the server does not answer range requests.
        """
        size, tail = fetch_tail(url, TAIL_BYTES, **retry.as_kwargs())
        if expected_size is not None and size != expected_size:
            raise DetbenchError(
                f"{url}: size mismatch: expected {expected_size} bytes, got {size} bytes"
            )
        with tempfile.TemporaryDirectory(prefix="detbench-zipdir-") as scratch:
            reader = _RangeFile(size, tail, _range_reader(url, Path(scratch), retry))
            try:
                with zipfile.ZipFile(reader) as archive:
                    infos, directory_start = archive.infolist(), archive.start_dir
            except (zipfile.BadZipFile, ValueError, struct.error) as error:
                raise DetbenchError(f"{url}: not a valid zip archive ({error})") from error
        return cls(url, size, _locate(infos, min(directory_start, size)), retry)

    def member(self, name: str) -> RemoteMember:
        try:
            return self.members[name]
        except KeyError:
            raise DetbenchError(f"{self.url}: {name} not found in the archive") from None

    def extract(self, name: str, dest: Path, *, progress: bool = False) -> Path:
        """Fetch member ``name`` to ``dest`` (verified; an existing ``dest`` is kept as it is)."""
        member = self.member(name)
        dest = Path(dest)
        if dest.exists():
            return dest
        zipped = dest.with_name(dest.name + ".zipped")
        download_range(
            self.url, zipped, member.start, member.end, progress=progress, **self.retry.as_kwargs()
        )
        try:
            _inflate(zipped, member, dest, f"{self.url}: {name}")
        except DetbenchError:
            zipped.unlink()  # bad bytes: the next run fetches them again instead of failing again
            raise
        zipped.unlink()
        return dest


def _locate(infos: list[zipfile.ZipInfo], directory_start: int) -> dict[str, RemoteMember]:
    """Members by name, each bounded by the next member's start (zips store them back to back)."""
    starts = sorted({info.header_offset for info in infos} | {directory_start})
    following = dict(itertools.pairwise(starts))
    members = {}
    for info in infos:
        if info.is_dir():
            continue
        end = min(
            following.get(info.header_offset, directory_start),
            info.header_offset + info.compress_size + _MAX_MEMBER_OVERHEAD,
        )
        members[info.filename] = RemoteMember(
            info.filename,
            info.header_offset,
            end,
            info.compress_type,
            info.compress_size,
            info.file_size,
            info.CRC,
        )
    return members


def _range_reader(url: str, scratch: Path, retry: Retry) -> Callable[[int, int], bytes]:
    """Bytes [start, end) of ``url``, through a (resumable) file in ``scratch``."""

    def read(start: int, end: int) -> bytes:
        path = scratch / f"range-{start}-{end}"
        download_range(url, path, start, end, **retry.as_kwargs())
        data = path.read_bytes()
        path.unlink()
        return data

    return read


class _RangeFile(io.RawIOBase):
    """A read-only, seekable view of a remote file: its tail in memory, the rest on demand."""

    def __init__(self, size: int, tail: bytes, fetch: Callable[[int, int], bytes]) -> None:
        super().__init__()
        self._size, self._tail, self._fetch = size, tail, fetch
        self._tail_start = size - len(tail)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError(f"seek to {base + offset}, before the start of the file")
        self._position = base + offset
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        start = min(self._position, self._size)
        end = self._size if size is None or size < 0 else min(self._size, start + size)
        self._position = max(self._position, end)
        if start >= end:
            return b""
        if start >= self._tail_start:
            return self._tail[start - self._tail_start : end - self._tail_start]
        # Only what the tail lacks goes over the network: the central directory's first part.
        head = self._fetch(start, min(end, self._tail_start))
        return head + self._tail[: max(0, end - self._tail_start)]


def _inflate(zipped: Path, member: RemoteMember, dest: Path, where: str) -> None:
    """Local header + compressed bytes in ``zipped`` -> ``dest``, checked against the directory."""
    new_inflater = _INFLATERS.get(member.compress_type)
    if new_inflater is None:
        raise DetbenchError(f"{where}: compression method {member.compress_type} not supported")
    with open(zipped, "rb") as source:
        header = source.read(_LOCAL_HEADER.size)
        if len(header) < _LOCAL_HEADER.size or header[:4] != _LOCAL_SIGNATURE:
            raise DetbenchError(f"{where}: no local file header at byte {member.start}")
        *_, name_length, extra_length = _LOCAL_HEADER.unpack(header)
        # The local extra field may differ from the directory's (ZIP64 sizes): skip its own.
        source.seek(name_length + extra_length, os.SEEK_CUR)
        with atomic_open(dest, "wb") as sink:
            crc, size = _copy_inflated(source, sink, member.compress_size, new_inflater(), where)
            if (crc, size) != (member.crc, member.file_size):
                raise DetbenchError(
                    f"{where}: CRC-32/size mismatch: expected {member.crc:08x}/{member.file_size} "
                    f"bytes, got {crc:08x}/{size} bytes (the fetched bytes were deleted)"
                )


def _copy_inflated(
    source: BinaryIO, sink: BinaryIO, length: int, inflater: zlib._Decompress | None, where: str
) -> tuple[int, int]:
    """Inflate ``length`` compressed bytes from ``source`` into ``sink``: (CRC-32, size) out."""
    crc, size, left = 0, 0, length
    while left:
        chunk = source.read(min(CHUNK_SIZE, left))
        if not chunk:
            raise DetbenchError(f"{where}: truncated: {left} of {length} compressed bytes missing")
        left -= len(chunk)
        try:
            data = chunk if inflater is None else inflater.decompress(chunk)
        except zlib.error as error:
            raise DetbenchError(f"{where}: corrupt deflate data ({error})") from error
        sink.write(data)
        crc, size = zlib.crc32(data, crc), size + len(data)
    if inflater is not None:
        rest = inflater.flush()
        sink.write(rest)
        crc, size = zlib.crc32(rest, crc), size + len(rest)
    return crc, size
