"""Roofline of one denoiser pass per shipped config and grid, and the wall time of a 50-member forecast.

    python benchmarks/bench_forecast_scale.py [--quick] [--threads 2] [--json PATH]          # CPU: sub-domains
    python benchmarks/bench_forecast_scale.py --device cuda [--json PATH]                   # GPU: the full frame

What is counted and how
- The network of each config is built as the package builds it (``ModelDescription.from_config(cfg).layout`` for the
  channels, ``def_ray.models.build_model``) and one pass is ``ConvectionDDPM.forward`` (the denoiser the samplers
  call: concatenation, UNet, preconditioned output).
- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one pass of ONE member run on the ``meta`` device, at the
  real (padded) size of every grid: exact for convolutions, linear layers and attention (on meta, scaled-dot-product
  attention is counted as its two batched matmuls, ``aten.bmm``, which are reported separately as "attn").  Only
  matrix work is counted (GroupNorm, SiLU, padding and copies are memory-bound and not in the figure).  The UNet pads
  H x W up to a multiple of 2**(levels-1) * patch (reflect); the padded size is what is counted and timed.
- Grids: the config's training crop (the synthetic frame for a config without crop), 512 x 512, and the full CONUS
  HRRR grid 1059 x 1799.
- CPU (default, ``--mode extrapolate``): each config is timed on ONE square sub-domain (the largest of 512, 384,
  256, 192, 128, 96, 64 whose pass costs at most ``--flop-budget``, 300 GFLOP, 60 with ``--quick``, attention's
  FLOPs counted 4 times as they run slower), after one
  untimed pass (which measures memory and warms oneDNN up), with forward hooks timing the SelfAttention modules.
  Keep the sub-domain large: per pixel, small grids cost more (the deep levels' maps get tiny), and the 4090
  network's full-CONUS time extrapolated from 96 x 96 came out 3x that from 256 x 256.
  A grid's time = (pass time - attention-module time) at the sub-domain x (its pixels / the sub-domain's)
  + its attention FLOPs / the FLOP/s of a scaled-dot-product-attention call in the shape of the finest attention
  level (heads, head size) at its token count, capped at 4096 tokens: convolutions are linear in pixels, attention is
  not, and a CONUS attention call (30,000 to 480,000 tokens) is too long to time here.  A grid equal to the
  sub-domain is measured, not extrapolated.  Peak memory per member is the rise of the process's peak resident set
  (VmHWM, reset through /proc/self/clear_refs; glibc's mmap threshold fixed at 64 KiB so freed tensors leave the
  resident set) during a one-member pass at the sub-domain, scaled by pixels (no-grad activations are linear in
  pixels; CPU attention is a flash kernel, linear too).  Two kernel settings are timed: torch's default and the
  sampler's (``unet.batch_invariant``: oneDNN/NNPACK off, bit-identical members; this is what a CPU forecast runs).
  The JSON records the process's CPU utilisation during the timed passes (CPU seconds / wall / threads): on a shared
  machine it says how much of the assumed peak the process was given at all.
- GPU (``--device cuda``, ``--mode direct``): every grid is run at its real size.  A one-member pass measures memory
  (``torch.cuda.max_memory_allocated`` minus the weights), then members are batched (as many as fit in half the free
  memory, as the sampler's ``member_batch_size: auto`` sizes them, at most 50 and at most ``--pass-flop-budget``
  FLOPs per pass) and timed after a warm-up with CUDA synchronisation; time per member-pass = pass time / batch.
  Variants: ``bf16-cl`` (bf16 autocast, channels-last weights and inputs), ``fp32`` (plain fp32; note cuDNN
  convolutions use TF32 unless ``torch.backends.cudnn.allow_tf32`` is off, which the JSON records), optional
  ``bf16-cl-compile`` (``torch.compile``) and ``bf16-cl-cudnnbench`` (``torch.backends.cudnn.benchmark``).
- Peak: CPU = cores x clock (/proc/cpuinfo) x fp32 FLOP per cycle per core (2 FMA pipes x SIMD lanes x 2; AMD Zen 4
  runs AVX-512 on two 256-bit pipes: 32 FLOP/cycle), printed with the figures it comes from.  GPU H200: dense bf16
  989 TFLOP/s by the datasheet (about 790 measured for big matmuls on this workplace's machines), fp32 67 TFLOP/s.
- 50-member forecast: passes = 50 members x the config's sampler steps x (2 if guidance != 1 else 1) x lead steps
  (forecast.lead_hours / data.dt_steps, taking one store step = 1 h, true of HRRR and the hourly MRMS QPE);
  wall time = passes x the measured (CPU: extrapolated) time per member-pass.  Sampler arithmetic between passes
  is not included (it is elementwise and small next to a pass).

Output: one markdown table; ``--json PATH`` writes every figure (rewritten after each row, so a killed run keeps
what it measured).  ``--smoke`` makes every part tiny (for checking the script, not for figures).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from def_ray.models.memory import PeakMemory, members_that_fit  # noqa: E402

CONFIGS = ["configs/diffusion_4090.yaml", "configs/diffusion_production.yaml", "configs/mrms_qpe_conus.yaml",
           "configs/demo.yaml"]
CONUS = (1059, 1799)
MEMBERS = 50
GPU_PEAK = {"bf16": 989e12, "fp32": 67e12}  # NVIDIA H100/H200 SXM datasheet, dense
GPU_BF16_MEASURED = 790e12  # 8192^3 bf16 matmul on random data, this workplace's H200s (device KINDS.md)


# -- the model, as the package builds it ------------------------------------------------------------------------------
def load(path: str):
    from def_ray.config import load_config
    from def_ray.models.description import ModelDescription

    cfg = load_config(REPO / path if not Path(path).is_absolute() else path)
    layout = ModelDescription.from_config(cfg).layout
    return cfg, layout


def build(cfg, layout, device: str | torch.device = "cpu"):
    from def_ray.models import build_model

    with torch.device(device):
        model = build_model(cfg.model, layout.cond_channels, layout.target_channels)
    return model.eval()


def pad_factor(cfg) -> int:
    return 2 ** (len(cfg.model.channel_mults) - 1) * cfg.model.patch


def padded(cfg, h: int, w: int) -> tuple[int, int]:
    f = pad_factor(cfg)
    return h + (-h % f), w + (-w % f)


def grids(cfg, smoke: bool = False) -> list[tuple[str, int, int]]:
    """(label, H, W): the training crop (or the synthetic frame), 512 x 512, full CONUS."""
    crop = cfg.data.crop
    if crop:
        first = ("crop", crop, crop)
    elif cfg.synth is not None:
        first = ("frame", cfg.synth.ny, cfg.synth.nx)
    else:
        first = ("tile", cfg.data.tile, cfg.data.tile)
    out = [first, ("512", 512, 512), ("conus", *CONUS)]
    if first[1:] == (512, 512):  # diffusion_production trains on 512 x 512 crops: one row
        out = [("crop=512", 512, 512), out[2]]
    if smoke:
        out = [(lbl, min(h, 32), min(w, 32)) if lbl != "conus" else ("conus-smoke", 48, 80) for lbl, h, w in out]
        if len(out) == 3:
            out[1] = ("512-smoke", 40, 40)
    return out


def count_flops(cfg, layout, h: int, w: int) -> dict[str, float]:
    """FLOPs of one one-member pass at h x w, on the meta device (nothing computed): total and attention (bmm)."""
    model = build(cfg, layout, "meta")
    x = torch.empty(1, layout.target_channels, h, w, device="meta")
    c = torch.empty(1, layout.cond_channels, h, w, device="meta")
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x, torch.tensor(cfg.model.timesteps // 2, device="meta"), c)
    per_op = {str(k): int(v) for k, v in fc.get_flop_counts().get("Global", {}).items()}
    attn = sum(v for k, v in per_op.items() if "bmm" in k or "attention" in k)
    return {"total": float(fc.get_total_flops()), "attn": float(attn), "per_op": per_op}


def forecast_passes(cfg, members: int = MEMBERS) -> dict[str, int | float]:
    from def_ray.models.diffusion.samplers import resolve_steps

    s = cfg.forecast.sampler
    steps = resolve_steps(s.name, s.steps, cfg.model.timesteps)
    guide = 2 if float(s.guidance) != 1.0 else 1
    leads = max(1, math.ceil(cfg.forecast.lead_hours / cfg.data.dt_steps))
    return {"members": members, "sampler": s.name, "steps": steps, "guidance_factor": guide, "leads": leads,
            "passes": members * steps * guide * leads}


# -- peaks -------------------------------------------------------------------------------------------------------------
def cpu_peak(threads: int) -> dict[str, object]:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = [float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
    flags = next((line.split(":")[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    vendor = next((line.split(":")[1].strip() for line in info.splitlines() if line.startswith("vendor_id")), "")
    model = next((line.split(":")[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    ghz = (max(mhz) / 1000) if mhz else float("nan")
    if "avx512f" in flags and vendor == "GenuineIntel":
        lanes, why = 16, "2 x 512-bit FMA pipes (Intel AVX-512 server core)"
    elif "avx512f" in flags or "avx2" in flags:
        lanes, why = 8, ("2 x 256-bit FMA pipes (AMD Zen 4 executes AVX-512 as 2 x 256 bit)"
                         if "avx512f" in flags else "2 x 256-bit FMA pipes (AVX2)")
    else:
        lanes, why = 4, "2 x 128-bit FMA pipes (SSE)"
    per_cycle = 2 * lanes * 2  # pipes x fp32 lanes x (multiply + add)
    cores = min(threads, os.cpu_count() or threads)
    return {"model": model, "vendor": vendor, "ghz": ghz, "cores": cores, "flop_per_cycle": per_cycle,
            "peak_flops": cores * ghz * 1e9 * per_cycle,
            "how": f"{cores} cores x {ghz:.3f} GHz (/proc/cpuinfo 'cpu MHz') x {per_cycle} fp32 FLOP/cycle ({why})"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# -- timing ------------------------------------------------------------------------------------------------------------
def make_pass(model, cfg, layout, batch: int, h: int, w: int, device: torch.device, *, bf16: bool = False,
              channels_last: bool = False, seed: int = 0):
    """A zero-argument callable running one denoiser pass of `batch` members (no grad), and its inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, layout.target_channels, h, w, generator=g).to(device)
    c = torch.randn(batch, layout.cond_channels, h, w, generator=g).to(device)
    if channels_last:
        x, c = x.contiguous(memory_format=torch.channels_last), c.contiguous(memory_format=torch.channels_last)
    t = torch.tensor(cfg.model.timesteps // 2, device=device)

    def run():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(x, t, c)

    return run


def timed_passes(run, device: torch.device, warmup: int, max_passes: int, budget_s: float) -> dict[str, float]:
    """Warm-up passes, then timed passes until `max_passes` or `budget_s`; the median time per pass."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        run()
    _sync(device)
    warm_s = time.perf_counter() - t0
    times: list[float] = []
    while len(times) < max_passes and (not times or sum(times) + times[-1] <= budget_s):
        t0 = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"s_per_pass": times[len(times) // 2], "passes_timed": len(times), "warmup_s": warm_s,
            "min_s": times[0], "max_s": times[-1]}


def attention_level(cfg) -> int | None:
    """The attention level with the most tokens (the finest one listed): where attention's FLOPs are."""
    return min(cfg.model.attention_levels) if cfg.model.attention_levels else None


def attention_tokens(cfg, ph: int, pw: int) -> int:
    lvl = attention_level(cfg)
    f = 2 ** lvl * cfg.model.patch
    return (ph // f) * (pw // f)


def attention_rate(cfg, device: torch.device, tokens: int, budget_s: float = 3.0) -> dict[str, float]:
    """FLOP/s of F.scaled_dot_product_attention in the shape of the finest attention level (heads, head size) at
    `tokens` tokens, batch 1, contiguous q/k/v as SelfAttention passes them."""
    import torch.nn.functional as F

    m = cfg.model
    ch = m.base_dims * m.channel_mults[attention_level(cfg)]
    heads = m.attention_heads
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, tokens, ch // heads, generator=g).to(device) for _ in range(3))
    flops = 4.0 * tokens * tokens * ch

    def run():
        with torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v)

    r = timed_passes(run, device, 1, 3, budget_s)
    return {"flops_per_s": flops / r["s_per_pass"], "tokens": tokens, "channels": ch, "heads": heads,
            "s_per_call": r["s_per_pass"]}


class AttentionTimer:
    """Wall time spent inside the model's SelfAttention modules (CPU: ops are synchronous, so hooks time them)."""

    def __init__(self, model):
        from def_ray.models.unet import SelfAttention

        self.total, self._t0, self.handles = 0.0, 0.0, []
        for mod in model.modules():
            if isinstance(mod, SelfAttention):
                self.handles.append(mod.register_forward_pre_hook(self._pre))
                self.handles.append(mod.register_forward_hook(self._post))

    def _pre(self, *_):
        self._t0 = time.perf_counter()

    def _post(self, *_):
        self.total += time.perf_counter() - self._t0

    def remove(self):
        for h in self.handles:
            h.remove()


def glibc_return_freed_memory() -> bool:
    """Fix glibc's mmap threshold at 64 KiB (no dynamic raise) and its trim threshold, so freed tensors go back to
    the OS and the peak resident set measures what a pass holds, not what earlier passes left in the heap."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 64 * 1024)) and bool(libc.mallopt(m_trim_threshold, 128 * 1024))
    except (OSError, AttributeError):
        return False


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def subdomain(cfg, layout, flop_budget: float, smoke: bool) -> tuple[int, dict[str, float]]:
    """The largest square side (multiple of the padding factor) whose one-member pass costs <= flop_budget, with
    attention's FLOPs counted 4 times (on the CPU it runs at a quarter of the convolutions' rate or less)."""
    f = pad_factor(cfg)
    sides = [32] if smoke else [512, 384, 256, 192, 128, 96, 64]
    for side in sides:
        side = side + (-side % f)
        fl = count_flops(cfg, layout, side, side)
        if fl["total"] + 3 * fl["attn"] <= flop_budget or side == sides[-1]:
            return side, fl
    raise AssertionError


# -- the two modes -----------------------------------------------------------------------------------------------------
def run_extrapolate(args, emit) -> None:
    """CPU: time one sub-domain per config, extrapolate every grid (see the module docstring)."""
    from def_ray.models.unet import batch_invariant

    device = torch.device("cpu")
    peak = cpu_peak(args.threads)
    trimmed = glibc_return_freed_memory()
    emit(None, {"device": f"CPU: {peak['model']} ({platform.machine()}), {args.threads} torch threads",
                "peak": peak, "mode": "extrapolate", "glibc_mmap_threshold_fixed": trimmed})
    max_tokens = 256 if args.smoke else 4096
    for path in args.configs:
        cfg, layout = load(path)
        model = build(cfg, layout, device)
        side, fl_sub = subdomain(cfg, layout, args.flop_budget, args.smoke)
        fp = forecast_passes(cfg)
        rates: dict[int, dict] = {}  # attention FLOP/s by token count (the same kernel in both variants)
        for variant in ("fp32", "fp32-sampler"):
            bi = variant == "fp32-sampler"
            run = make_pass(model, cfg, layout, 1, side, side, device)
            with (batch_invariant(device) if bi else _null()):
                with PeakMemory(device) as pm:
                    run()
                for _ in range(args.warmup):
                    run()
                timer = AttentionTimer(model)
                times, cpu0 = [], time.process_time()
                while len(times) < args.min_passes or (
                        len(times) < args.passes and sum(times) + times[-1] <= args.budget_s):
                    t0 = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - t0)
                cpu_s = (time.process_time() - cpu0) / len(times)  # CPU seconds per pass, all threads
                cpu_util = cpu_s * len(times) / sum(times) / args.threads
                timer.remove()
            t_sub = sum(times) / len(times)
            t_attn_sub = timer.total / len(times)
            t_rest_sub = max(t_sub - t_attn_sub, 0.0)
            for label, h, w in grids(cfg, args.smoke):
                ph, pw = padded(cfg, h, w)
                fl = count_flops(cfg, layout, ph, pw)
                exact = (ph, pw) == (side, side)
                att = None
                if exact:
                    t = t_sub
                else:
                    t = t_rest_sub * (ph * pw) / (side * side)
                    if fl["attn"]:
                        tokens = min(attention_tokens(cfg, ph, pw), max_tokens)
                        if tokens not in rates:
                            rates[tokens] = attention_rate(cfg, device, tokens)
                        att = rates[tokens]
                        t += fl["attn"] / att["flops_per_s"]
                row = {
                    "config": Path(path).stem, "grid": label, "hw": [h, w], "padded_hw": [ph, pw],
                    "variant": variant, "device": "cpu", "batch": 1,
                    "gflop_per_member_pass": fl["total"] / 1e9, "attn_fraction": fl["attn"] / fl["total"],
                    "measured_on": f"{side}x{side}" + ("" if exact else " (extrapolated)"),
                    "measured": exact, "s_per_member_pass": t,
                    "achieved_flops": fl["total"] / t, "peak_flops": peak["peak_flops"],
                    "fraction_of_peak": fl["total"] / t / peak["peak_flops"],
                    # the same pass had it been given every thread's core: CPU seconds / threads
                    "fraction_of_peak_per_cpu_s": fl["total"] / (t * cpu_util) / peak["peak_flops"],
                    "peak_mib_per_member": pm.peak / 2**20 * (ph * pw) / (side * side),
                    "memory_how": f"VmHWM rise of a 1-member pass at {side}x{side}, x pixels",
                    "forecast": fp, "forecast_wall_s": fp["passes"] * t,
                    "forecast_wall_cpu_s_s": fp["passes"] * t * cpu_util,  # had it been given its threads' cores
                    "timing": {"subdomain": side, "subdomain_gflop": fl_sub["total"] / 1e9,
                               "subdomain_s_per_pass": t_sub, "subdomain_attention_s": t_attn_sub,
                               "passes_timed": len(times), "pass_times_s": times, "cpu_utilisation": cpu_util,
                               "subdomain_cpu_s_per_pass": cpu_s,
                               "attention_rate": att},
                    "params": sum(p.numel() for p in model.parameters()),
                }
                emit(row, None)
        del model


def run_direct(args, emit) -> None:
    """GPU (or CPU with --mode direct): every grid at its real size, members batched."""
    device = torch.device(args.device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        desc = f"{props.name} ({props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB)"
        peaks = dict(GPU_PEAK)
    else:
        cp = cpu_peak(args.threads)
        desc = f"CPU: {cp['model']}, {args.threads} threads (direct mode)"
        peaks = {"bf16": cp["peak_flops"] * 2, "fp32": cp["peak_flops"]}
    emit(None, {"device": desc, "mode": "direct", "peak": peaks, "bf16_measured_matmul": GPU_BF16_MEASURED,
                "torch": torch.__version__,
                "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
                "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32)})
    variants = args.variants.split(",")
    for path in args.configs:
        cfg, layout = load(path)
        fp = forecast_passes(cfg)
        for variant in variants:
            bf16 = variant.startswith("bf16")
            cl = "-cl" in variant
            compiled = "compile" in variant
            torch.backends.cudnn.benchmark = "cudnnbench" in variant
            model = build(cfg, layout, "cpu").to(device)
            if cl:
                model = model.to(memory_format=torch.channels_last)
            net = model
            if compiled:
                net = torch.compile(model)
            weights = torch.cuda.memory_allocated() if device.type == "cuda" else None
            for label, h, w in grids(cfg, args.smoke):
                if args.grids and label not in args.grids and label.split("-")[0] not in args.grids:
                    continue
                ph, pw = padded(cfg, h, w)
                fl = count_flops(cfg, layout, ph, pw)
                row = {"config": Path(path).stem, "grid": label, "hw": [h, w], "padded_hw": [ph, pw],
                       "variant": variant, "device": device.type,
                       "gflop_per_member_pass": fl["total"] / 1e9, "attn_fraction": fl["attn"] / fl["total"],
                       "measured_on": f"{ph}x{pw}", "measured": True, "forecast": fp,
                       "params": sum(p.numel() for p in model.parameters())}
                if not bf16 and fl["total"] > args.max_fp32_flop:
                    row["error"] = (f"skipped: {fl['total'] / 1e12:.3g} TFLOP per member-pass "
                                    f"({100 * fl['attn'] / fl['total']:.0f}% attention) over --max-fp32-flop")
                    emit(row, None)
                    continue
                try:
                    t_c = time.perf_counter()
                    run1 = make_pass(net, cfg, layout, 1, h, w, device, bf16=bf16, channels_last=cl)
                    with PeakMemory(device, base=weights) as pm:
                        run1()
                    first_s = time.perf_counter() - t_c
                    per_member = pm.peak
                    budget_flop = args.pass_flop_budget if bf16 else args.pass_flop_budget / 8
                    batch = max(1, min(MEMBERS, int(budget_flop // fl["total"])))
                    if device.type == "cuda":  # as the sampler's member_batch_size "auto" sizes it
                        batch = members_that_fit(run1, device, batch)
                    del run1
                    if compiled and batch != 1:
                        batch = 1  # another shape would compile again
                    run = make_pass(net, cfg, layout, batch, h, w, device, bf16=bf16, channels_last=cl)
                    with PeakMemory(device, base=weights) as pmb:
                        r = timed_passes(run, device, args.warmup, args.passes, args.budget_s)
                    del run
                    t = r["s_per_pass"] / batch
                    pk = peaks["bf16" if bf16 else "fp32"]
                    row.update({"batch": batch, "s_per_member_pass": t, "achieved_flops": fl["total"] / t,
                                "peak_flops": pk, "fraction_of_peak": fl["total"] / t / pk,
                                "peak_mib_per_member": per_member / 2**20,
                                "peak_mib_batch": pmb.peak / 2**20,
                                "memory_how": "max_memory_allocated above the weights, 1-member pass"
                                if device.type == "cuda" else "VmHWM rise, 1-member pass",
                                "forecast_wall_s": fp["passes"] * t,
                                "timing": {**r, "first_pass_s": first_s}})
                    if bf16:
                        row["fraction_of_measured_matmul"] = fl["total"] / t / GPU_BF16_MEASURED
                except torch.OutOfMemoryError as err:  # noqa: PERF203
                    row.update({"error": f"out of memory: {str(err).splitlines()[0]}"})
                except Exception as err:  # noqa: BLE001  a failed row is reported, the others still run
                    row.update({"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                emit(row, None)
            del model, net
            if device.type == "cuda":
                torch.cuda.empty_cache()
        torch.backends.cudnn.benchmark = False


# -- output ------------------------------------------------------------------------------------------------------------
def _fmt_s(s: float) -> str:
    if s != s:
        return "-"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    if s < 120:
        return f"{s:.2f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _fmt_rate(f: float) -> str:
    return f"{f / 1e12:.2f} T" if f >= 1e12 else f"{f / 1e9:.1f} G"


def table(rows: list[dict]) -> str:
    head = ("| config | grid (padded) | variant | GFLOP / member-pass (attn %) | measured on | batch | "
            "time / member-pass | FLOP/s | % of peak (CPU: per CPU-s used) | peak MiB / member | 50-member forecast: "
            "passes (steps x g x leads) | forecast wall (CPU: per CPU-s used) |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        fp = r["forecast"]
        grid = f"{r['grid']} {r['padded_hw'][0]}x{r['padded_hw'][1]}"
        flops = f"{r['gflop_per_member_pass']:,.1f} ({100 * r['attn_fraction']:.0f}%)"
        passes = f"{fp['passes']:,} ({fp['steps']} x {fp['guidance_factor']} x {fp['leads']})"
        if "error" in r:
            lines.append(f"| {r['config']} | {grid} | {r['variant']} | {flops} | {r['measured_on']} | - | "
                         f"failed: {r['error'][:80]} | - | - | - | {passes} | - |")
            continue
        wall_cpu = f" ({_fmt_s(r['forecast_wall_cpu_s_s'])})" if "forecast_wall_cpu_s_s" in r else ""
        cpu_s = (f" ({100 * r['fraction_of_peak_per_cpu_s']:.1f}%)" if "fraction_of_peak_per_cpu_s" in r else "")
        lines.append(
            f"| {r['config']} | {grid} | {r['variant']} | {flops} | {r['measured_on']} | {r['batch']} | "
            f"{_fmt_s(r['s_per_member_pass'])} | {_fmt_rate(r['achieved_flops'])} | "
            f"{100 * r['fraction_of_peak']:.1f}%{cpu_s} | {r['peak_mib_per_member']:,.0f} | {passes} | "
            f"{_fmt_s(r['forecast_wall_s'])}{wall_cpu} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", choices=["extrapolate", "direct"], default=None,
                   help="default: extrapolate on the CPU, direct on CUDA")
    p.add_argument("--configs", nargs="+", default=CONFIGS)
    p.add_argument("--grids", nargs="*", default=None, help="direct mode: only these grid labels (crop, 512, conus)")
    p.add_argument("--variants", default=None, help="direct mode, comma-separated: bf16-cl, fp32, bf16-cl-compile, "
                   "bf16-cl-cudnnbench, bf16, fp32-cl (default bf16-cl,fp32)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="CPU: sub-domains of at most 60 GFLOP, one timed pass")
    p.add_argument("--smoke", action="store_true", help="everything tiny, to check the script")
    p.add_argument("--flop-budget", type=float, default=None, help="CPU sub-domain: max FLOPs of one pass")
    p.add_argument("--pass-flop-budget", type=float, default=200e12, help="direct: max FLOPs of a batched bf16 pass")
    p.add_argument("--max-fp32-flop", type=float, default=60e12,
                   help="direct: skip fp32 rows whose member-pass costs more (the demo net's attention at CONUS)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--passes", type=int, default=None, help="max timed passes")
    p.add_argument("--min-passes", type=int, default=None, help="CPU: timed passes even past --budget-s")
    p.add_argument("--budget-s", type=float, default=None, help="max seconds of timed passes per row")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    a.mode = a.mode or ("direct" if a.device.startswith("cuda") else "extrapolate")
    a.variants = a.variants or "bf16-cl,fp32"
    if a.flop_budget is None:
        a.flop_budget = 1e9 if a.smoke else (60e9 if a.quick else 300e9)
    if a.warmup is None:  # extrapolate mode: the memory pass before the timed ones is the warm-up
        a.warmup = 0 if (a.smoke or a.mode == "extrapolate") else 1
    if a.min_passes is None:
        a.min_passes = 1
    if a.passes is None:
        a.passes = 1 if (a.smoke or a.quick) else 3
    if a.budget_s is None:
        a.budget_s = 1.0 if a.smoke else (10.0 if a.device == "cpu" else 6.0)
    if a.smoke:
        a.pass_flop_budget = min(a.pass_flop_budget, 2e9)
        a.max_fp32_flop = min(a.max_fp32_flop, 0.5e9)  # exercises the skip (demo's attention at conus-smoke)
    return a


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out: dict = {"date": time.strftime("%Y-%m-%d"), "args": vars(args), "rows": [],
                 "loadavg_start": os.getloadavg(), "os_cpu_count": os.cpu_count()}

    def emit(row, meta):
        if meta is not None:
            out.update(meta)
            print(f"# {meta['device']}", flush=True)
            if "how" in meta.get("peak", {}):
                print(f"# peak: {meta['peak']['peak_flops'] / 1e9:.0f} GFLOP/s fp32 = {meta['peak']['how']}",
                      flush=True)
        if row is not None:
            out["rows"].append(row)
            msg = row.get("error") or (f"{_fmt_s(row['s_per_member_pass'])}/member-pass, "
                                       f"{100 * row['fraction_of_peak']:.1f}% of peak")
            print(f"  {row['config']:<22} {row['grid']:<12} {row['variant']:<18} "
                  f"{row['gflop_per_member_pass']:>12,.1f} GFLOP  {msg}", flush=True)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(out, indent=1, default=str))

    t0 = time.perf_counter()
    (run_direct if args.mode == "direct" else run_extrapolate)(args, emit)
    out["wall_s"] = time.perf_counter() - t0
    out["loadavg_end"] = os.getloadavg()
    emit(None, None)
    print()
    print(table(out["rows"]))
    print(f"\n(run took {out['wall_s']:.0f} s; load average {out['loadavg_start'][0]:.1f} at the start, "
          f"{out['loadavg_end'][0]:.1f} at the end, {os.cpu_count()} CPUs)")
    return out


if __name__ == "__main__":
    main()
