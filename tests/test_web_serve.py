"""``detbench serve`` as a process: its start-up and stop lines, and the errors waitress answers
before the app sees a request (a body over its cap) in the API's JSON."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_web import _wait_until_healthy, free_port, write_bccd_weights

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bccd_weights(tmp_path_factory.mktemp("serve") / "weights.pt")


class Served:
    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def stop(self, signum: int) -> str:
        self.process.send_signal(signum)
        output = self.process.communicate(timeout=60)[0]
        assert self.process.returncode == 0, output
        return output


@pytest.fixture
def served(tmp_path: Path, weights: Path) -> Iterator[Served]:
    port = free_port()
    command = [
        sys.executable, "-m", "detbench.cli", "serve", "--bccd-model", str(weights),
        "--port", str(port), "--device", "cpu",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    running = Served(process, port)
    try:
        _wait_until_healthy(running.url, process)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_start_up_and_stopped_lines(served: Served, signum: int) -> None:
    output = served.stop(signum)
    assert "Logging error" not in output and "Traceback" not in output, output
    lines = [line.split(": ", 1)[-1] for line in output.splitlines()]
    serving = [line for line in lines if line.startswith("serving on ")]
    assert serving == [
        f"serving on http://127.0.0.1:{served.port}/ with waitress, 2 uploads at a time "
        "(Ctrl-C to stop)"
    ], output
    assert lines[-1] == "stopped", output


def post_large_body(port: int, size: int) -> tuple[int, str, dict]:
    """POST ``size`` bytes of multipart body; read the answer even when the server closes the
    connection before the body is all sent (as it does for one over its cap)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    boundary = "x" * 20
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    connection.putrequest("POST", "/api/detect")
    connection.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    connection.putheader("Content-Length", str(size))
    connection.endheaders()
    chunk = b"\0" * MIB
    try:
        connection.send(head)
        sent = len(head)
        while sent < size - len(tail):
            part = chunk[: size - len(tail) - sent]
            connection.send(part)
            sent += len(part)
        connection.send(tail)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed; its answer is waiting to be read
    response = connection.getresponse()
    body = response.read().decode("utf-8")
    connection.close()
    return response.status, response.getheader("Content-Type") or "", json.loads(body)


@pytest.mark.parametrize("size_mib", [64, 18])  # both over waitress' 17 MiB cap
def test_body_over_waitress_cap_is_json_413(served: Served, size_mib: int) -> None:
    status, content_type, body = post_large_body(served.port, size_mib * MIB)
    assert status == 413 and content_type == "application/json", body
    assert body == {"error": "upload too large: at most 16 MiB (16,777,216 bytes) per request"}
    served.stop(signal.SIGTERM)
