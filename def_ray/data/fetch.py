"""Download the messages we need from an HRRR archive (NOAA's public S3 bucket or any fsspec URL).

For every hourly cycle from start to end, the file's `.idx` inventory is read first, then only the messages holding
the requested variables are downloaded with byte-range requests (neighbouring ranges merged into one request) and
written one after the other into a local GRIB2 file with the archive's relative layout, next to a `.idx` inventory of
its own. Both are written under temporary names and renamed into place, the inventory last: a file with a matching
inventory is complete, and a re-run skips it. A missing hour, or a variable missing from an inventory, is recorded
in the report and the other hours go on.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import fsspec

from def_ray.config import FetchConfig
from def_ray.data.idx import IdxError, IdxRecord, format_idx, merge_ranges, parse_idx, renumber, select_records
from def_ray.data.lexicon import check_variables, lookup

__all__ = ["FetchError", "TruncatedTransfer", "FetchedFile", "HourProblem", "FetchReport", "archive_relpath",
           "hourly_cycles", "is_transient", "retry_call", "storage_options_for", "fetch_hrrr", "fetch_from_config"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class FetchError(RuntimeError):
    """Bytes from the archive that are not what the inventory promised (a stale or foreign .idx)."""


class TruncatedTransfer(OSError):
    """A range request returned fewer bytes than asked for; worth retrying."""


# ------------------------------------------------------------------------------------------------ storage options

# options only S3 understands; other filesystems hand unknown options on to their client (HTTP: to every aiohttp
# request, which fails with "unexpected keyword argument 'anon'")
_S3_ONLY = frozenset({"anon", "key", "secret", "token", "endpoint_url", "region_name", "config_kwargs",
                      "s3_additional_kwargs", "requester_pays", "version_aware", "profile", "use_ssl"})
_S3_CLIENT_ONLY = frozenset({"endpoint_url", "region_name", "aws_access_key_id", "aws_secret_access_key",
                             "aws_session_token", "verify"})


def storage_options_for(url: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The part of `options` meant for the filesystem of `url`: S3 options reach s3:// URLs only.

    Configs describe one object store (StorageOptions: anon, endpoint, region), while archives and sources may be
    any fsspec URL; options the filesystem would not understand are dropped, the others are kept.
    """
    opts = dict(options or {})
    if fsspec.utils.get_protocol(str(url)) in ("s3", "s3a"):
        return opts
    kept = {k: v for k, v in opts.items() if k not in _S3_ONLY}
    client = {k: v for k, v in dict(kept.pop("client_kwargs", None) or {}).items() if k not in _S3_CLIENT_ONLY}
    if client:
        kept["client_kwargs"] = client
    return kept


# ------------------------------------------------------------------------------------------------------- retrying

_PERMANENT: tuple[type[BaseException], ...] = (FileNotFoundError, PermissionError, IsADirectoryError,
                                               NotADirectoryError)


def _transient_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [OSError, TimeoutError, ConnectionError]
    try:
        import aiohttp

        types.append(aiohttp.ClientError)
    except ImportError:  # only needed when s3fs/http are in use
        pass
    try:
        import botocore.exceptions as bce

        types += [bce.ConnectionError, bce.HTTPClientError]
    except ImportError:
        pass
    return tuple(types)


_TRANSIENT = _transient_types()


def is_transient(exc: BaseException) -> bool:
    """Network trouble that may go away on its own; a missing or forbidden object does not."""
    return isinstance(exc, _TRANSIENT) and not isinstance(exc, _PERMANENT)


