"""Serve overhead and replica scaling of the ensemble endpoint, against the same sampling function in-process.

    python benchmarks/bench_serve.py [--members 50] [--size 32] [--steps 10] [--repeats 3] [--concurrency 4]

Model: the demo config's network (configs/demo.yaml model section, untrained weights: the cost of a forward pass
does not depend on the weights) on a seeded synthetic store of size x size points.  Measured in one process:
  in-process   def_ray.forecast.forecaster.Forecaster.sample with torch on 1 thread (what one replica does)
  serve        POST /forecast over loopback HTTP (summary JSON) with 1 and 2 EnsembleSampler replicas of 1 CPU
Prints latency (median of --repeats), the Serve overhead in % of the in-process time (goal <= 20 %), and
throughput with --concurrency simultaneous requests for 1 vs 2 replicas.

Serve under load (issue 19 item 5; --load-only runs just this): 2 replicas, 1, 4 and 16 concurrent clients
(--load-clients), each sending --load-requests requests back to back; throughput (requests/s and members/s
delivered) and p50/p95 latency, for two workloads:
  same forecast   every request asks for the same init time, seed and sampler (forecasters looking at the latest
                  run): concurrent requests share their network passes (def_ray.serve.sampler)
  distinct seeds  every request has its own seed: nothing to share, the replicas' raw capacity
and the 4-vs-1-client throughput ratio of each (issue 19's bar: >= 1.8 on 2 replicas).
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


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def _load_table(cfg, ckpt: str, url: str, body: dict, clients_list: list[int], per_client: int) -> dict:
    """{(workload, clients): {rps, p50, p95, statuses}} against a fresh 2-replica app per workload."""
    import threading

    import requests
    from ray import serve

    from def_ray.serve.app import forecast_app

    c = cfg.model_copy(update={"serve": cfg.serve.model_copy(update=dict(
        sampler_replicas=2, cpus_per_replica=1, ingress_cpus=0, max_members=max(body["members"], 200),
        max_ongoing_requests=16, max_queued_requests=64, request_timeout_s=600, api_key_env="DEF_RAY_BENCH_NO_KEY"))})
    out = {}
    seeds = iter(range(1000, 10 ** 6))
    lock = threading.Lock()
    for kind in ("same forecast", "distinct seeds"):
        serve.run(forecast_app(c, ckpt), name="bench-load", route_prefix="/")
        for _ in range(2):
            requests.post(url, json=dict(body, members=2), timeout=600).raise_for_status()  # warm both replicas
        for clients in clients_list:
            gate = threading.Barrier(clients)

            def client(_: int) -> list[tuple[int, float]]:
                got, session = [], requests.Session()
                gate.wait()
                for _ in range(per_client):
                    with lock:
                        seed = body["seed"] if kind == "same forecast" else next(seeds)
                    t = time.perf_counter()
                    r = session.post(url, json=dict(body, seed=seed), timeout=600)
                    got.append((r.status_code, time.perf_counter() - t))
                return got

            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                answers = [a for part in pool.map(client, range(clients)) for a in part]
            wall = time.perf_counter() - t0
            ok = [dt for code, dt in answers if code == 200]
            codes = sorted({code for code, _ in answers})
            out[(kind, clients)] = {"rps": len(ok) / wall, "p50": _percentile(ok, 50), "p95": _percentile(ok, 95),
                                    "statuses": ",".join(map(str, codes))}
            print(f"  load {kind}, {clients} client(s): {len(ok) / wall:.3f} requests/s", flush=True)
        serve.delete("bench-load")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=50)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--member-batch-size", type=int, default=25)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--load-clients", default="1,4,16", help="concurrent clients of the load table")
    p.add_argument("--load-requests", type=int, default=3, help="requests each load client sends")
    p.add_argument("--load-only", action="store_true", help="only the load table (2 replicas)")
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
    for threads in (() if args.load_only else (1, 2)):
        torch.set_num_threads(threads)
        fc.sample(cond, 2, 1, options, seed=0)  # warm
        results[f"in-process {threads} thread(s)"] = _median_time(
            lambda: fc.sample(cond, args.members, 1, options, seed=0), args.repeats)
    torch.set_num_threads(1)
    if not args.load_only:
        ens_local = fc.sample(cond, args.members, 1, options, seed=0)

    # -- through Serve -----------------------------------------------------------------------------------------
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from tests.conftest import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    body = {"init_time": str(init), "members": args.members, "steps": args.steps, "seed": 0}
    url = f"http://127.0.0.1:{port}/forecast"
    throughput, load = {}, {}
    try:
        for replicas in (() if args.load_only else (1, 2)):
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
        load = _load_table(cfg, ckpt, url, body, [int(c) for c in args.load_clients.split(",")], args.load_requests)
    finally:
        serve.shutdown()
        ray.shutdown()

    print(f"\nServe under load: 2 replicas of 1 CPU, {args.members} members, {args.size}x{args.size} grid, dpmpp "
          f"{args.steps} steps, member batch {args.member_batch_size}; {args.load_requests} requests per client")
    print(f"  {'workload':15s} {'clients':>7s} {'requests/s':>10s} {'members/s':>9s} {'p50 s':>7s} {'p95 s':>7s} "
          f"{'statuses':>10s}")
    for (kind, clients), row in load.items():
        print(f"  {kind:15s} {clients:7d} {row['rps']:10.3f} {row['rps'] * args.members:9.1f} {row['p50']:7.2f} "
              f"{row['p95']:7.2f} {row['statuses']:>10s}")
    for kind in dict.fromkeys(k for k, _ in load):
        if (kind, 1) in load and (kind, 4) in load:
            print(f"  {kind}: 4 vs 1 client throughput x{load[(kind, 4)]['rps'] / load[(kind, 1)]['rps']:.2f} "
                  "(issue 19 bar: >= 1.8)")
    if args.load_only:
        return 0
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
