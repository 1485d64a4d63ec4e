"""Ensemble sampling: ancestral DDPM (all T steps) vs DPM-Solver++ (20 steps); batched vs one-at-a-time members.

    python benchmarks/bench_sampling.py [--train-steps 800] [--members 50] [--cases 6] [--threads 1] [--gpu]

One process, one trained tiny model. The model is a real ConvectionDDPM (base 16, 2 levels, attention at the
coarse one, T = 200) trained for a short while on data with a known answer, x = f(c) + SIG z per pixel
(f(c) = A c + B; see tests/models/diffusion/test_samplers.py), on 16 x 16 grids. Held-out truths come from the
same law, so the CRPS of a perfect forecast is known: SIG / sqrt(pi) (the expected CRPS of N(mu, SIG^2) against
draws from it); a perfect 50-member ensemble scores slightly more, printed as drawn from the true law.

Printed: wall time and peak resident memory of a `--members` forecast per sampler, its CRPS
(scoringrules.crps_ensemble) against the held-out truths, the speed-up (goal >= 8x) and the CRPS ratio (goal
within 10 %); then DPM-Solver++ with all members in one batch vs one member per batch (goal >= 3x on CPU);
then the cost of the batch-invariant CPU kernels (network forward only, batch-invariant vs default kernels).
With CUDA available (`--gpu`), also: training step time and samples/s of the 64-dim config at 256 x 256 crops in
bf16 autocast, and 50-member DPM-Solver++ sampling of one full 1059 x 1799 frame.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import scoringrules as sr
import torch

from def_ray.config import ModelConfig
from def_ray.models import build_model
from def_ray.models.unet import batch_invariant
from def_ray.testing import KNOWN_ANSWER, train_known_answer

A, B, SIG = KNOWN_ANSWER
SIZE = 16


def _peak_reset() -> None:
    """Reset the kernel's peak-RSS counter of this process (Linux: write 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def train(steps: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(base_dims=16, channel_mults=[1, 2], num_res_blocks=1, attention_levels=[1], groups=8,
                      attention_heads=2, timesteps=200)
    model = build_model(cfg, 1, 1)
    t0 = time.perf_counter()
    train_known_answer(model, steps, batch=16, size=SIZE, seed=seed + 1)
    print(f"trained {steps} steps in {time.perf_counter() - t0:.1f} s")
    return model


def timed(fn):
    _peak_reset()
    base = _rss_mib()
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, _peak_mib() - base


def cpu_section(args) -> None:
    model = train(args.train_steps)
    g = torch.Generator().manual_seed(1234)
    conds = torch.randn(args.cases, 1, SIZE, SIZE, generator=g)
    truths = A * conds + B + SIG * torch.randn(conds.shape, generator=g)
    results = {}
    for name, sampler, steps in [("ddpm T=200", "ddpm", None), ("dpm++ 20", "dpmpp", 20)]:
        wall, peak, crps = 0.0, 0.0, []
        for k in range(args.cases):
            ens, dt, pk = timed(lambda: model.sample(conds[k], args.members, sampler=sampler, steps=steps, seed=k,
                                                     member_batch_size=args.members))
            wall, peak = wall + dt, max(peak, pk)
            crps.append(sr.crps_ensemble(truths[k, 0].numpy(), ens[:, 0].numpy(), m_axis=0).mean())
        results[name] = (wall / args.cases, peak, float(np.mean(crps)))
        print(f"{name:12s}: {wall / args.cases:7.2f} s per {args.members}-member forecast, peak RSS +{peak:6.1f} MiB, "
              f"CRPS {np.mean(crps):.4f}")
    ideal = SIG / math.sqrt(math.pi)
    perfect = A * conds + B + SIG * torch.randn((args.members, *conds.shape), generator=g)
    c_perfect = np.mean([sr.crps_ensemble(truths[k, 0].numpy(), perfect[:, k, 0].numpy(), m_axis=0).mean()
                         for k in range(args.cases)])
    (t_ref, _, c_ref), (t_fast, _, c_fast) = results["ddpm T=200"], results["dpm++ 20"]
    print(f"CRPS of the true law {ideal:.4f} (analytic), of a perfect {args.members}-member ensemble {c_perfect:.4f}")
    print(f"speed-up dpm++/ddpm {t_ref / t_fast:.1f}x (goal >= 8x); CRPS dpm++/ddpm {c_fast / c_ref:.3f} "
          f"(goal within 10 %)")

    one, t_one, p_one = timed(lambda: model.sample(conds[0], args.members, sampler="dpmpp", steps=20, seed=0,
                                                   member_batch_size=1))
    all_, t_all, p_all = timed(lambda: model.sample(conds[0], args.members, sampler="dpmpp", steps=20, seed=0,
                                                    member_batch_size=args.members))
    print(f"dpm++ 20, {args.members} members: one at a time {t_one:.2f} s (+{p_one:.1f} MiB), all in one batch "
          f"{t_all:.2f} s (+{p_all:.1f} MiB): {t_one / t_all:.1f}x (goal >= 3x); identical members: "
          f"{torch.equal(one, all_)}")

    x = torch.randn(args.members, 1, SIZE, SIZE)
    c = conds[:1].expand(args.members, -1, -1, -1)
    with torch.no_grad():
        def forwards(n=20):
            t0 = time.perf_counter()
            for _ in range(n):
                model(x, torch.tensor(100), c)
            return (time.perf_counter() - t0) / n
        forwards(2)
        t_default = forwards()
        with batch_invariant("cpu"):
            t_inv = forwards()
    print(f"network forward, batch {args.members}: default kernels {t_default * 1e3:.1f} ms, batch-invariant "
          f"{t_inv * 1e3:.1f} ms ({t_inv / t_default:.2f}x)")


def gpu_section() -> None:
    dev = torch.device("cuda")
    cfg = ModelConfig(base_dims=64, channel_mults=[1, 2, 4, 4], num_res_blocks=2, attention_levels=[3], timesteps=200)
    cond_ch, bs = 4 * 7 + 2, 4
    model = build_model(cfg, cond_ch, 1).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    cond, target = torch.randn(bs, cond_ch, 256, 256, device=dev), torch.randn(bs, 1, 256, 256, device=dev)
    for i in range(25):
        if i == 5:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.training_loss(cond, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    step = (time.perf_counter() - t0) / 20
    print(f"GPU train, 64-dim, 256x256, batch {bs}, bf16: {step * 1e3:.1f} ms/step, {bs / step:.1f} samples/s")
    model.eval()
    full = torch.randn(1, cond_ch, 1059, 1799, device=dev)
    for mbs in (10, 25):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model.sample(full, 50, sampler="dpmpp", steps=20, seed=0, member_batch_size=mbs)
        torch.cuda.synchronize()
        print(f"GPU 50 members, dpm++ 20 steps, full 1059x1799 frame, member batch {mbs}: "
              f"{time.perf_counter() - t0:.1f} s, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-steps", type=int, default=800)
    p.add_argument("--members", type=int, default=50)
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads; 1 (as a 1-CPU Ray worker) keeps timings stable on a busy machine, "
                        "where 2 OpenMP threads on 2 shared cores made some runs 10x slower")
    p.add_argument("--gpu", action="store_true", help="also run the CUDA measurements")
    p.add_argument("--gpu-only", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.gpu_only:
        cpu_section(args)
    if args.gpu or args.gpu_only:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu: no CUDA device")
        gpu_section()


if __name__ == "__main__":
    main()