def retry_call(fn: Callable[[], T], *, retries: int, backoff_s: float, what: str = "request",
               transient: Callable[[BaseException], bool] = is_transient,
               sleep: Callable[[float], None] = time.sleep) -> T:
    """fn(), retried up to `retries` times on transient errors, waiting backoff_s * 2**attempt between tries."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt >= retries or not transient(exc):
                raise
            delay = backoff_s * 2**attempt
            log.warning("%s failed (%s: %s); retry %d/%d in %.1f s", what, type(exc).__name__, exc, attempt + 1,
                        retries, delay)
            sleep(delay)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------------------- layout

def hourly_cycles(start: datetime, end: datetime) -> list[datetime]:
    """Whole UTC hours from start to end inclusive (naive datetimes are taken as UTC)."""
    start, end = _utc_naive(start, "start"), _utc_naive(end, "end")
    if start > end:
        raise ValueError(f"fetch start {start:%Y-%m-%d %H:%M} is after end {end:%Y-%m-%d %H:%M}")
    n = int((end - start) // timedelta(hours=1)) + 1
    return [start + timedelta(hours=i) for i in range(n)]


def _utc_naive(t: datetime, what: str) -> datetime:
    if t.tzinfo is not None:
        t = t.astimezone(timezone.utc).replace(tzinfo=None)
    if (t.minute, t.second, t.microsecond) != (0, 0, 0):
        raise ValueError(f"fetch {what} {t.isoformat()} is not a whole hour (HRRR cycles are hourly)")
    return t


def archive_relpath(cycle: datetime, product: str, lead_hour: int) -> str:
    """hrrr.YYYYMMDD/conus/hrrr.tHHz.{product}{lead:02d}.grib2, the archive's layout (kept under out_dir too)."""
    return f"hrrr.{cycle:%Y%m%d}/conus/hrrr.t{cycle:%H}z.{product}{lead_hour:02d}.grib2"


# --------------------------------------------------------------------------------------------------------- report

@dataclass(frozen=True)
class FetchedFile:
    cycle: datetime
    path: Path
    variables: tuple[str, ...]  # requested variables the file holds
    messages: int
    bytes: int  # GRIB bytes downloaded for it (0 when skipped)
    requests: int
    skipped: bool = False  # already complete locally


@dataclass(frozen=True)
class HourProblem:
    cycle: datetime
    url: str
    reason: str


@dataclass
class FetchReport:
    files: list[FetchedFile] = field(default_factory=list)
    missing_hours: list[HourProblem] = field(default_factory=list)  # no inventory or no GRIB file in the archive
    failed_hours: list[HourProblem] = field(default_factory=list)  # errors left after retries, bad bytes
    missing_variables: dict[datetime, list[str]] = field(default_factory=dict)  # requested, absent from inventory
    idx_bytes: int = 0

    @property
    def fetched(self) -> list[FetchedFile]:
        return [f for f in self.files if not f.skipped]

    @property
    def skipped(self) -> list[FetchedFile]:
        return [f for f in self.files if f.skipped]

    @property
    def bytes_transferred(self) -> int:
        """GRIB bytes downloaded (inventories are counted in `idx_bytes`)."""
        return sum(f.bytes for f in self.files)

    @property
    def ok(self) -> bool:
        return not (self.missing_hours or self.failed_hours or self.missing_variables)

    def summary(self, limit: int = 8) -> str:
        """Totals, then at most `limit` lines per kind of problem: a month of failed hours still fits a screen."""
        status = "complete" if self.ok else (f"INCOMPLETE: {len(self.missing_hours)} missing hour(s), "
                                             f"{len(self.failed_hours)} failed hour(s), "
                                             f"{len(self.missing_variables)} hour(s) lacking variables")
        lines = [f"{len(self.fetched)} file(s) fetched, {len(self.skipped)} already complete, "
                 f"{self.bytes_transferred / 2**20:.1f} MiB of GRIB in "
                 f"{sum(f.requests for f in self.files)} range request(s); {status}"]
        lines += _first(limit, "missing hour(s)", [f"missing hour {p.cycle:%Y-%m-%d %HZ}: {p.reason}"
                                                   for p in self.missing_hours])
        lines += _first(limit, "failed hour(s)", [f"failed hour {p.cycle:%Y-%m-%d %HZ}: {p.reason}"
                                                  for p in self.failed_hours])
        lines += _first(limit, "hour(s) with missing variables",
                        [f"{c:%Y-%m-%d %HZ}: not in the inventory: {', '.join(v)}"
                         for c, v in sorted(self.missing_variables.items())])
        return "\n".join(lines)


def _first(limit: int, what: str, lines: list[str], width: int = 200) -> list[str]:
    """At most `limit` of lines, each cut to `width` characters, the rest counted in the last line."""
    cut = [line if len(line) <= width else line[:width - 3] + "..." for line in lines]
    if len(cut) <= limit:
        return cut
    return [*cut[:limit - 1], f"... and {len(cut) - limit + 1} more {what}"]


