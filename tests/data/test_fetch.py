"""Byte-range fetching from an HRRR-like archive on a real S3 server (moto) and a real flaky HTTP server."""

from __future__ import annotations

import threading
from datetime import datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from conftest import free_port
from def_ray.cli import main
from def_ray.config import FetchConfig, StorageOptions
from def_ray.data.fetch import (TruncatedTransfer, archive_relpath, fetch_hrrr, hourly_cycles, is_transient,
                                retry_call, storage_options_for)
from def_ray.data.idx import make_idx, parse_idx

TMP, UGRD, SHEAR, HPBL = ("hrrr.t06z.wrfsfcf01-TMP.grib2", "hrrr.t06z.wrfsfcf01-UGRD.grib2",
                          "hrrr.t06z.wrfsfcf01-missing-zeros.grib2", "hrrr.t00z.wrfsfcf00-HPBL.grib2")
TRUNCATED = "hrrr.t11z.wrfsfcf12.grib2"
WANTED = ["tsfc", "u10", "hpbl", "refc"]
H = [datetime(2023, 7, 22, h) for h in range(6, 11)]  # 06Z..10Z


def _messages(raw: bytes) -> list[bytes]:
    """The complete GRIB2 messages of a byte string, by their own length fields."""
    out, pos = [], 0
    while raw[pos:pos + 4] == b"GRIB" and pos + 16 <= len(raw):
        n = int.from_bytes(raw[pos + 8:pos + 16], "big")
        if pos + n > len(raw):
            break
        out.append(raw[pos:pos + n])
        pos += n
    return out


def _decode(raw: bytes) -> list[tuple[tuple, np.ndarray]]:
    import eccodes

    out = []
    for msg in _messages(raw):
        h = eccodes.codes_new_from_message(msg)
        ident = tuple(eccodes.codes_get(h, k) for k in ("discipline", "parameterCategory", "parameterNumber",
                                                        "typeOfLevel", "level", "dataDate", "stepRange"))
        out.append((ident, eccodes.codes_get_values(h)))
        eccodes.codes_release(h)
    return out


@pytest.fixture(scope="module")
def archive(shared_data, tmp_path_factory):
    """An archive laid out like NOAA's: (relative path -> bytes) plus the original messages by name.

    06Z: TMP, UGRD, VVCSH, HPBL
    07Z: REFC, RETOP, 16/201, VIL (the complete part of the truncated file), UGRD, TMP
    08Z: nothing
    09Z: an inventory without its GRIB2 file
    10Z: a stale inventory (it describes TMP+UGRD, the file holds UGRD+TMP)
    """
    src = shared_data / "hrrr"
    one = {n: (src / n).read_bytes() for n in (TMP, UGRD, SHEAR, HPBL)}
    refc4 = b"".join(_messages((src / TRUNCATED).read_bytes()))
    assert len(_messages(refc4)) == 4
    one["refc4"] = refc4
    one["refc"] = _messages(refc4)[0]
    work = tmp_path_factory.mktemp("archive")
    files: dict[str, bytes] = {}

    def put(cycle: datetime, parts: list[bytes], idx_from: list[bytes] | None = None, grib: bool = True) -> None:
        rel = archive_relpath(cycle, "wrfsfcf", 1)
        body = b"".join(parts)
        inv_src = work / f"{cycle:%H}.grib2"
        inv_src.write_bytes(b"".join(idx_from) if idx_from is not None else body)
        files[rel + ".idx"] = make_idx(inv_src).encode()
        if grib:
            files[rel] = body

    put(H[0], [one[TMP], one[UGRD], one[SHEAR], one[HPBL]])
    put(H[1], [one["refc4"], one[UGRD], one[TMP]])
    put(H[3], [one[TMP]], grib=False)
    put(H[4], [one[UGRD], one[TMP]], idx_from=[one[TMP], one[UGRD]])
    return files, one


