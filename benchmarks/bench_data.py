"""Ray Data window stream vs a plain loop (Zarr reads + torch DataLoader) on the same store, same process.

Prints windows/s of both, their ratio, and what one training worker of the demo model consumes (optimiser
steps/s x batch), so the margin between input and training speed is visible:

    python benchmarks/bench_data.py [--hours 240] [--size 256] [--crop 128] [--passes 2]

Two cases: the demo layout (7 variables, 32 x 32 full frames, as configs/demo.yaml) and a larger grid with
random crops (closer to HRRR tiles).  Ray starts locally with all cores; start-up is not timed; the first pass of
the Ray stream is reported separately (it includes planning and worker warm-up).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def make_store(url: str, hours: int, size: int, variables: list[str], tile: int) -> None:
    from def_ray.data.zarr_store import ZarrStore

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size]
    st = ZarrStore.create(url, variables=variables, latitude=30 + 0.03 * y, longitude=-100 + 0.03 * x,
                          t0="2024-06-01", dt_seconds=3600, n_times=hours, tile=tile)
    base = rng.normal(size=(len(variables), size, size)).astype("float32")
    for t in range(hours):
        st.write_step(np.datetime64("2024-06-01") + np.timedelta64(t, "h"),
                      {v: np.roll(base[k], t, axis=1) + 0.1 * t for k, v in enumerate(variables)})


def ray_stream(wd, crop: int | None, batch: int, passes: int) -> list[float]:
    ds = wd.dataset("train", crop=crop, shuffle=True, seed=0)
    rates = []
    for _ in range(passes):
        t0, n = time.perf_counter(), 0
        for b in ds.iter_batches(batch_size=batch, batch_format="numpy", prefetch_batches=4):
            n += len(b["time"])
        rates.append(n / (time.perf_counter() - t0))
    return rates


def plain_loop(wd, crop: int | None, batch: int, workers: int) -> float:
    import torch
    from torch.utils.data import DataLoader, Dataset

    from def_ray.data.ray_dataset import WindowReader

    class Windows(Dataset):
        def __init__(self):
            self.starts = wd.splits.train
            self.reader = None

        def __len__(self):
            return len(self.starts)

        def __getitem__(self, i):
            if self.reader is None:
                self.reader = WindowReader(wd.spec)
            rng = np.random.default_rng(i)
            crops = self.reader.random_crops(rng, 1, crop) if crop else None
            out = self.reader.read([self.starts[i]], crops, crop)
            return {k: torch.as_tensor(v[0]) for k, v in out.items()}

    loader = DataLoader(Windows(), batch_size=batch, shuffle=True, num_workers=workers)
    t0, n = time.perf_counter(), 0
    for b in loader:
        n += len(b["time"])
    return n / (time.perf_counter() - t0)


def demo_consumption(wd, batch: int, steps: int = 20) -> float:
    """Windows/s one worker (1 CPU thread) of the demo diffusion model trains on: steps/s x batch."""
    import torch

    from def_ray.config import load_config
    from def_ray.models import build_model

    torch.set_num_threads(1)
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    model = build_model(cfg.model, wd.spec.cond_channels, wd.spec.target_channels)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sample = first_batch(wd, batch)
    cond, target = torch.from_numpy(sample["cond"]), torch.from_numpy(sample["target"])
    for _ in range(3):  # warm-up
        model.training_loss(cond, target).backward()
        opt.step()
        opt.zero_grad()
    t0 = time.perf_counter()
    for _ in range(steps):
        model.training_loss(cond, target).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    torch.set_num_threads(os.cpu_count() or 1)
    return steps * batch / (time.perf_counter() - t0)


def first_batch(wd, batch: int) -> dict[str, np.ndarray]:
    from def_ray.data.ray_dataset import WindowReader

    return WindowReader(wd.spec).read(wd.splits.train[:batch])


def run_case(name: str, root: Path, hours: int, size: int, crop: int | None, batch: int, passes: int,
             consumption: bool) -> None:
    from def_ray.config import DataConfig
    from def_ray.data.lexicon import DEFAULT_CHANNELS
    from def_ray.data.ray_dataset import prepare_windows

    variables = list(DEFAULT_CHANNELS)
    url = str(root / f"{name}.zarr")
    t0 = time.perf_counter()
    tile = min(size, 128)  # one chunk per 32 x 32 demo frame; 128 px chunks (= the crop) on the larger grid
    make_store(url, hours, size, variables, tile=tile)
    wd = prepare_windows(DataConfig(store=url, variables=variables, crop=crop, tile=tile))
    n = wd.n_windows("train")
    print(f"\n== {name}: {len(variables)} variables, {size} x {size} grid in {tile} px chunks, {hours} h, "
          f"{'crop ' + str(crop) if crop else 'full frames'}, batch {batch}: {n} train windows "
          f"(store written in {time.perf_counter() - t0:.1f} s)")
    plain0 = plain_loop(wd, crop, batch, workers=0)
    plain2 = plain_loop(wd, crop, batch, workers=2)
    rates = ray_stream(wd, crop, batch, passes)
    best_plain = max(plain0, plain2)
    print(f"plain loop, DataLoader num_workers=0 : {plain0:8.1f} windows/s")
    print(f"plain loop, DataLoader num_workers=2 : {plain2:8.1f} windows/s")
    print(f"Ray Data stream, first pass          : {rates[0]:8.1f} windows/s")
    print(f"Ray Data stream, later passes (best)  : {max(rates[1:] or rates):8.1f} windows/s")
    print(f"ratio Ray / best plain loop           : {max(rates[1:] or rates) / best_plain:8.2f} x  (goal >= 1.0)")
    if consumption:
        c = demo_consumption(wd, batch)
        print(f"demo model, one worker consumes       : {c:8.1f} windows/s (steps/s x batch {batch})")
        print(f"ratio Ray stream / consumption        : {max(rates[1:] or rates) / c:8.2f} x  (goal >= 3)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hours", type=int, default=240)
    p.add_argument("--size", type=int, default=256, help="grid edge of the larger case")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--passes", type=int, default=3)
    args = p.parse_args()
    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory() as tmp:
        run_case("demo", Path(tmp), args.hours, 32, None, 8, args.passes, consumption=True)
        run_case("large", Path(tmp), args.hours, args.size, args.crop, 8, args.passes, consumption=False)
    ray.shutdown()


if __name__ == "__main__":
    main()