# ---------------------------------------------------------------------------------------------------------- fetch

def _local_complete(path: Path, variables: Sequence[str]) -> bool:
    """True when `path` and its inventory exist, agree, and hold every requested variable."""
    idx_path = Path(str(path) + ".idx")
    if not (path.is_file() and idx_path.is_file()):
        return False
    try:
        records = parse_idx(idx_path.read_text(), str(idx_path))
    except (IdxError, UnicodeDecodeError):
        return False
    if any(not recs for recs in select_records(records, variables).values()):
        return False
    size = path.stat().st_size
    with path.open("rb") as fh:
        for off in sorted({r.offset for r in records}):
            fh.seek(off)
            head = fh.read(16)
            if len(head) < 16 or head[:4] != b"GRIB" or off + int.from_bytes(head[8:16], "big") > size:
                return False
        fh.seek(max(size - 4, 0))
        return fh.read(4) == b"7777"


def _cut_message(blob: bytes, blob_start: int, rec: IdxRecord, url: str) -> bytes:
    """The one GRIB2 message at rec.offset inside a downloaded range, checked against its own length field."""
    lo = rec.offset - blob_start
    hi = None if rec.end is None else rec.end - blob_start + 1
    chunk = blob[lo:hi]
    if len(chunk) < 16 or chunk[:4] != b"GRIB" or chunk[7] != 2:
        raise FetchError(f"{url}: bytes at offset {rec.offset} ({rec.key}) are not the start of a GRIB2 message; "
                         "is the .idx stale?")
    total = int.from_bytes(chunk[8:16], "big")
    if total > len(chunk) or chunk[total - 4:total] != b"7777":
        raise FetchError(f"{url}: message at offset {rec.offset} ({rec.key}) is {total} bytes long but its range "
                         f"holds {len(chunk)}; is the .idx stale?")
    return chunk[:total]  # the last range runs to the end of the file and may carry trailing bytes


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class _HourResult:
    file: FetchedFile | None = None
    missing: HourProblem | None = None
    failed: HourProblem | None = None
    missing_variables: list[str] = field(default_factory=list)
    idx_bytes: int = 0


def _fetch_hour(fs: fsspec.AbstractFileSystem, remote: str, url: str, local: Path, cycle: datetime,
                variables: Sequence[str], cfg: FetchConfig) -> _HourResult:
    if _local_complete(local, variables):
        n = len({r.offset for r in parse_idx(Path(str(local) + ".idx").read_text())})
        return _HourResult(file=FetchedFile(cycle, local, tuple(variables), n, 0, 0, skipped=True))

    def get(start: int | None = None, end: int | None = None, path: str = remote) -> bytes:
        data = fs.cat_file(path, start=start, end=end)
        if start is not None and end is not None and len(data) != end - start:
            raise TruncatedTransfer(f"{url}: asked for bytes {start}-{end - 1}, got {len(data)}")
        return data

    retry = dict(retries=cfg.retries, backoff_s=cfg.backoff_s)
    result = _HourResult()
    try:
        idx_raw = retry_call(lambda: get(path=remote + ".idx"), what=f"{url}.idx", **retry)
    except FileNotFoundError:
        result.missing = HourProblem(cycle, url, "no .idx inventory in the archive")
        return result
    result.idx_bytes = len(idx_raw)
    records = parse_idx(idx_raw.decode("ascii", errors="replace"), url + ".idx")
    selected = select_records(records, variables)
    result.missing_variables = [n for n, recs in selected.items() if not recs]
    for n in result.missing_variables:
        log.warning("%s: no %s (%s) in its inventory", url, n, lookup(n).idx_key)
    chosen = sorted({r for recs in selected.values() for r in recs}, key=lambda r: (r.offset, r.number))
    if not chosen:
        result.failed = HourProblem(cycle, url, f"none of {list(variables)} is in the inventory")
        return result

    messages: dict[int, bytes] = {}
    n_requests = n_bytes = 0
    try:
        for start, end in merge_ranges(chosen, cfg.merge_gap_bytes):
            stop = None if end is None else end + 1
            blob = retry_call(lambda s=start, e=stop: get(s, e), what=f"{url} bytes {start}-{end}", **retry)
            n_requests += 1
            n_bytes += len(blob)
            for rec in chosen:
                if rec.offset not in messages and start <= rec.offset and (end is None or rec.offset <= end):
                    messages[rec.offset] = _cut_message(blob, start, rec, url)
    except FileNotFoundError:
        return _HourResult(missing=HourProblem(cycle, url, "inventory present but no GRIB2 file in the archive"),
                           idx_bytes=result.idx_bytes)

    offsets = sorted(messages)
    new_offsets, pos = {}, 0
    for off in offsets:
        new_offsets[off] = pos
        pos += len(messages[off])
    local.parent.mkdir(parents=True, exist_ok=True)
    idx_path = Path(str(local) + ".idx")
    idx_path.unlink(missing_ok=True)  # an old inventory must never describe the new file
    _atomic_write(local, b"".join(messages[o] for o in offsets))
    _atomic_write(idx_path, format_idx(renumber(chosen, new_offsets)).encode())
    held = tuple(n for n in variables if selected[n])
    result.file = FetchedFile(cycle, local, held, len(offsets), n_bytes, n_requests)
    return result


