"""benchmarks/bench_forecast_scale.py and benchmarks/gpu_check.py: the FLOP counts, the forecast's pass count, the
padding, and one tiny run of each mode (CPU, a few seconds)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _module(name: str):
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bfs():
    return _module("bench_forecast_scale")


def _tiny(attention: list[int], **forecast):
    from def_ray.testing import tiny_config

    sections = {"model": {"attention_levels": attention, "attention_heads": 2}}
    if forecast:
        sections["forecast"] = forecast
    return tiny_config("unused.zarr", **sections)


def _layout(cfg):
    from def_ray.models.description import ModelDescription

    return ModelDescription.from_config(cfg).layout


def test_convolution_flops_are_linear_in_pixels_and_attention_quadratic(bfs):
    conv = _tiny([])
    a, b = (bfs.count_flops(conv, _layout(conv), s, s) for s in (32, 64))
    assert a["attn"] == b["attn"] == 0
    # the timestep MLP (addmm) is per sample, not per pixel: everything else scales with the pixels exactly
    mlp = a["per_op"].get("aten.addmm", 0)
    assert mlp == b["per_op"].get("aten.addmm", 0) > 0
    assert (b["total"] - mlp) == pytest.approx(4 * (a["total"] - mlp), rel=1e-12)

    att = _tiny([1])  # attention at 1/2 resolution: tokens (s/2)^2, channels base_dims * 2 = 16
    lay = _layout(att)
    c = bfs.count_flops(att, lay, 32, 32)
    tokens, ch = 16 * 16, 16
    layers = 1 + 1 + 2  # down blocks at level 1, mid, up blocks at level 1 (num_res_blocks = 1)
    assert c["attn"] == 4 * tokens**2 * ch * layers
    d = bfs.count_flops(att, lay, 64, 64)
    assert d["attn"] == pytest.approx(16 * c["attn"])


def test_counted_flops_match_a_real_pass(bfs):
    """The meta-device count equals the count of a real CPU pass (same ops, same shapes)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = _tiny([1])
    lay = _layout(cfg)
    model = bfs.build(cfg, lay, "cpu")
    x, c = torch.randn(1, lay.target_channels, 24, 40), torch.randn(1, lay.cond_channels, 24, 40)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        out = model(x, torch.tensor(3), c)
    assert out.shape == x.shape
    ph, pw = bfs.padded(cfg, 24, 40)
    assert (ph, pw) == (24, 40)  # already multiples of 2 (two levels)
    real_bmm = sum(v for k, v in fc.get_flop_counts()["Global"].items() if "bmm" in str(k) or "attention" in str(k))
    meta = bfs.count_flops(cfg, lay, ph, pw)
    non_attn_real = fc.get_total_flops() - real_bmm
    assert meta["total"] - meta["attn"] == non_attn_real


def test_padding_matches_the_unet(bfs):
    from def_ray.config import load_config

    cfg = load_config(REPO / "configs" / "diffusion_4090.yaml")
    assert bfs.padded(cfg, 1059, 1799) == (1064, 1800)  # 4 levels: multiples of 8
    cfg = load_config(REPO / "configs" / "diffusion_production.yaml")
    assert bfs.padded(cfg, 1059, 1799) == (1072, 1808)  # 5 levels: multiples of 16
    cfg = load_config(REPO / "configs" / "mrms_qpe_conus.yaml")
    assert bfs.pad_factor(cfg) == 8  # 3 levels x patch 2


def test_forecast_passes(bfs):
    from def_ray.config import load_config

    fp = bfs.forecast_passes(load_config(REPO / "configs" / "diffusion_production.yaml"))
    assert (fp["steps"], fp["guidance_factor"], fp["leads"]) == (25, 1, 3)
    assert fp["passes"] == 50 * 25 * 3
    guided = _tiny([], sampler={"name": "dpmpp", "steps": 4, "guidance": 1.5}, lead_hours=2)
    fp = bfs.forecast_passes(guided, members=10)
    assert fp["passes"] == 10 * 4 * 2 * 2


def test_cpu_peak_is_cores_clock_and_simd(bfs):
    p = bfs.cpu_peak(2)
    assert p["peak_flops"] == pytest.approx(p["cores"] * p["ghz"] * 1e9 * p["flop_per_cycle"])
    assert p["flop_per_cycle"] in (16, 32, 64)


@pytest.mark.parametrize("mode", ["extrapolate", "direct"])
def test_tiny_run_writes_json(bfs, mode, tmp_path, capsys):
    path = tmp_path / "b.json"
    out = bfs.main(["--smoke", "--mode", mode, "--configs", "configs/mrms_qpe_conus.yaml", "--threads", "1",
                    "--json", str(path), "--variants", "fp32"])
    saved = json.loads(path.read_text())
    assert len(saved["rows"]) == len(out["rows"]) == 3 * (2 if mode == "extrapolate" else 1)
    for r in saved["rows"]:
        assert r["forecast"]["passes"] == 50 * 6
        assert r["forecast_wall_s"] == pytest.approx(r["forecast"]["passes"] * r["s_per_member_pass"])
        assert r["achieved_flops"] == pytest.approx(r["gflop_per_member_pass"] * 1e9 / r["s_per_member_pass"])
    assert "| mrms_qpe_conus |" in capsys.readouterr().out


def test_gpu_check_table_reports_every_part():
    gc = _module("gpu_check")
    table = gc.one_table({"device": "cpu", "torch": "x", "ray": {"skipped": "ray not installed"},
                          "identity": {"error": "boom"}}, [{"rows": []}])
    assert "skipped: ray not installed on the device image" in table
    assert "(a) training steps" in table and "(c) member bit-identity" in table and "(b) 50-member" in table
