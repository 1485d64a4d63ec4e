"""Session fixtures that start real parts (Ray, an S3 server, an MLflow server) on loopback and stop them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")
# Tests talk only to the moto S3 server on loopback, which takes any credentials; set them before Ray starts so
# its workers inherit them (and never reach for a developer's real AWS keys).
TEST_AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
os.environ.update(TEST_AWS_ENV)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DEF_RAY_SHARED_DATA", REPO.parent / "shared" / "data"))
REQUIRE_REAL_DATA = os.environ.get("DEF_RAY_REQUIRE_REAL_DATA") == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, the real HRRR and MRMS GRIB2; skips where absent, fails in CI (DEF_RAY_REQUIRE_REAL_DATA=1)."""
    if not (SHARED_DATA / "hrrr").is_dir():
        msg = f"real data not found at {SHARED_DATA} (set DEF_RAY_SHARED_DATA)"
        if REQUIRE_REAL_DATA:
            pytest.fail(msg + " and DEF_RAY_REQUIRE_REAL_DATA=1")
        pytest.skip(msg)
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """One local Ray instance shared by the whole test session."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
                 _temp_dir=str(tmp_path_factory.mktemp("ray")),
                 runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true",
                                           "TQDM_DISABLE": "1", **TEST_AWS_ENV}})
    yield ray
    spawned = _descendants(os.getpid(), b"/ray/")  # raylet, GCS, every worker: snapshot while their parents live
    ray.shutdown()
    _reap(spawned, "Ray")


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a running process, from /proc; None once it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else (int(fields[1]), int(fields[19]))


def _descendants(root: int, child_cmdline: bytes) -> dict[int, int]:
    """{pid: start time} of the children of `root` whose command line holds `child_cmdline`, and of every process
    below them (Linux /proc; empty elsewhere)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _proc_stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found = {pid: start for pid, start in children.get(root, []) if child_cmdline in _cmdline(pid)}
    frontier = list(found)
    while frontier:
        for pid, start in children.get(frontier.pop(), []):
            if pid not in found:
                found[pid] = start
                frontier.append(pid)
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def _reap(spawned: dict[int, int], what: str, grace_s: float = 15.0) -> None:
    """Kill whatever of `spawned` outlived its shutdown by `grace_s` and say so: tests never leave processes behind
    (one CI run left an orphaned Ray Train controller after `ray.shutdown()`)."""
    def alive() -> list[int]:
        return [pid for pid, start in spawned.items() if (_proc_stat(pid) or (None, None))[1] == start]

    deadline = time.monotonic() + grace_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    left = {}
    for pid in alive():
        try:
            left[pid] = _cmdline(pid)[:80].decode(errors="replace")
            os.kill(pid, 9)
        except OSError:  # gone meanwhile
            pass
    if left:
        print(f"\n{what} processes still alive {grace_s:.0f} s after shutdown, killed: {left}", file=sys.stderr)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 HTTP API (moto_server) on loopback; yields its endpoint URL and sets dummy credentials."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    wait_http(endpoint, 10)
    yield endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket on the session's S3 server; yields (bucket name, storage options)."""
    import boto3

    name = "b" + request.node.name.lower().replace("_", "-")[:40].strip("-[]") + f"-{free_port()}"
    name = "".join(c for c in name if c.isalnum() or c == "-")
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    yield name, {"client_kwargs": {"endpoint_url": s3_server}}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` with a sqlite backend on loopback; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--default-artifact-root", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(uri + "/health", 60, proc)
        yield uri
    finally:
        stop(proc)