def fetch_hrrr(start: datetime, end: datetime, variables: Sequence[str], cfg: FetchConfig,
               out_dir: str | Path | None = None, *, progress: bool = True) -> FetchReport:
    """Fetch `variables` of every hourly cycle start..end (lead `cfg.lead_hour`, product `cfg.product`).

    Files land in out_dir (default cfg.out_dir) with the archive's relative layout (see `archive_relpath`), each
    with a `.idx` inventory of its own. Never raises for a missing hour or variable: read the report.
    """
    variables = list(variables)
    check_variables(variables)
    if not variables:
        raise ValueError("fetch_hrrr: no variables requested")
    cycles = hourly_cycles(start, end)
    out = Path(out_dir if out_dir is not None else cfg.out_dir)
    fs, root = fsspec.core.url_to_fs(cfg.archive_url,
                                     **storage_options_for(cfg.archive_url, cfg.storage.to_fsspec()))
    root = root.rstrip("/")
    base_url = cfg.archive_url.rstrip("/")

    def one(cycle: datetime) -> _HourResult:
        rel = archive_relpath(cycle, cfg.product, cfg.lead_hour)
        url = f"{base_url}/{rel}"
        try:
            return _fetch_hour(fs, f"{root}/{rel}", url, out / rel, cycle, variables, cfg)
        except Exception as exc:  # one bad hour must not stop the others; the report says what happened
            log.error("%s: %s: %s", url, type(exc).__name__, exc)
            return _HourResult(failed=HourProblem(cycle, url, f"{type(exc).__name__}: {exc}"))

    from rich.progress import Progress

    report = FetchReport()
    results: dict[datetime, _HourResult] = {}
    with Progress(disable=not progress, transient=True) as bar, \
            ThreadPoolExecutor(max_workers=min(cfg.max_workers, len(cycles))) as pool:
        task = bar.add_task(f"HRRR {cfg.product}{cfg.lead_hour:02d}", total=len(cycles))
        futures = {pool.submit(one, c): c for c in cycles}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            bar.advance(task)
    for cycle in cycles:
        r = results[cycle]
        report.idx_bytes += r.idx_bytes
        if r.file is not None:
            report.files.append(r.file)
        if r.missing is not None:
            report.missing_hours.append(r.missing)
        if r.failed is not None:
            report.failed_hours.append(r.failed)
        if r.missing_variables:
            report.missing_variables[cycle] = r.missing_variables
    return report


def fetch_from_config(cfg: FetchConfig, *, progress: bool = True) -> FetchReport:
    """fetch_hrrr with start, end, variables and out_dir from the config section."""
    if cfg.start is None or cfg.end is None:
        raise ValueError("fetch.start and fetch.end must both be set to fetch")
    return fetch_hrrr(cfg.start, cfg.end, cfg.variables, cfg, cfg.out_dir, progress=progress)
