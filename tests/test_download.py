"""detbench.data.download against a local HTTP server: resume, retries, verification."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest
from http_server import LocalHTTPServer, http_server_fixture  # noqa: F401 (fixture)

from detbench.data.download import (
    RangesUnsupported,
    download,
    download_range,
    fetch_tail,
)
from detbench.errors import DetbenchError

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


def _fetch(url: str, dest: Path, **kwargs: object) -> Path:
    kwargs.setdefault("backoff_s", 0)
    kwargs.setdefault("progress", False)
    return download(url, dest, **kwargs)  # type: ignore[arg-type]


def _part(dest: Path) -> Path:
    return dest.with_suffix(dest.suffix + ".part")


def test_good_file_with_sha256_and_size(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    url = http_server.add("/f.bin", DATA)
    dest = tmp_path / "sub" / "f.bin"
    assert _fetch(url, dest, sha256=SHA.upper(), size=len(DATA)) == dest
    assert dest.read_bytes() == DATA
    assert not _part(dest).exists()
    (request,) = http_server.requests
    assert request.range is None
    assert request.headers["user-agent"].startswith("detbench/")


def test_wrong_sha256_names_url_and_both_hashes(
    http_server: LocalHTTPServer, tmp_path: Path
) -> None:
    url = http_server.add("/f.bin", DATA)
    dest = tmp_path / "f.bin"
    wrong = "0" * 64
    with pytest.raises(DetbenchError) as info:
        _fetch(url, dest, sha256=wrong)
    message = str(info.value)
    assert url in message and wrong in message and SHA in message
    assert "\n" not in message
    assert not dest.exists() and not _part(dest).exists()


def test_wrong_size_names_url_and_both_sizes(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    url = http_server.add("/f.bin", DATA)
    dest = tmp_path / "f.bin"
    with pytest.raises(DetbenchError, match=rf"{url}: size mismatch: expected 5 bytes, got 300000"):
        _fetch(url, dest, size=5)
    assert not dest.exists() and not _part(dest).exists()


def test_resume_after_cut_uses_range(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    url = http_server.add("/f.bin", DATA, cut_after=100_000)
    dest = tmp_path / "f.bin"
    _fetch(url, dest, sha256=SHA)
    assert dest.read_bytes() == DATA
    first, second = http_server.requests
    assert (first.range, first.status) == (None, 200)
    assert (second.range, second.status) == ("bytes=100000-", 206)


def test_resume_without_size_or_hash_detects_short_body(
    http_server: LocalHTTPServer, tmp_path: Path
) -> None:
    # http.client silently returns b"" on an early close; Content-Length must catch it.
    url = http_server.add("/f.bin", DATA, cut_after=1234)
    dest = tmp_path / "f.bin"
    _fetch(url, dest)
    assert dest.read_bytes() == DATA
    assert [r.range for r in http_server.requests] == [None, "bytes=1234-"]


def test_resume_from_part_left_by_earlier_call(
    http_server: LocalHTTPServer, tmp_path: Path
) -> None:
    url = http_server.add("/f.bin", DATA)
    dest = tmp_path / "f.bin"
    _part(dest).write_bytes(DATA[:5000])
    _fetch(url, dest, sha256=SHA)
    assert dest.read_bytes() == DATA
    assert [r.range for r in http_server.requests] == ["bytes=5000-"]


def test_complete_part_with_416_is_verified_not_refetched(
    http_server: LocalHTTPServer, tmp_path: Path
) -> None:
    url = http_server.add("/f.bin", DATA)
    dest = tmp_path / "f.bin"
    _part(dest).write_bytes(DATA)
    _fetch(url, dest, sha256=SHA)
    assert dest.read_bytes() == DATA
    assert [r.status for r in http_server.requests] == [416]


def test_stale_oversized_part_restarts(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    url = http_server.add("/f.bin", DATA)
    dest = tmp_path / "f.bin"
    _part(dest).write_bytes(DATA + b"junk")
    _fetch(url, dest)  # no size given: the server's 416 says the part is too long
    assert dest.read_bytes() == DATA
    assert [r.status for r in http_server.requests] == [416, 200]


def test_server_ignoring_range_restarts_cleanly(
    http_server: LocalHTTPServer, tmp_path: Path
) -> None:
    url = http_server.add("/f.bin", DATA, cut_after=100_000, ignore_range=True)
    dest = tmp_path / "f.bin"
    _fetch(url, dest, sha256=SHA, size=len(DATA))
    assert dest.read_bytes() == DATA
    second = http_server.requests[1]
    assert (second.range, second.status) == ("bytes=100000-", 200)


def test_503_twice_then_ok(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    url = http_server.add("/f.bin", DATA, fail_first=2)
    dest = tmp_path / "f.bin"
    _fetch(url, dest, sha256=SHA, retries=2)
    assert dest.read_bytes() == DATA
    assert [r.status for r in http_server.requests] == [503, 503, 200]


def test_backoff_doubles_between_attempts(
    http_server: LocalHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr("detbench.data.download.time.sleep", sleeps.append)
    url = http_server.add("/f.bin", DATA, fail_first=3)
    _fetch(url, tmp_path / "f.bin", backoff_s=0.5)
    assert sleeps == [0.5, 1.0, 2.0]


def test_retries_exhausted_names_url(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    url = http_server.add("/f.bin", DATA, fail_first=100)
    dest = tmp_path / "f.bin"
    with pytest.raises(DetbenchError, match=r"failed after 3 attempt\(s\): HTTP 503") as info:
        _fetch(url, dest, retries=2)
    assert str(info.value).startswith(url)
    assert len(http_server.requests) == 3
    assert not dest.exists()


def test_404_is_not_retried(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    url = http_server.url("/missing.bin")
    with pytest.raises(DetbenchError, match=r"missing\.bin: HTTP 404"):
        _fetch(url, tmp_path / "m.bin", retries=5)
    assert len(http_server.requests) == 1


def test_connection_refused_is_retried_then_reported(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_unused_port()}/f.bin"
    with pytest.raises(DetbenchError, match=r"failed after 2 attempt\(s\): Connection"):
        _fetch(url, tmp_path / "f.bin", retries=1)


def test_existing_verified_dest_makes_no_request(
    http_server: LocalHTTPServer, tmp_path: Path
) -> None:
    url = http_server.add("/f.bin", DATA)
    dest = tmp_path / "f.bin"
    dest.write_bytes(DATA)
    assert _fetch(url, dest, sha256=SHA, size=len(DATA)) == dest
    assert http_server.requests == []


def test_existing_bad_dest_is_replaced(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    url = http_server.add("/f.bin", DATA)
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"corrupt")
    _fetch(url, dest, sha256=SHA)
    assert dest.read_bytes() == DATA
    assert len(http_server.requests) == 1


def test_redirect_keeps_range(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    # Code hosts answer archive URLs with a redirect; resuming must survive it.
    http_server.add("/real.bin", DATA, cut_after=50_000)
    url = http_server.redirect("/f.bin", "/real.bin")
    dest = tmp_path / "f.bin"
    _fetch(url, dest, sha256=SHA)
    assert dest.read_bytes() == DATA
    assert [r.range for r in http_server.requests_for("/real.bin")] == [None, "bytes=50000-"]


def test_download_range_fetches_only_the_slice(
    http_server: LocalHTTPServer, tmp_path: Path
) -> None:
    url = http_server.add("/f.bin", DATA)
    dest = tmp_path / "slice.bin"
    assert _fetch_range(url, dest, 1000, 5000) == dest
    assert dest.read_bytes() == DATA[1000:5000]
    assert not _part(dest).exists()
    assert [(r.range, r.status) for r in http_server.requests] == [("bytes=1000-4999", 206)]


def test_download_range_resumes_after_a_cut(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    url = http_server.add("/f.bin", DATA, cut_at=150_000)
    dest = tmp_path / "slice.bin"
    _fetch_range(url, dest, 100_000, 200_000)
    assert dest.read_bytes() == DATA[100_000:200_000]
    assert [(r.range, r.status) for r in http_server.requests] == [
        ("bytes=100000-199999", 206),
        ("bytes=150000-199999", 206),  # only the bytes the cut connection did not deliver
    ]


def test_download_range_retries_server_errors(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    url = http_server.add("/f.bin", DATA, fail_first=2)
    dest = _fetch_range(url, tmp_path / "slice.bin", 0, 100)
    assert dest.read_bytes() == DATA[:100]
    assert [r.status for r in http_server.requests] == [503, 503, 206]


def test_download_range_resumes_part_left_by_earlier_call(
    http_server: LocalHTTPServer, tmp_path: Path
) -> None:
    url = http_server.add("/f.bin", DATA)
    dest = tmp_path / "slice.bin"
    _part(dest).write_bytes(DATA[10:20])
    _fetch_range(url, dest, 10, 30)
    assert dest.read_bytes() == DATA[10:30]
    assert [r.range for r in http_server.requests] == ["bytes=20-29"]


def test_download_range_without_range_support_raises_and_keeps_nothing(
    http_server: LocalHTTPServer, tmp_path: Path
) -> None:
    url = http_server.add("/f.bin", DATA, ignore_range=True)
    dest = tmp_path / "slice.bin"
    with pytest.raises(RangesUnsupported, match=rf"^{url}: server ignored a Range request"):
        _fetch_range(url, dest, 10, 30)
    assert not dest.exists() and not _part(dest).exists()
    assert len(http_server.requests) == 1  # not retried: another attempt cannot help


def test_download_range_past_the_end_names_url(
    http_server: LocalHTTPServer, tmp_path: Path
) -> None:
    url = http_server.add("/f.bin", DATA)
    with pytest.raises(DetbenchError, match=rf"^{url}: server cannot serve bytes 400000-400009 "):
        _fetch_range(url, tmp_path / "slice.bin", 400_000, 400_010)


def test_fetch_tail_returns_size_and_last_bytes(http_server: LocalHTTPServer) -> None:
    url = http_server.add("/f.bin", DATA)
    assert fetch_tail(url, 100, backoff_s=0) == (len(DATA), DATA[-100:])
    assert fetch_tail(url, 10**9, backoff_s=0) == (len(DATA), DATA)  # longer than the file
    assert [r.range for r in http_server.requests] == ["bytes=-100", "bytes=-1000000000"]


def test_fetch_tail_retries_then_reports_no_range_support(http_server: LocalHTTPServer) -> None:
    url = http_server.add("/f.bin", DATA, fail_first=1, ignore_range=True)
    with pytest.raises(RangesUnsupported, match=r"\(HTTP 200\)"):
        fetch_tail(url, 100, backoff_s=0)
    assert [r.status for r in http_server.requests] == [503, 200]


def _fetch_range(url: str, dest: Path, start: int, end: int) -> Path:
    return download_range(url, dest, start, end, backoff_s=0, progress=False)


def _unused_port() -> int:
    """A 127.0.0.1 port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
