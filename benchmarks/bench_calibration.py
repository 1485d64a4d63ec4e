"""Issue 6's bars on the synthetic process, measured on the demo pipeline (CPU, minutes; not run in CI).

    python benchmarks/bench_calibration.py [--out bench_calibration_out] [-o train.epochs=40 ...]

Runs `def-ray demo` (synthetic scenes -> both models trained -> verification with --synth-truth) and prints, at lead 1:
CRPS of the diffusion ensemble against persistence and the deterministic UNet, its spread/skill ratio, and the
largest reliability deviation from the KNOWN probabilities over populated bins, each next to its bar.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_calibration_out")
    p.add_argument("--config", default=None, help="default: configs/demo.yaml")
    p.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    from def_ray.cli import parse_overrides
    from def_ray.demo import run_demo

    summary = run_demo(Path(args.out), args.config, overrides=parse_overrides(args.override))
    report = Path(summary["report"]).parent
    scores = json.loads((report / "scores.json").read_text())
    cal = json.loads((report / "calibration_vs_truth.json").read_text())
    lead = scores["diffusion"]["1"]
    rows = [
        ("CRPS diffusion / persistence", lead["crps"] / scores["persistence"]["1"]["crps"], "< 1"),
        ("CRPS diffusion / deterministic", lead["crps"] / scores["deterministic"]["1"]["crps"], "< 1"),
        ("spread/skill", lead["spread_skill"], "0.7 .. 1.3"),
    ]
    rows += [(f"max reliability deviation vs truth, >= {thr} dBZ", r["max_deviation"], "< 0.1")
             for thr, r in cal["diffusion"].items()]
    print(f"\n{'figure':<52} {'value':>8}  bar")
    for name, value, bar in rows:
        print(f"{name:<52} {value:>8.3f}  {bar}")


if __name__ == "__main__":
    main()
