"""Malformed command lines: `def-ray` in process, each refused with exit status 2 (bad input) or 1 (a failure) and
exactly one line on stderr, no traceback; bad input is found before Ray starts (ray.init is forbidden here)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from def_ray.cli import main


class RayStarted(BaseException):
    """Raised by a forbidden ray.init: not an Exception, so no command can report it as its own failure."""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """A tiny store, a diffusion and a deterministic checkpoint with their configs, and broken inputs."""
    from def_ray.testing import tiny_checkpoint, tiny_config, tiny_store

    root = tmp_path_factory.mktemp("cli")
    store = tiny_store(root / "s.zarr", hours=20)
    out: dict[str, str] = {"root": str(root), "store": store.url}
    for name, kind in (("m", "diffusion"), ("det", "deterministic")):
        cfg = tiny_config(store.url, model={"kind": kind})
        out[name] = tiny_checkpoint(root / f"{name}.pt", cfg)
        out[f"{name}_cfg"] = str(root / f"{name}.yaml")
        Path(out[f"{name}_cfg"]).write_text(yaml.safe_dump(cfg.dump()))
    (root / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "broken.yaml").write_text("train: {epochs: 3\n")
    (root / "ckpt_folder.pt").mkdir()
    (root / "junk.pt").write_text("not a checkpoint")
    (root / "taken.nc").write_text("an earlier forecast")
    out.update({k: str(root / f) for k, f in [("latin1", "latin1.yaml"), ("list", "list.yaml"),
                                               ("broken", "broken.yaml"), ("folder", "ckpt_folder.pt"),
                                               ("junk", "junk.pt"), ("taken", "taken.nc")]})
    return out


@pytest.fixture
def no_ray(monkeypatch):
    import ray

    def forbidden(*args, **kwargs):
        raise RayStarted("ray.init was called before the input was checked")

    monkeypatch.setattr(ray, "init", forbidden)
    monkeypatch.delenv("DEF_RAY_DEBUG", raising=False)


def _run(argv: list[str], capsys) -> tuple[int, str]:
    status = main(argv)
    err = capsys.readouterr().err
    return status, err


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    return lines[0]


def _fc(f: dict[str, str], *extra: str, model: str = "m", cfg: str = "m_cfg") -> list[str]:
    return ["forecast", "--model", f.get(model, model), "--config", f.get(cfg, cfg), "--no-progress",
            "--out", str(Path(f["root"]) / "new.nc"), *extra]


# (case id, argv from the files, expected status, text the one line must hold)
CASES = [
    # forecast
    ("forecast-config-not-utf8", lambda f: _fc(f, cfg="latin1"), 2, "not UTF-8"),
    ("forecast-config-not-yaml", lambda f: _fc(f, cfg="broken"), 2, "not valid YAML"),
    ("forecast-config-a-list", lambda f: _fc(f, cfg="list"), 2, "mapping at the top level"),
    ("forecast-config-missing", lambda f: _fc(f, cfg="/no/such/config.yaml"), 2, "not found"),
    ("forecast-override-bad-yaml", lambda f: _fc(f, "-o", "k=["), 2, "not valid YAML"),
    ("forecast-override-no-equals", lambda f: _fc(f, "-o", "forecast.members"), 2, "KEY=VALUE"),
    ("forecast-override-unknown-key", lambda f: _fc(f, "-o", "forecast.memberz=3"), 2,
     "forecast.memberz: unknown key"),
    ("forecast-override-into-a-value", lambda f: _fc(f, "-o", "name.x=1"), 2, "not a section"),
    ("forecast-bad-value", lambda f: _fc(f, "-o", "forecast.num_actors=0"), 2, "forecast.num_actors"),
    ("forecast-members-zero", lambda f: _fc(f, "--members", "0"), 2, "--members"),
    ("forecast-members-text", lambda f: _fc(f, "--members", "many"), 2, "--members"),
    ("forecast-deterministic-4-members", lambda f: _fc(f, "--members", "4", model="det", cfg="det_cfg"), 2,
     "deterministic"),
    ("forecast-bad-init-time", lambda f: _fc(f, "--init-time", "2024-13-45"), 2, "--init-time"),
    ("forecast-init-time-outside-store", lambda f: _fc(f, "--init-time", "2030-01-01T00"), 2, "init_time"),
    ("forecast-lead-zero", lambda f: _fc(f, "--lead-hours", "0"), 2, "--lead-hours"),
    ("forecast-negative-seed", lambda f: _fc(f, "--seed", "-1"), 2, "--seed"),
    ("forecast-checkpoint-missing", lambda f: _fc(f, model="/no/such/model.pt"), 2, "not found"),
    ("forecast-checkpoint-a-folder", lambda f: _fc(f, model="folder"), 2, "folder"),
    ("forecast-checkpoint-junk", lambda f: _fc(f, model="junk"), 2, "not a readable torch file"),
    ("forecast-out-bad-extension", lambda f: _fc(f, "--out", f["root"] + "/f.txt"), 2, "unknown extension"),
    ("forecast-out-is-the-store", lambda f: _fc(f, "--out", f["store"]), 2, "same location as input"),
    ("forecast-out-inside-the-store", lambda f: _fc(f, "--out", f["store"] + "/f.zarr"), 2, "inside input"),
    ("forecast-out-exists", lambda f: _fc(f, "--out", f["taken"]), 2, "already exists"),
    ("forecast-config-contradicts-checkpoint", lambda f: _fc(f, "-o", "data.n_past=3"), 2, "n_past"),
    ("forecast-no-model", lambda f: ["forecast", "--config", f["m_cfg"]], 2, "--model"),
    # train
    ("train-no-config", lambda f: ["train"], 2, "--config"),
    ("train-config-not-utf8", lambda f: ["train", "--config", f["latin1"]], 2, "not UTF-8"),
    ("train-bad-value", lambda f: ["train", "--config", f["m_cfg"], "-o", "train.epochs=0"], 2, "train.epochs"),
    ("train-unknown-kind", lambda f: ["train", "--config", f["m_cfg"], "-o", "model.kind=gan"], 2, "model.kind"),
    ("train-no-store", lambda f: ["train", "--config", f["m_cfg"], "-o", "data.store=/no/such.zarr"], 2,
     "data.store"),
    ("train-writes-into-its-store", lambda f: ["train", "--config", f["m_cfg"], "-o",
                                               f"train.storage_path={f['store']}"], 2, "overlaps data.store"),
    ("train-export-not-pt", lambda f: ["train", "--config", f["m_cfg"], "-o", "train.export_path=model.bin"], 2,
     "*.pt"),
    # ingest
    ("ingest-no-sources", lambda f: ["ingest", "--config", f["m_cfg"]], 2, "GRIB2"),
    ("ingest-tile-not-a-number", lambda f: ["ingest", "x.grib2", "--tile", "abc"], 2, "--tile"),
    ("ingest-unknown-variable", lambda f: ["ingest", "x.grib2", "--out", f["root"] + "/i.zarr", "--variables",
                                           "refc,reflectivity"], 2, "unknown variable"),
    ("ingest-config-not-yaml", lambda f: ["ingest", "x.grib2", "--config", f["broken"]], 2, "not valid YAML"),
    # fetch-hrrr
    ("fetch-bad-start", lambda f: ["fetch-hrrr", "--start", "2024-99-01"], 2, "--start"),
    ("fetch-no-start", lambda f: ["fetch-hrrr", "--out", f["root"]], 2, "--start"),
    ("fetch-start-after-end", lambda f: ["fetch-hrrr", "--start", "2024-06-01T05", "--end", "2024-06-01T02",
                                         "--out", f["root"]], 2, "after end"),
    ("fetch-unknown-variable", lambda f: ["fetch-hrrr", "--start", "2024-06-01T00", "--variables", "nope",
                                          "--out", f["root"]], 2, "unknown variable"),
    # verify
    ("verify-model-not-name-path", lambda f: ["verify", "--config", f["m_cfg"], "--model", "x"], 2, "NAME=CKPT"),
    ("verify-checkpoint-missing", lambda f: ["verify", "--config", f["m_cfg"], "--model", "a=/no/such.pt"], 2,
     "not found"),
    ("verify-name-of-a-baseline", lambda f: ["verify", "--config", f["m_cfg"], "--model", f"persistence={f['m']}"],
     2, "baseline"),
    ("verify-name-twice", lambda f: ["verify", "--config", f["m_cfg"], "--model", f"a={f['m']}", "--model",
                                     f"a={f['m']}"], 2, "already used"),
    ("verify-report-into-the-store", lambda f: ["verify", "--config", f["m_cfg"], "--out", f["store"]], 2,
     "must not be an input"),
    ("verify-no-store", lambda f: ["verify", "--config", f["m_cfg"], "-o", "data.store=/no/such.zarr"], 2,
     "data.store"),
    # serve
    ("serve-checkpoint-missing", lambda f: ["serve", "--config", f["m_cfg"], "--model", "/no/such.pt"], 2,
     "not found"),
    ("serve-deterministic-default-members", lambda f: ["serve", "--config", f["det_cfg"], "--model", f["det"]], 2,
     "forecast.members"),
    ("serve-default-members-above-max", lambda f: ["serve", "--config", f["m_cfg"], "--model", f["m"], "-o",
                                                   "serve.max_members=2"], 2, "serve.max_members"),
    ("serve-no-model", lambda f: ["serve", "--config", f["m_cfg"]], 2, "--model"),
    # the command itself
    ("unknown-command", lambda f: ["predict"], 2, "invalid choice"),
    ("no-command", lambda f: [], 2, "command"),
]


@pytest.mark.parametrize("argv, status, text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_command_line_is_one_line_before_ray(files, no_ray, capsys, argv, status, text):
    got, err = _run(argv(files), capsys)
    line = _one_line(err)
    assert got == status, line
    assert text in line, line
    assert line.startswith("def-ray"), line


def test_at_least_20_cases_across_the_commands():
    commands = {c[0].split("-")[0] for c in CASES}
    assert len(CASES) >= 20 and {"forecast", "train", "ingest", "fetch", "verify", "serve"} <= commands
    assert len({c[0] for c in CASES}) == len(CASES)


def test_refused_output_is_left_as_it_was(files, no_ray, capsys):
    assert main(_fc(files, "--out", files["taken"])) == 2
    capsys.readouterr()
    assert Path(files["taken"]).read_text() == "an earlier forecast"
    assert not (Path(files["root"]) / "new.nc").exists()


def test_serve_port_in_use_is_refused_before_ray(files, no_ray, capsys, monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status, err = _run(["serve", "--config", files["m_cfg"], "--model", files["m"], "-o", f"serve.port={port}"],
                           capsys)
    assert status == 2 and "in use" in _one_line(err)


# -- failures of the work itself: exit 1, one line naming the error ----------------------------------------------


def test_failure_is_one_line_and_status_1(files, no_ray, capsys, monkeypatch):
    import def_ray.verify.workflow as workflow

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(workflow, "verify", broken)
    status, err = _run(["verify", "--config", files["m_cfg"], "--out", files["root"] + "/report"], capsys)
    line = _one_line(err)
    assert status == 1 and "failed: OSError" in line and "No space left on device" in line, line


def test_failure_in_a_ray_task_names_its_cause_not_the_remote_traceback(files, capsys, monkeypatch):
    import ray
    from ray.exceptions import RayTaskError

    import def_ray.forecast.batch as batch

    def remote_failure(*args, **kwargs):
        cause = RuntimeError("sampling diverged\nat member 3")
        raise RayTaskError("sample", "Traceback (most recent call last):\n  File x\nRuntimeError", cause
                           ).as_instanceof_cause()

    monkeypatch.delenv("DEF_RAY_DEBUG", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # as under `ray job submit`: nothing to start
    monkeypatch.setattr(batch, "run_forecast_job", remote_failure)
    status, err = _run(_fc(files), capsys)
    line = _one_line(err)
    assert status == 1 and line.startswith("def-ray forecast: failed: RuntimeError: sampling diverged at member 3")


def test_debug_shows_the_traceback(files, no_ray, monkeypatch):
    monkeypatch.setenv("DEF_RAY_DEBUG", "1")
    from def_ray.config import ConfigError

    with pytest.raises(ConfigError, match="unknown key"):
        main(_fc(files, "-o", "forecast.memberz=3"))
