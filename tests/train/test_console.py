"""What a training run prints: one line per epoch (printed by the driver, once), one line for the sampler chosen on
validation, and none of Ray's progress bars, execution banners or report echoes unless --verbose."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from def_ray.train.console import EpochLines, format_duration


def test_epoch_line_has_loss_score_time_and_eta():
    lines = EpochLines(epochs=4, started=0.0)
    first = lines.line({"epoch": 0, "epoch_train_loss": 0.5, "val_score": 0.4, "val_crps": 0.4, "val_spread_skill": 0.8},
                       now=30.0)
    assert first == ("[def-ray] epoch 1/4: train loss 0.5, val CRPS 0.4, spread/skill 0.80, 30.0 s/epoch, "
                     "ETA 1 min 30 s")
    # the first epoch pays for starting the workers: the ETA uses the later ones once there are some
    second = lines.line({"epoch": 1, "val_score": 0.45, "val_crps": 0.45}, now=40.0)
    assert second == "[def-ray] epoch 2/4: val CRPS 0.45 (best 0.4, epoch 1), 10.0 s/epoch, ETA 20 s"
    lines.line({"epoch": 2, "val_score": 0.3}, now=50.0)
    last = lines.line({"epoch": 3, "val_score": 0.35}, now=62.0)
    assert last == "[def-ray] epoch 4/4: val MSE 0.35 (best 0.3, epoch 3), 12.0 s/epoch, done"


def test_durations_read_as_people_write_them():
    assert [format_duration(s) for s in (0, 42.4, 65, 3600, 3725)] == ["0 s", "42 s", "1 min 05 s", "1 h 00 min",
                                                                       "1 h 02 min"]


def test_verbose_is_an_option_of_the_commands_that_train():
    from def_ray.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["demo", "--verbose"]).verbose
    assert not parser.parse_args(["demo"]).verbose
    assert parser.parse_args(["train", "--config", "x.yaml", "-v"]).verbose


SCRIPT = textwrap.dedent("""
    import json, sys
    from def_ray.testing import tiny_config, tiny_store
    from def_ray.train.console import connect_ray
    from def_ray.train.trainer import train

    out = sys.argv[1]
    tiny_store(f"{out}/tiny.zarr")
    cfg = tiny_config(f"{out}/tiny.zarr",
                      train={"epochs": 3, "num_workers": 1, "cpus_per_worker": 1, "batch_size": 2,
                             "storage_path": f"{out}/runs", "run_name": "console", "val_members": 2,
                             "val_windows": 1, "val_steps": 2, "warmup_steps": 1, "bf16": False,
                             "choose_sampler": True, "spread_scales": [1.0, 1.5], "choice_windows": 2},
                      tracking={"enabled": False})
    connect_ray()
    train(cfg)
    from def_ray.models.checkpoint import read_checkpoint
    print("SAMPLER", json.dumps(read_checkpoint(f"{out}/runs/console/best.pt", build=False).description["sampler"]))
""")


@pytest.mark.slow
def test_a_training_run_prints_one_line_per_epoch_and_no_bars(tmp_path):
    """A real run on its own local Ray, with worker output reaching the driver as users see it (log_to_driver)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DEF_RAY_VERBOSE")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    epoch_lines = [line for line in out.splitlines() if line.startswith("[def-ray] epoch ")]
    assert [line.split(":")[0] for line in epoch_lines] == [f"[def-ray] epoch {k}/3" for k in (1, 2, 3)], out
    assert "ETA" in epoch_lines[0] and epoch_lines[-1].endswith("done")
    assert "val CRPS" in epoch_lines[0] and "s/epoch" in epoch_lines[0]
    # the sampler chosen on validation: one line, and the checkpoint keeps the choice, its rule and every candidate
    chosen = [line for line in out.splitlines() if line.startswith("[def-ray] sampler chosen on validation")]
    assert len(chosen) == 1 and "spread/skill" in chosen[0] and "reliability" in chosen[0], out[-3000:]
    sampler = json.loads(next(line for line in out.splitlines() if line.startswith("SAMPLER "))[len("SAMPLER "):])
    assert sampler["spread_scale"] in (1.0, 1.5) and "reliability" in sampler["chosen_by"]
    assert [c["spread_scale"] for c in sampler["candidates"]] == [1.0, 1.5]
    assert all({"crps", "spread_skill", "reliability"} <= set(c) for c in sampler["candidates"])
    for noise in ("\r", "\x1b[A", "Running Dataset", "Reporting training result", "Checkpoint successfully created",
                  "Started training worker group", "Starting execution of Dataset", "RayTrainWorker"):
        assert noise not in out, f"{noise!r} in the console:\n{out[-3000:]}"
