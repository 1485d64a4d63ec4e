"""Serve overhead and replica scaling of the ensemble endpoint, against the same sampling function in-process.

    python benchmarks/bench_serve.py [--members 50] [--size 32] [--steps 10] [--repeats 3] [--concurrency 4]

Model: the demo config's network (configs/demo.yaml model section, untrained weights: the cost of a forward pass
does not depend on the weights) on a seeded synthetic store of size x size points.  Measured in one process:
  in-process   def_ray.forecast.forecaster.Forecaster.sample with torch on 1 thread (what one replica does)
  serve        POST /forecast over loopback HTTP (summary JSON) with 1 and 2 EnsembleSampler replicas of 1 CPU
Prints latency (median of --repeats), the Serve overhead in % of the in-process time (goal <= 20 %), and
throughput with --concurrency simultaneous requests for 1 vs 2 replicas.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=50)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--member-batch-size", type=int, default=25)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=4)
    args = p.parse_args(argv)

    import numpy as np
    import ray
    import requests
    import torch
    import yaml
    from ray import serve

    from def_ray.forecast.forecaster import Forecaster
    from def_ray.testing import tiny_checkpoint, tiny_config, tiny_store
    from def_ray.serve.app import forecast_app

    demo_model = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text())["model"]
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    store = tiny_store(tmp / "s.zarr", size=args.size, hours=20)
    sampler = {"name": "dpmpp", "steps": args.steps, "member_batch_size": args.member_batch_size}
    cfg = tiny_config(store.url, model=demo_model, data={"variables": ["refc", "t2m", "d2m", "u10", "v10", "cape",
                                                                       "cin"], "n_past": 4},
                      forecast={"members": args.members, "sampler": sampler})
    ckpt = tiny_checkpoint(tmp / "m.pt", cfg)
    init = store.committed_times()[-1]

    # -- in-process baseline -------------------------------------------------------------------------------
    fc = Forecaster.load(ckpt)
    cond = fc.conditioning(store, init)
    options = fc.sampler_options(cfg.forecast.sampler)
    results = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        fc.sample(cond, 2, 1, options, seed=0)  # warm
        results[f"in-process {threads} thread(s)"] = _median_time(
            lambda: fc.sample(cond, args.members, 1, options, seed=0), args.repeats)
    torch.set_num_threads(1)
    ens_local = fc.sample(cond, args.members, 1, options, seed=0)

    # -- through Serve -----------------------------------------------------------------------------------------
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from tests.conftest import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    body = {"init_time": str(init), "members": args.members, "steps": args.steps, "seed": 0}
    url = f"http://127.0.0.1:{port}/forecast"
    throughput = {}
    try:
        for replicas in (1, 2):
            c = cfg.model_copy(update={"serve": cfg.serve.model_copy(update=dict(
                sampler_replicas=replicas, cpus_per_replica=1, ingress_cpus=0, max_members=max(args.members, 200),
                max_ongoing_requests=8, max_queued_requests=32, api_key_env="DEF_RAY_BENCH_NO_KEY"))})
            serve.run(forecast_app(c, ckpt), name="bench", route_prefix="/")
            small = dict(body, members=2)
            for _ in range(2):
                requests.post(url, json=small, timeout=600).raise_for_status()  # warm every replica
            r = requests.post(url, json=body, timeout=600)
            r.raise_for_status()
            mean = np.asarray(r.json()["variables"]["refc"]["mean"], np.float32)[0]
            same = bool(np.array_equal(mean, ens_local[:, 0, 0].mean(0, dtype=np.float64).astype(np.float32)))
            results[f"serve {replicas} replica(s)"] = _median_time(
                lambda: requests.post(url, json=body, timeout=600).raise_for_status(), args.repeats)
            n = args.concurrency * 2
            t = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                codes = list(pool.map(lambda _: requests.post(url, json=body, timeout=600).status_code, range(n)))
            dt = time.perf_counter() - t
            throughput[replicas] = (sum(c == 200 for c in codes) / dt, codes)
            print(f"  serve {replicas} replica(s): mean field equal to in-process: {same}")
            serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()

    base = results["in-process 1 thread(s)"]
    print(f"\n{args.members} members, {args.size}x{args.size} grid, dpmpp {args.steps} steps, member batch "
          f"{args.member_batch_size}, demo network; median of {args.repeats}")
    for name, sec in results.items():
        print(f"  {name:26s} {sec * 1000:9.1f} ms   x{sec / base:5.2f} of in-process 1 thread")
    over1 = (results["serve 1 replica(s)"] - base) / base * 100
    print(f"  Serve overhead, 1 replica vs in-process 1 thread: {over1:+.1f} % (goal <= 20 %)")
    ratio = results["serve 2 replica(s)"] / results["in-process 2 thread(s)"]
    print(f"  2 replicas vs in-process 2 threads: x{ratio:.2f}")
    for replicas, (rps, codes) in throughput.items():
        print(f"  throughput, {args.concurrency} concurrent clients, {replicas} replica(s): {rps:.2f} requests/s "
              f"({rps * args.members:.0f} members/s; statuses {sorted(set(codes))})")
    print(f"  2 vs 1 replica throughput: x{throughput[2][0] / throughput[1][0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
