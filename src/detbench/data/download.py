"""HTTP downloads that survive flaky networks: retries, resume, size/sha256 checks, atomic result.

The bytes go to ``<dest>.part`` first. A failed attempt keeps the part file, and the next attempt
(or the next call) asks only for the missing bytes with an HTTP ``Range`` header. Only a complete
file that passes the checks is renamed to ``dest``, so ``dest`` existing means "downloaded whole".

Standard library only (``urllib``): the few features needed here do not justify ``requests``.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from detbench import __version__
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


class _TransientError(Exception):
    """A network failure that another attempt may fix (the part file is kept for resuming)."""


def sha256_file(path: str | os.PathLike[str], chunk_size: int = CHUNK_SIZE) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB archives don't fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


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
    if progress is None:
        progress = sys.stderr.isatty()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")

    _fetch_with_retries(url, part, size, retries, backoff_s, timeout_s, progress)

    problem = _verify(part, expected_sha, size)
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


def _fetch_with_retries(
    url: str,
    part: Path,
    size: int | None,
    retries: int,
    backoff_s: float,
    timeout_s: float,
    progress: bool,
) -> None:
    attempts = max(0, retries) + 1
    for attempt in range(1, attempts + 1):
        try:
            _fetch_once(url, part, size, timeout_s, progress)
            return
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


def _fetch_once(url: str, part: Path, size: int | None, timeout_s: float, progress: bool) -> None:
    """One HTTP request that appends to (or restarts) ``part``; returns once the body is whole."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        # Longer than the whole file: not a prefix of it, so resuming would only add garbage.
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return  # a previous attempt got every byte; the caller verifies them

    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        error.close()  # the error body is not needed; free the connection
        if error.code == 416 and offset:
            _handle_unsatisfiable_range(part, offset, error.headers.get("Content-Range"))
            return
        if error.code in RETRYABLE_STATUS:
            raise _TransientError(f"HTTP {error.code} {error.reason}") from error
        raise DetbenchError(f"{url}: HTTP {error.code} {error.reason}") from error
    except ValueError as error:  # malformed URL or unsupported scheme: retrying cannot help
        raise DetbenchError(f"{url}: {error}") from error
    except (OSError, http.client.HTTPException) as error:
        raise _TransientError(_describe(error)) from error

    with response:
        start = _response_start(response, offset)
        if start is None:
            part.unlink(missing_ok=True)  # the body is some other slice of the file: start over
            raise _TransientError(
                f"unexpected Content-Range {response.headers.get('Content-Range')!r} "
                f"for a request from byte {offset}; restarting from 0"
            )
        if start != offset:
            logger.info("%s: server ignored the Range request; restarting from byte 0", url)
        length = response.headers.get("Content-Length")
        expected_body = int(length) if length and length.isdigit() else None
        total = start + expected_body if expected_body is not None else size
        with (
            open(part, "ab" if start else "wb") as sink,
            tqdm(
                total=total,
                initial=start,
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


def _handle_unsatisfiable_range(part: Path, offset: int, content_range: str | None) -> None:
    """416 means the part already holds the whole file, or it is longer than the file (stale)."""
    match = _UNSATISFIED_RANGE.fullmatch((content_range or "").strip())
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
