"""HTTP downloads that survive flaky networks: retries, resume, size/sha256 checks, atomic result.

The bytes go to ``<dest>.part`` first. A failed attempt keeps the part file, and the next attempt
(or the next call) asks only for the missing bytes with an HTTP ``Range`` header. Only a complete
file that passes the checks is renamed to ``dest``, so ``dest`` existing means "downloaded whole".

``download_range`` does the same for one byte range of a remote file (a zip member, say) and
``fetch_tail`` reads a file's last bytes; both need a server that answers ``Range`` requests and
raise :class:`RangesUnsupported` when it sends the whole file instead.

Standard library only (``urllib``): the few features needed here do not justify ``requests``.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from tqdm import tqdm

from detbench import __version__
from detbench.atomic import sha256_file
from detbench.errors import DetbenchError

logger = logging.getLogger(__name__)

USER_AGENT = (
    f"detbench/{__version__} (Python-urllib/{sys.version_info.major}.{sys.version_info.minor})"
)
CHUNK_SIZE = 1 << 20
MAX_BACKOFF_S = 60.0
# Server-side trouble worth waiting out; other 4xx answers (404, 403...) will not change on retry.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


T = TypeVar("T")


class _TransientError(Exception):
    """A network failure that another attempt may fix (the part file is kept for resuming)."""


class RangesUnsupported(DetbenchError):
    """The server answered a Range request with the whole file (HTTP 200) instead of the slice.

    Callers that can take the whole file instead catch it; the message says which URL it was.
    """


@dataclass(frozen=True)
class _Window:
    """Which bytes of the remote file a part file holds: ``size`` of them from ``start``.

    ``ranged`` windows are slices that only a 206 answer can fill; the default (0, None, False)
    is the whole file, where a 200 answer is fine.
    """

    start: int = 0
    size: int | None = None
    ranged: bool = False


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 60,
    progress: bool | None = None,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    ``size`` (exact bytes) and ``sha256`` (hex) are checked when given; on a mismatch the partial
    file is deleted and a :class:`DetbenchError` names the URL and both values. An existing
    ``dest`` that passes the checks is returned without any request. ``retries`` is the number of
    extra attempts after the first one fails on a network error or a 5xx/429 answer; attempt ``k``
    waits ``backoff_s * 2**(k-1)`` seconds (at most 60) first. ``progress=None`` shows a tqdm bar
    only when stderr is a terminal.
    """
    dest = Path(dest)
    expected_sha = sha256.lower() if sha256 else None
    if dest.exists():
        if _verify(dest, expected_sha, size) is None:
            return dest
        logger.warning("%s: existing file fails verification; downloading it again", dest)
    return _download_window(
        url, dest, _Window(size=size), expected_sha, retries, backoff_s, timeout_s, progress
    )


def download_range(
    url: str,
    dest: Path,
    start: int,
    end: int,
    *,
    retries: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 60,
    progress: bool | None = False,
) -> Path:
    """Download bytes ``[start, end)`` of ``url`` to ``dest`` and return ``dest``.

    Retries, resume (of ``<dest>.part``, from the bytes it holds) and the atomic rename work as in
    :func:`download`; the size is checked, and an existing ``dest`` of the right size is returned
    without any request. Raises :class:`RangesUnsupported` when the server answers with the whole
    file, before reading its body.
    """
    if not 0 <= start < end:
        raise ValueError(f"download_range: empty or negative range [{start}, {end})")
    dest = Path(dest)
    if dest.exists() and dest.stat().st_size == end - start:
        return dest
    window = _Window(start=start, size=end - start, ranged=True)
    return _download_window(url, dest, window, None, retries, backoff_s, timeout_s, progress)


def fetch_tail(
    url: str, length: int, *, retries: int = 5, backoff_s: float = 1.0, timeout_s: float = 60
) -> tuple[int, bytes]:
    """The size of the file at ``url`` and its last ``length`` bytes (all of it when shorter).

    One suffix-range request (``Range: bytes=-length``), retried like :func:`download`. Raises
    :class:`RangesUnsupported` when the server answers with the whole file.
    """
    return _with_retries(url, lambda: _fetch_tail_once(url, length, timeout_s), retries, backoff_s)