def _upload(files: dict[str, bytes], bucket: str, endpoint: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    for key, body in files.items():
        s3.put_object(Bucket=bucket, Key=f"archive/{key}", Body=body)


@pytest.mark.s3
@pytest.mark.realdata
@pytest.mark.slow
def test_fetch_from_s3_downloads_only_the_requested_messages(archive, s3_bucket, s3_server, tmp_path):
    files, one = archive
    bucket, _ = s3_bucket
    _upload(files, bucket, s3_server)
    cfg = FetchConfig(archive_url=f"s3://{bucket}/archive", storage=StorageOptions(endpoint_url=s3_server),
                      lead_hour=1, retries=1, backoff_s=0.01, max_workers=2)
    out = tmp_path / "grib"
    report = fetch_hrrr(H[0], H[-1], WANTED, cfg, out, progress=False)

    # which hours arrived, which are missing and why
    assert [f.cycle for f in report.fetched] == [H[0], H[1]]
    assert [(p.cycle, p.reason) for p in report.missing_hours] == [
        (H[2], "no .idx inventory in the archive"), (H[3], "inventory present but no GRIB2 file in the archive")]
    assert [p.cycle for p in report.failed_hours] == [H[4]]
    assert "stale" in report.failed_hours[0].reason and "hrrr.t10z.wrfsfcf01" in report.failed_hours[0].reason
    assert report.missing_variables == {H[0]: ["refc"], H[1]: ["hpbl"]}
    assert not report.ok

    # bytes: exactly the selected messages, nothing in between (sizes of the original single-message files)
    f06, f07 = report.fetched
    assert f06.bytes == len(one[TMP]) + len(one[UGRD]) + len(one[HPBL])
    assert f06.requests == 2  # TMP+UGRD touch and merge into one request; VVCSH lies between UGRD and HPBL
    assert f07.bytes == len(one["refc"]) + len(one[UGRD]) + len(one[TMP])
    assert f07.requests == 2
    assert report.bytes_transferred == f06.bytes + f07.bytes
    assert f06.variables == ("tsfc", "u10", "hpbl") and f07.variables == ("tsfc", "u10", "refc")

    # the local files decode to exactly those messages, value for value
    expect = {H[0]: [TMP, UGRD, HPBL], H[1]: ["refc", UGRD, TMP]}
    for f in report.fetched:
        assert f.path == out / archive_relpath(f.cycle, "wrfsfcf", 1)
        got = _decode(f.path.read_bytes())
        want = [m for name in expect[f.cycle] for m in _decode(one[name])]
        assert [g[0] for g in got] == [w[0] for w in want]
        for (_, a), (_, b) in zip(got, want):
            np.testing.assert_array_equal(a, b)
        inv = parse_idx(Path(str(f.path) + ".idx").read_text())
        assert [r.offset for r in inv] == [0, *np.cumsum([len(one[n]) for n in expect[f.cycle]])[:-1]]
    assert not list(out.rglob("*.part"))  # no temporary files left behind

    # a re-run transfers nothing for complete files; a damaged file is fetched again
    again = fetch_hrrr(H[0], H[1], ["tsfc", "u10"], cfg, out, progress=False)
    assert [f.skipped for f in again.files] == [True, True] and again.bytes_transferred == 0
    good = f06.path.read_bytes()
    f06.path.write_bytes(good[: len(good) // 2])  # as if a copy had been cut short
    healed = fetch_hrrr(H[0], H[0], ["tsfc", "u10", "hpbl"], cfg, out, progress=False)
    assert healed.fetched[0].bytes == f06.bytes and f06.path.read_bytes() == good


class _FlakyRangeHandler(SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support; the first `fail` GETs of .grib2 bytes answer 503."""

    fail = 0
    grib_gets = 0
    lock = threading.Lock()

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        if path.suffix == ".grib2":
            with self.lock:
                type(self).grib_gets += 1
                failing = type(self).grib_gets <= type(self).fail
            if failing:
                self.send_error(503, "busy")
                return
        rng = self.headers.get("Range")
        if rng:
            lo, _, hi = rng.removeprefix("bytes=").partition("-")
            lo, hi = int(lo), int(hi) if hi else len(data) - 1
            body = data[lo:hi + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {lo}-{lo + len(body) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.realdata
@pytest.mark.slow
def test_transient_http_errors_are_retried(archive, tmp_path):
    files, one = archive
    root = tmp_path / "www"
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body)
    handler = type("Flaky", (_FlakyRangeHandler,), {"fail": 2, "grib_gets": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cfg = FetchConfig(archive_url=f"http://127.0.0.1:{server.server_port}", storage=StorageOptions(anon=False),
                          lead_hour=1, retries=3, backoff_s=0.01, max_workers=1)
        report = fetch_hrrr(H[0], H[0], ["tsfc", "u10"], cfg, tmp_path / "out", progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert handler.grib_gets == 3  # two 503 answers, then the one merged range request that succeeded
    assert report.ok and report.fetched[0].bytes == len(one[TMP]) + len(one[UGRD])
    assert [g[0] for g in _decode(report.fetched[0].path.read_bytes())] == \
        [w[0] for n in (TMP, UGRD) for w in _decode(one[n])]


def test_retry_call_backs_off_exponentially_and_gives_up():
    calls, sleeps = [], []

    def flaky_twice() -> str:
        calls.append(1)
        if len(calls) <= 2:
            raise ConnectionResetError("peer reset")
        return "ok"

    assert retry_call(flaky_twice, retries=3, backoff_s=0.5, sleep=sleeps.append) == "ok"
    assert len(calls) == 3 and sleeps == [0.5, 1.0]

    calls.clear(), sleeps.clear()
    with pytest.raises(ConnectionResetError):
        retry_call(flaky_twice, retries=1, backoff_s=0.5, sleep=sleeps.append)
    assert len(calls) == 2 and sleeps == [0.5]


def test_missing_objects_are_not_retried():
    sleeps = []

    def missing() -> None:
        raise FileNotFoundError("s3://b/hrrr.20230722/conus/x.idx")

    with pytest.raises(FileNotFoundError):
        retry_call(missing, retries=5, backoff_s=1, sleep=sleeps.append)
    assert sleeps == []
    assert is_transient(TruncatedTransfer("short read")) and is_transient(TimeoutError())
    assert not is_transient(PermissionError()) and not is_transient(ValueError())


def test_cycles_are_whole_hours_in_order():
    assert hourly_cycles(H[0], H[2]) == H[:3]
    with pytest.raises(ValueError, match="after end"):
        hourly_cycles(H[2], H[0])
    with pytest.raises(ValueError, match="not a whole hour"):
        hourly_cycles(datetime(2023, 7, 22, 6, 30), H[2])
    assert archive_relpath(H[0], "wrfsubhf", 9) == "hrrr.20230722/conus/hrrr.t06z.wrfsubhf09.grib2"


def test_config_rejects_unknown_fetch_variables_and_reversed_times():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="reflectivity"):
        FetchConfig(variables=["refc", "reflectivity"])
    with pytest.raises(ValidationError, match="after"):
        FetchConfig(start=H[2], end=H[0])
    with pytest.raises(Exception, match="unknown variable"):
        fetch_hrrr(H[0], H[0], ["nope"], FetchConfig(), progress=False)


# -- any fsspec URL as the archive, and what the command line says ---------------------------------------------------
C12 = datetime(2024, 6, 1, 12)


@pytest.fixture
def http_archive(tmp_path):
    """A real HTTP server on loopback serving two hours of a small synthetic archive (GRIB2 + .idx each)."""
    from def_ray.data.grib_writer import write_grib2
    from def_ray.data.grid import HRRR_GRID

    grid = HRRR_GRID.crop(400, 900, 12, 16)
    rng = np.random.default_rng(5)
    root = tmp_path / "www"
    fields = {}
    for h in (0, 1):
        cycle = C12.replace(hour=12 + h)
        fields[cycle] = {"refc": rng.normal(20, 9, (grid.ny, grid.nx)).astype("float32"),
                         "t2m": rng.normal(295, 2, (grid.ny, grid.nx)).astype("float32"),
                         "u10": rng.normal(3, 1, (grid.ny, grid.nx)).astype("float32")}
        path = write_grib2(root / archive_relpath(cycle, "wrfsfcf", 0), fields[cycle], cycle, grid)
        Path(str(path) + ".idx").write_text(make_idx(path))
    handler = type("Plain", (_FlakyRangeHandler,), {"fail": 0, "grib_gets": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", fields
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_cli_fetches_from_an_http_archive_with_the_default_s3_options(http_archive, tmp_path, capsys):
    """fetch.storage defaults to anon=True (for NOAA's bucket): an http:// archive must not receive it."""
    from def_ray.data.grib import decode_grib

    url, fields = http_archive
    assert FetchConfig().storage.to_fsspec() == {"anon": True}
    out = tmp_path / "grib"
    code = main(["fetch-hrrr", "--start", "2024-06-01T12", "--end", "2024-06-01T13", "--variables", "refc,u10",
                 "--out", str(out), "-o", f"fetch.archive_url={url}", "-o", "fetch.retries=0"])
    captured = capsys.readouterr()
    assert code == 0, captured
    assert captured.out.splitlines() == [
        f"fetch-hrrr {url} 2024-06-01 12Z .. 2024-06-01 13Z -> {out}",
        "2 file(s) fetched, 0 already complete, 0.0 MiB of GRIB in 4 range request(s); complete"]  # t2m skipped
    for cycle, want in fields.items():
        got = decode_grib(str(out / archive_relpath(cycle, "wrfsfcf", 0)))
        assert sorted(got.data_vars) == ["refc", "u10"]  # only the requested messages were downloaded
        np.testing.assert_array_equal(got.refc.values, want["refc"])
        np.testing.assert_array_equal(got.u10.values, want["u10"])


def test_cli_fetch_from_an_unreachable_archive_exits_1_with_a_short_summary(tmp_path, capsys):
    port = free_port()  # bound and released: nothing listens there
    code = main(["fetch-hrrr", "--start", "2024-06-01T00", "--end", "2024-06-02T05", "--variables", "refc",
                 "--out", str(tmp_path / "grib"), "-o", f"fetch.archive_url=http://127.0.0.1:{port}/hrrr",
                 "-o", "fetch.retries=0"])
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert code == 1
    assert captured.err == ""  # every problem is in the summary, not in a log line per request
    assert len(lines) == 10, captured.out  # 30 failed hours: the command line, totals, 7 hours and a count
    assert lines[1] == ("0 file(s) fetched, 0 already complete, 0.0 MiB of GRIB in 0 range request(s); "
                        "INCOMPLETE: 0 missing hour(s), 30 failed hour(s), 0 hour(s) lacking variables")
    assert lines[2].startswith("failed hour 2024-06-01 00Z: ") and f"127.0.0.1:{port}" in lines[2]
    assert lines[-1] == "... and 23 more failed hour(s)"
    assert not list(tmp_path.rglob("*.grib2"))


def test_cli_fetch_bad_times_are_one_line_and_status_2(tmp_path, capsys):
    assert main(["fetch-hrrr", "--start", "2024-06-01T05", "--end", "2024-06-01T02", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "def-ray: fetch start 2024-06-01 05:00 is after end 2024-06-01 02:00\n"


def test_storage_options_reach_only_their_own_filesystem():
    s3 = {"anon": True, "key": "k", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "x"}}
    assert storage_options_for("s3://noaa-hrrr-bdp-pds/x.grib2", s3) == s3
    assert storage_options_for("s3a://b/x", s3) == s3
    for other in ("http://127.0.0.1:8000/a.grib2", "https://host/a.grib2", "/data/a.grib2", "file:///data/a"):
        assert storage_options_for(other, s3) == {}
    mixed = {"anon": False, "headers": {"Authorization": "token"}, "client_kwargs": {"trust_env": True,
                                                                                      "endpoint_url": "e"}}
    assert storage_options_for("https://host/a", mixed) == {"headers": {"Authorization": "token"},
                                                            "client_kwargs": {"trust_env": True}}
    assert storage_options_for("https://host/a", None) == {}
