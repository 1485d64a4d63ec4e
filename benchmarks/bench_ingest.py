"""GRIB2 -> Zarr throughput: def_ray's ingest (Ray tasks) against a plain serial cfgrib + xarray loop.

    python benchmarks/bench_ingest.py [--hours 16] [--size 384] [--cpus 2] [--tile 256]

The input is seeded synthetic HRRR-like hours (def_ray.data.synthetic, all 8 channels per file) on a square crop of
the HRRR grid, written as GRIB2 once before timing.  Three runs on the same files in the same process:
  baseline   for each file: xr.open_dataset(engine="cfgrib") then to_zarr (first creates, then appends on time)
  serial     def_ray.data.ingest.ingest(parallel=False): our decoder and the crash-safe step writes, one process
  ray        def_ray.data.ingest.ingest(parallel=True) on a local Ray of --cpus CPUs (started before timing)
Throughput is MB of GRIB2 input per second of wall time; the ratios are against the baseline.
"""

from __future__ import annotations

import argparse
import os
import warnings
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
warnings.filterwarnings("ignore")  # xarray's merge/zarr future warnings in the baseline are noise here

from def_ray.config import SynthConfig  # noqa: E402
from def_ray.data.ingest import ingest  # noqa: E402  (loads pyproj before eccodes: see def_ray.data.grib)
from def_ray.data.synthetic import CHANNELS, write_synthetic_grib  # noqa: E402


def baseline(paths: list[Path], out: Path, tile: int) -> None:
    import cfgrib
    import xarray as xr

    for k, p in enumerate(paths):
        # one dataset per level type (cfgrib cannot put 2 m and 10 m fields in one), merged on the grid
        parts = cfgrib.open_datasets(str(p), backend_kwargs={"indexpath": ""})
        parts = [d.drop_vars([c for c in d.coords if c not in ("latitude", "longitude", "valid_time")])
                 for d in parts]
        ds = xr.merge(parts, compat="override", join="exact")
        ds = ds.expand_dims(time=[ds["valid_time"].values]).drop_vars("valid_time")
        enc = {v: {"chunks": (1, tile, tile)} for v in ds.data_vars} if k == 0 else None
        if k == 0:
            ds.to_zarr(out, mode="w", zarr_format=3, consolidated=False, encoding=enc)
        else:
            ds.drop_vars(["latitude", "longitude"]).to_zarr(out, append_dim="time", zarr_format=3,
                                                            consolidated=False)


def _warm() -> int:
    import def_ray.data.ingest  # noqa: F401

    time.sleep(0.5)  # hold this worker so the next warm-up task lands on another one
    return os.getpid()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=int, default=16)
    ap.add_argument("--size", type=int, default=384, help="crop edge (points)")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--tile", type=int, default=256)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    try:
        cfg = SynthConfig(hours=args.hours, ny=args.size, nx=args.size, y0=300, x0=600,
                          start=datetime(2024, 6, 1, 12), out_dir=str(work / "grib"))
        t = time.perf_counter()
        paths = write_synthetic_grib(cfg)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"input: {len(paths)} GRIB2 files, {args.size}x{args.size}, {len(CHANNELS)} fields each, "
              f"{mb:.1f} MB (written in {time.perf_counter() - t:.1f} s)")
        for p in paths:  # read once so every run finds them in the page cache
            p.read_bytes()
        variables = list(CHANNELS)
        files = [str(p) for p in paths]

        t = time.perf_counter()
        baseline(paths, work / "baseline.zarr", args.tile)
        t_base = time.perf_counter() - t

        t = time.perf_counter()
        rep = ingest(files, str(work / "serial.zarr"), variables, tile=args.tile, parallel=False, progress=False)
        t_serial = time.perf_counter() - t
        assert rep.ok and len(rep.written) == len(paths), rep

        import ray

        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        try:
            # start the workers and import def_ray in them: start-up is not what is measured
            ray.get([ray.remote(_warm).remote() for _ in range(args.cpus)])
            t = time.perf_counter()
            rep = ingest(files, str(work / "ray.zarr"), variables, tile=args.tile, parallel=True, progress=False)
            t_ray = time.perf_counter() - t
            assert rep.ok and len(rep.written) == len(paths), rep
        finally:
            ray.shutdown()

        print(f"{'run':<34}{'seconds':>9}{'MB/s':>9}{'vs baseline':>13}")
        for name, secs in ((f"baseline (cfgrib + to_zarr, serial)", t_base), ("ingest parallel=False", t_serial),
                           (f"ingest Ray, {args.cpus} CPUs", t_ray)):
            print(f"{name:<34}{secs:>9.2f}{mb / secs:>9.1f}{t_base / secs:>12.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
