"""The GPU machine's checks, called by benchmarks/gpu_check.sh (which also runs bench_forecast_scale.py --device cuda).

    python benchmarks/gpu_check.py --parts train,identity,ray [--device cuda] [--smoke] --json PATH
    python benchmarks/gpu_check.py --table --json PATH --bench BENCH.json [MORE.json ...]

Parts (each one's failure is recorded and the others still run):
- train: CUDA training steps of configs/diffusion_4090.yaml's network on 256 x 256 crops in bf16 autocast (as
  def_ray/train/loop.py does: autocast around the model's own ``training_loss``, then backward and AdamW; no EMA,
  no clipping, no data loading), at the config's batch size (1) and at 8: steps/s, samples/s, achieved FLOP/s =
  3 x forward FLOPs per sample (FlopCounterMode on meta, bench_forecast_scale.count_flops) x samples/s, its
  fraction of the bf16 peak (989 TFLOP/s dense), and peak memory (torch.cuda.max_memory_allocated: weights, Adam
  state, activations).
- identity: members drawn with the package's sampler (``ConvectionDDPM.sample``, DPM-Solver++ with the config's
  steps, seed 0, fp32 as forecasts run) of the 4090 network (untrained, seeded) on one 256 x 256 condition, with
  member_batch_size 1, 5 and 25: are members bitwise identical across batch sizes (max abs difference)?  Run with
  torch's defaults and again with ``torch.backends.cudnn.deterministic = True``.
- ray: a 1-worker NCCL TorchTrainer run, only where ``import ray`` works (the device image has no Ray).

Imports stay clear of Ray and Zarr (def_ray.config, def_ray.models only), so that the device image with a few
carried wheels (pydantic, pydantic-core, annotated-types, typing-inspection, diffusers, pyproj) runs it.
``--smoke`` makes every part tiny and allows the CPU, to check the script before the one device call.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402

import bench_forecast_scale as bfs  # noqa: E402

CONFIG = "configs/diffusion_4090.yaml"
BF16_PEAK = bfs.GPU_PEAK["bf16"]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def part_train(device: torch.device, smoke: bool) -> dict:
    cfg, layout = bfs.load(CONFIG)
    size = 32 if smoke else 256
    fwd = bfs.count_flops(cfg, layout, size, size)["total"]
    out = {"config": CONFIG, "size": size, "forward_gflop_per_sample": fwd / 1e9, "runs": []}
    for batch in ([cfg.train.batch_size, 2] if smoke else [cfg.train.batch_size, 8]):
        torch.manual_seed(0)
        model = bfs.build(cfg, layout, "cpu").to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
        gen = torch.Generator(device=device).manual_seed(0)
        cond = torch.randn(batch, layout.cond_channels, size, size, device=device, generator=gen)
        target = torch.randn(batch, layout.target_channels, size, size, device=device, generator=gen)
        bf16 = bool(cfg.train.bf16)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model.training_loss(cond, target, generator=gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        warm, timed = (1, 2) if smoke else (5, 20)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(warm):
            step()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(timed):
            loss = step()
        _sync(device)
        dt = (time.perf_counter() - t0) / timed
        sps = batch / dt
        achieved = 3 * fwd * sps
        out["runs"].append({
            "batch": batch, "bf16": bf16, "steps_per_s": 1 / dt, "samples_per_s": sps, "s_per_step": dt,
            "achieved_flops": achieved, "fraction_of_peak": achieved / BF16_PEAK,
            "fraction_of_measured_matmul": achieved / bfs.GPU_BF16_MEASURED,
            "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan"),
            "loss": loss.item(), "timed_steps": timed})
        print(f"  train batch {batch}: {1 / dt:.2f} steps/s, {sps:.1f} samples/s, {achieved / 1e12:.1f} TFLOP/s",
              flush=True)
        model = opt = None  # free before the next batch size
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def part_identity(device: torch.device, smoke: bool) -> dict:
    cfg, layout = bfs.load(CONFIG)
    size = 16 if smoke else 256
    members, batches = (5, [1, 5]) if smoke else (25, [1, 5, 25])
    steps = 2 if smoke else cfg.forecast.sampler.steps
    torch.manual_seed(0)
    model = bfs.build(cfg, layout, "cpu").to(device)
    cond = torch.randn(layout.cond_channels, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    out = {"config": CONFIG, "size": size, "members": members, "sampler": "dpmpp", "steps": steps, "runs": []}
    for deterministic in (False, True):
        torch.backends.cudnn.deterministic = deterministic
        draws, times = {}, {}
        for mbs in batches:
            t0 = time.perf_counter()
            draws[mbs] = model.sample(cond, members, sampler="dpmpp", steps=steps, seed=0,
                                      member_batch_size=mbs).float().cpu()
            times[mbs] = time.perf_counter() - t0
        ref = draws[batches[0]]
        diffs = {mbs: float((d - ref).abs().max()) for mbs, d in draws.items()}
        same = {mbs: bool(torch.equal(d, ref)) for mbs, d in draws.items()}
        finite = all(bool(torch.isfinite(d).all()) for d in draws.values())
        run = {"cudnn_deterministic": deterministic, "max_abs_diff_vs_batch1": diffs, "bitwise_identical": same,
               "all_identical": all(same.values()), "finite": finite, "seconds": times,
               "member_std": float(ref.std(0).mean())}
        out["runs"].append(run)
        print(f"  identity cudnn.deterministic={deterministic}: identical {same}, max |diff| {diffs}", flush=True)
    torch.backends.cudnn.deterministic = False
    return out


def part_ray(device: torch.device, smoke: bool) -> dict:
    try:
        import ray  # noqa: F401
        from ray.train import ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
    except ImportError as err:
        return {"skipped": f"ray not installed on the device image ({err})"}

    def loop(config):
        import ray.train
        import ray.train.torch as rtt

        cfg, layout = bfs.load(CONFIG)
        size = config["size"]
        model = rtt.prepare_model(bfs.build(cfg, layout, "cpu").train())
        dev = rtt.get_device()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        gen = torch.Generator(device=dev).manual_seed(0)
        cond = torch.randn(1, layout.cond_channels, size, size, device=dev, generator=gen)
        target = torch.randn(1, layout.target_channels, size, size, device=dev, generator=gen)
        inner = model.module if hasattr(model, "module") else model
        t0 = time.perf_counter()
        for i in range(config["steps"]):
            if i == 2:
                torch.cuda.synchronize() if dev.type == "cuda" else None
                t0 = time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                loss = inner.training_loss(cond, target, generator=gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.cuda.synchronize() if dev.type == "cuda" else None
        ray.train.report({"s_per_step": (time.perf_counter() - t0) / (config["steps"] - 2), "loss": float(loss)})

    use_gpu = device.type == "cuda"
    trainer = TorchTrainer(loop, train_loop_config={"size": 32 if smoke else 256, "steps": 4 if smoke else 22},
                           torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
                           scaling_config=ScalingConfig(num_workers=1, use_gpu=use_gpu))
    result = trainer.fit()
    return {"backend": "nccl" if use_gpu else "gloo", "metrics": result.metrics}


def run_parts(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda but torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    res: dict = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        res["device_name"] = torch.cuda.get_device_name(device)
    for part in args.parts.split(","):
        t0 = time.perf_counter()
        print(f"# part {part}", flush=True)
        try:
            res[part] = {"train": part_train, "identity": part_identity, "ray": part_ray}[part](device, args.smoke)
        except Exception as err:  # noqa: BLE001  record it, run the other parts
            traceback.print_exc()
            res[part] = {"error": f"{type(err).__name__}: {err}"}
        res[part]["wall_s"] = time.perf_counter() - t0
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    return res


# -- the one table --------------------------------------------------------------------------------------------------
def _load(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        return {"missing": f"{path}: {err}"}


def one_table(check: dict, benches: list[dict]) -> str:
    lines = ["| check | setting | result |", "|---|---|---|"]
    dev = check.get("device_name", check.get("device", "?"))
    lines.append(f"| device | torch {check.get('torch', '?')} | {dev} |")
    tr = check.get("train", {"error": "not run"})
    if "error" in tr or "runs" not in tr:
        lines.append(f"| (a) training steps | {CONFIG} | failed: {tr.get('error', tr.get('missing'))} |")
    else:
        for r in tr["runs"]:
            lines.append(
                f"| (a) training steps, bf16 autocast | {tr['size']}x{tr['size']}, batch {r['batch']}, "
                f"{tr['forward_gflop_per_sample']:.1f} GFLOP fwd/sample | {r['steps_per_s']:.2f} steps/s, "
                f"{r['samples_per_s']:.1f} samples/s, {r['achieved_flops'] / 1e12:.1f} TFLOP/s (3 x fwd) = "
                f"{100 * r['fraction_of_peak']:.1f}% of 989 ({100 * r['fraction_of_measured_matmul']:.1f}% of 790 "
                f"measured), peak {r['peak_mib']:,.0f} MiB |")
    found = False
    for b in benches:
        for r in b.get("rows", []):
            if r["config"] != "diffusion_4090" or not r["grid"].startswith("conus"):
                continue
            found = True
            fp = r["forecast"]
            setting = (f"{r['padded_hw'][0]}x{r['padded_hw'][1]}, {r['variant']}, batch {r.get('batch', '-')}, "
                       f"{r['gflop_per_member_pass']:,.0f} GFLOP/member-pass")
            if "error" in r:
                lines.append(f"| (b) 50-member full-CONUS forecast | {setting} | failed: {r['error'][:120]} |")
                continue
            comp = ""
            if "compile" in r["variant"]:
                comp = f" (first call incl. compile {r['timing'].get('first_pass_s', float('nan')):.0f} s)"
            lines.append(
                f"| (b) 50-member full-CONUS forecast | {setting} | {r['s_per_member_pass'] * 1e3:.0f} ms/member-pass, "
                f"{r['achieved_flops'] / 1e12:.1f} TFLOP/s = {100 * r['fraction_of_peak']:.1f}% of "
                f"{r['peak_flops'] / 1e12:.0f}, {r['peak_mib_per_member']:,.0f} MiB/member; "
                f"{fp['passes']:,} passes ({fp['members']} x {fp['steps']} steps x {fp['guidance_factor']} x "
                f"{fp['leads']} lead) = **{bfs._fmt_s(r['forecast_wall_s'])}**{comp} |")
    if not found:
        lines.append("| (b) 50-member full-CONUS forecast | diffusion_4090 | not measured (see the log) |")
    idn = check.get("identity", {"error": "not run"})
    if "error" in idn or "runs" not in idn:
        lines.append(f"| (c) member bit-identity | {CONFIG} | failed: {idn.get('error')} |")
    else:
        for r in idn["runs"]:
            diffs = ", ".join(f"mbs {k}: {v:.3g}" for k, v in r["max_abs_diff_vs_batch1"].items())
            verdict = "bitwise identical" if r["all_identical"] else "NOT bitwise identical"
            lines.append(f"| (c) member bit-identity, fp32 | {idn['members']} members, {idn['size']}x{idn['size']}, "
                         f"{idn['sampler']} {idn['steps']} steps, member_batch_size "
                         f"{'/'.join(str(k) for k in r['max_abs_diff_vs_batch1'])}, cudnn.deterministic="
                         f"{r['cudnn_deterministic']} | {verdict}; max abs diff vs batch 1: {diffs} |")
    ray = check.get("ray", {"error": "not run"})
    if "skipped" in ray:
        lines.append("| (d) 1-worker NCCL TorchTrainer | - | skipped: ray not installed on the device image |")
    elif "error" in ray:
        lines.append(f"| (d) 1-worker NCCL TorchTrainer | - | failed: {ray['error'][:160]} |")
    else:
        lines.append(f"| (d) 1-worker {ray['backend']} TorchTrainer | 4090 network, batch 1 | ran in "
                     f"{ray.get('wall_s', float('nan')):.0f} s; metrics {ray['metrics']} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", default="train,identity,ray")
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--table", action="store_true", help="print the one table from --json and --bench files")
    p.add_argument("--bench", nargs="*", default=[])
    args = p.parse_args(argv)
    if args.table:
        print(one_table(_load(args.json), [_load(b) for b in args.bench]))
        return
    run_parts(args)


if __name__ == "__main__":
    main()
