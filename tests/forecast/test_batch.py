"""The batch job on the session's local Ray: members over actors, written once, reopened, regenerated."""

import json

import numpy as np
import pytest
import yaml

from def_ray.commands import forecast_main as main
from def_ray.forecast.members import member_chunks
from def_ray.forecast.ensemble import regenerate_member
from def_ray.testing import tiny_checkpoint, tiny_config, tiny_store
from def_ray.forecast.writer import open_forecast


@pytest.fixture(scope="module")
def job_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    store = tiny_store(root / "s.zarr", hours=20)
    cfg = tiny_config(store.url)
    ckpt = tiny_checkpoint(root / "m.pt", cfg)
    cfg_path = root / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.dump()))
    return root, store, ckpt, cfg_path


def test_member_chunks_cover_the_members_in_order():
    assert member_chunks(10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert member_chunks(10, "auto", 3) == [(0, 4), (4, 4), (8, 2)]  # each actor sizes its own batches
    assert member_chunks(3, 8) == [(0, 3)]


@pytest.mark.ray
@pytest.mark.slow
def test_job_writes_dataset_that_reopens_and_regenerates(ray_session, job_files, capsys):
    root, store, ckpt, cfg_path = job_files
    out = root / "fc.zarr"
    # 6 members in chunks of 4 over 2 actors; lead 2 h = two autoregressive steps
    rc = main(["--model", ckpt, "--config", str(cfg_path), "--members", "6", "--lead-hours", "2", "--out", str(out),
               "--plot", "--no-progress", "-o", "forecast.seed=11", "-o", "forecast.sampler.probability_matching=true"])
    assert rc == 0, capsys.readouterr().err
    assert f"forecast: {out}" in capsys.readouterr().out
    ds = open_forecast(str(out)).load()
    assert dict(ds["refc"].sizes) == {"member": 6, "lead_time": 2, "y": 16, "x": 16}
    assert ds["refc_probability"].dims == ("threshold", "lead_time", "y", "x")
    np.testing.assert_array_equal(ds["threshold"].values, [20.0, 35.0, 40.0, 50.0])
    p = ds["refc_probability"].values
    assert ((p >= 0) & (p <= 1)).all()
    for key, value in {"checkpoint": ckpt, "sampler": "dpmpp", "steps": 2, "seed": 11, "members": 6,
                       "member_batch_size": 4, "spread_scale": 1.0, "lead_hours": 2}.items():
        assert ds.attrs[key] == value, key
    assert str(ds["forecast_reference_time"].values.astype("datetime64[s]")) == str(store.committed_times()[-1])
    assert ds["latitude"].shape == (16, 16)
    assert json.loads(ds.attrs["sampler_options"])["probability_matching"] is True  # every option is recorded
    # member 5 (sampled by the second actor, in the second chunk) regenerates bit for bit, in this process
    again = regenerate_member(ds, 5)
    np.testing.assert_array_equal(again[:, 0], ds["refc"].isel(member=5).values)
    maps = sorted(p.name for p in (root / "fc_maps").iterdir())
    assert "refc_probability_lead2h.png" in maps and len(maps) == 4


@pytest.mark.ray
def test_job_refuses_an_init_time_outside_the_store(ray_session, job_files, capsys):
    root, store, ckpt, cfg_path = job_files
    rc = main(["--model", ckpt, "--config", str(cfg_path), "--init-time", "2030-01-01T00", "--out",
               str(root / "never.nc"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "init_time 2030-01-01T00:00:00" in err and "committed times of" in err
    assert not (root / "never.nc").exists()


@pytest.mark.ray
def test_job_refuses_a_config_that_contradicts_the_checkpoint_and_an_output_onto_its_input(ray_session, job_files,
                                                                                           capsys):
    root, store, ckpt, cfg_path = job_files
    def snapshot():
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "s.zarr").rglob("*")) if p.is_file()}

    before = snapshot()
    rc = main(["--model", ckpt, "--config", str(cfg_path), "--out", str(root / "t.nc"), "--no-progress",
               "-o", "data.target_variables=[t2m]"])
    err = capsys.readouterr().err
    assert rc == 2 and "data.target_variables=['t2m'] in the config" in err and "['refc']" in err
    assert len(err.strip().splitlines()) == 1 and not (root / "t.nc").exists()
    rc = main(["--model", ckpt, "--config", str(cfg_path), "--out", store.url, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "is the same location as input" in err
    assert snapshot() == before  # the input store is byte for byte untouched