def _download_window(
    url: str,
    dest: Path,
    window: _Window,
    sha256: str | None,
    retries: int,
    backoff_s: float,
    timeout_s: float,
    progress: bool | None,
) -> Path:
    if progress is None:
        progress = sys.stderr.isatty()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    show = bool(progress)
    _with_retries(url, lambda: _fetch_once(url, part, window, timeout_s, show), retries, backoff_s)
    problem = _verify(part, sha256, window.size)
    if problem is not None:
        part.unlink(missing_ok=True)
        raise DetbenchError(f"{url}: {problem}")
    os.replace(part, dest)
    return dest


def _verify(path: Path, sha256: str | None, size: int | None) -> str | None:
    """Return a one-line description of what is wrong with ``path``, or None if it checks out."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"size mismatch: expected {size} bytes, got {actual_size} bytes"
    if sha256 is not None:
        actual_sha = sha256_file(path)
        if actual_sha != sha256:
            return f"sha256 mismatch: expected {sha256}, got {actual_sha}"
    return None


def _with_retries(url: str, attempt_once: Callable[[], T], retries: int, backoff_s: float) -> T:
    """Call ``attempt_once`` until it returns, waiting out transient errors with backoff."""
    attempts = max(0, retries) + 1
    for attempt in range(1, attempts + 1):
        try:
            return attempt_once()
        except _TransientError as error:
            if attempt == attempts:
                raise DetbenchError(
                    f"{url}: download failed after {attempts} attempt(s): {error}"
                ) from error
            delay = min(backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
            logger.warning(
                "%s: attempt %d/%d failed (%s); retrying in %.1f s",
                url,
                attempt,
                attempts,
                error,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _open(url: str, range_header: str | None, timeout_s: float) -> http.client.HTTPResponse:
    """One GET; HTTP errors worth retrying become _TransientError, others DetbenchError.

    A 416 answer is returned to the caller as the ``HTTPError`` itself (it is a response too),
    since what it means depends on what was asked for.
    """
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if range_header:
        request.add_header("Range", range_header)
    try:
        return urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        if error.code == 416 and range_header:
            return error  # type: ignore[return-value]
        error.close()  # the error body is not needed; free the connection
        if error.code in RETRYABLE_STATUS:
            raise _TransientError(f"HTTP {error.code} {error.reason}") from error
        raise DetbenchError(f"{url}: HTTP {error.code} {error.reason}") from error
    except ValueError as error:  # malformed URL or unsupported scheme: retrying cannot help
        raise DetbenchError(f"{url}: {error}") from error
    except (OSError, http.client.HTTPException) as error:
        raise _TransientError(_describe(error)) from error


def _fetch_once(url: str, part: Path, window: _Window, timeout_s: float, progress: bool) -> None:
    """One HTTP request that appends to (or restarts) ``part``; returns once the body is whole."""
    size = window.size
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        # Longer than the whole file: not a prefix of it, so resuming would only add garbage.
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return  # a previous attempt got every byte; the caller verifies them

    remote = window.start + offset  # where in the remote file the missing bytes begin
    if window.ranged and size is not None:
        range_header: str | None = f"bytes={remote}-{window.start + size - 1}"
    else:
        range_header = f"bytes={offset}-" if offset else None
    response = _open(url, range_header, timeout_s)
    with response:
        if response.status == 416:
            _handle_unsatisfiable_range(url, part, window, remote, response.headers)
            return
        if window.ranged and response.status != 206:
            raise RangesUnsupported(
                f"{url}: server ignored a Range request (HTTP {response.status})"
            )
        start = _response_start(response, remote)
        if start is None:
            part.unlink(missing_ok=True)  # the body is some other slice of the file: start over
            raise _TransientError(
                f"unexpected Content-Range {response.headers.get('Content-Range')!r} "
                f"for a request from byte {remote}; restarting from {window.start}"
            )
        if start != remote:
            logger.info("%s: server ignored the Range request; restarting from byte 0", url)
        part_start = start - window.start  # where in the part file this body goes
        length = response.headers.get("Content-Length")
        expected_body = int(length) if length and length.isdigit() else None
        total = part_start + expected_body if expected_body is not None else size
        with (
            open(part, "ab" if part_start else "wb") as sink,
            tqdm(
                total=total,
                initial=part_start,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
                file=sys.stderr,
                leave=False,
            ) as bar,
        ):
            received = _stream(response, sink, bar)
            sink.flush()
            os.fsync(sink.fileno())
    # http.client returns b"" instead of raising when the peer closes early, so count ourselves.
    if expected_body is not None and received < expected_body:
        raise _TransientError(
            f"connection closed after {received} of {expected_body} bytes (kept for resuming)"
        )


def _fetch_tail_once(url: str, length: int, timeout_s: float) -> tuple[int, bytes]:
    response = _open(url, f"bytes=-{length}", timeout_s)
    with response:
        if response.status == 416:  # only an empty file has no last bytes
            raise DetbenchError(f"{url}: the server says the file is empty (HTTP 416)")
        if response.status != 206:
            raise RangesUnsupported(
                f"{url}: server ignored a Range request (HTTP {response.status})"
            )
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if match is None or not match.group(3).isdigit():
            raise DetbenchError(
                f"{url}: unusable Content-Range {response.headers.get('Content-Range')!r} "
                "in the answer to a suffix Range request"
            )
        first, last, total = (int(match.group(i)) for i in (1, 2, 3))
        try:
            body = response.read()
        except (OSError, http.client.HTTPException) as error:
            raise _TransientError(_describe(error)) from error
    if len(body) != last - first + 1:
        raise _TransientError(f"connection closed after {len(body)} of {last - first + 1} bytes")
    if last != total - 1:
        raise DetbenchError(f"{url}: asked for the last bytes, got bytes {first}-{last} of {total}")
    return total, body


def _response_start(response: http.client.HTTPResponse, offset: int) -> int | None:
    """File offset of the response body: 0 for a 200, ``offset`` for a matching 206, else None."""
    if response.status != 206:
        return 0  # 200: the server sends the whole file, so the part file is rewritten
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if match is None or int(match.group(1)) != offset:
        return None
    return offset


def _stream(response: http.client.HTTPResponse, sink: BinaryIO, bar: tqdm) -> int:
    received = 0
    while True:
        try:
            chunk = response.read(CHUNK_SIZE)
        except (OSError, http.client.HTTPException) as error:
            raise _TransientError(_describe(error)) from error
        if not chunk:
            return received
        sink.write(chunk)  # local disk errors propagate: they are not worth retrying
        received += len(chunk)
        bar.update(len(chunk))


def _handle_unsatisfiable_range(
    url: str, part: Path, window: _Window, offset: int, headers: http.client.HTTPMessage
) -> None:
    """416 means the part already holds the whole file, or it is longer than the file (stale).

    For a slice (``window.ranged``) it means the file is shorter than the slice's end: the zip
    directory that named the slice does not describe this file.
    """
    match = _UNSATISFIED_RANGE.fullmatch((headers.get("Content-Range") or "").strip())
    if window.ranged:
        total = match.group(1) if match else "an unknown number of"
        raise DetbenchError(
            f"{url}: server cannot serve bytes {offset}-{window.start + (window.size or 0) - 1} "
            f"of a file of {total} bytes (HTTP 416); did the file change on the server?"
        )
    if match is not None and int(match.group(1)) == offset:
        return  # complete; the caller verifies it
    part.unlink(missing_ok=True)
    raise _TransientError(f"server rejected resuming from byte {offset}; restarting from 0")


def _describe(error: BaseException) -> str:
    """One-line text for a network exception (some carry newlines or an empty message)."""
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        error = error.reason  # e.g. ConnectionRefusedError / TimeoutError inside a URLError
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
