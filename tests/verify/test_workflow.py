"""The verification workflow end to end on a small synthetic store (baselines; models in tests/forecast)."""

import json

import numpy as np
import pytest

from def_ray.config import config_from_dict
from def_ray.data.ingest import ingest_dataset
from def_ray.data.synthetic import generate_scenes
from def_ray.data.zarr_store import ZarrStore
from def_ray.verify.report import Cases, run_forecasters, score, select_cases
from def_ray.commands import verify_main


@pytest.fixture(scope="module")
def synthetic_cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    cfg = config_from_dict({
        "synth": {"hours": 60, "ny": 24, "nx": 24, "start": "2024-06-01T06:00:00"},
        "data": {"store": str(root / "s.zarr"), "tile": 24},
        "forecast": {"members": 6},
        "verify": {"max_cases": 4, "lead_steps": 2, "out": str(root / "report"), "scales": [1, 5]},
    })
    ingest_dataset(generate_scenes(cfg.synth), cfg.data.store, progress=False)
    return cfg


def test_cases_lie_in_the_test_split_with_their_leads(synthetic_cfg):
    store = ZarrStore(synthetic_cfg.data.store)
    from def_ray.data.windows import split_windows

    d = synthetic_cfg.data
    splits = split_windows(store.committed_mask(), d.n_past, d.dt_steps, d.val_fraction, d.test_fraction, d.gap)
    lo, hi = splits.ranges["test"]
    inits = select_cases(store, d, lead_steps=2)
    assert inits.size > 0
    assert (inits - (d.n_past - 1) >= lo).all() and (inits + 2 < hi).all()
    assert select_cases(store, d, lead_steps=2, max_cases=3).size == 3


def test_a_perfect_forecaster_scores_perfectly(synthetic_cfg):
    store = ZarrStore(synthetic_cfg.data.store)
    inits = select_cases(store, synthetic_cfg.data, lead_steps=2, max_cases=3)
    cases = Cases(store, "refc", inits, 2, 1)
    assert cases.truth.name == "refc" and cases.truth.attrs["units"] == "dBZ"  # plots name the event with them
    truth_by_init = {int(i): cases.truth.values[k] for k, i in enumerate(inits)}
    perfect = {"oracle": lambda i, box: np.repeat(truth_by_init[i][None], 3, axis=0)}
    s = score(run_forecasters(cases, perfect), cases.truth, [20.0], [1, 3], reference=None)["oracle"]
    for lead in (1, 2):
        assert s[lead]["crps"] == pytest.approx(0, abs=1e-6) and s[lead]["rmse"] == pytest.approx(0, abs=1e-6)
        t = s[lead]["thresholds"]["20.0"]
        assert t["brier"] == pytest.approx(0, abs=1e-12)
        if t["base_rate"] > 0:
            assert t["csi"] == 1 and t["fss"][1] == pytest.approx(1)


def test_tile_cases_are_the_rainy_covered_tiles_and_every_method_sees_its_tile(synthetic_cfg):
    from def_ray.verify.forecasters import persistence_forecaster
    from def_ray.verify.report import rainy_tiles

    store = ZarrStore(synthetic_cfg.data.store)
    inits = select_cases(store, synthetic_cfg.data, lead_steps=2, max_cases=4)
    frames = store.read("refc", list(range(store.shape[0])))
    tile = store.shape[1] // 2
    got_inits, boxes = rainy_tiles(store, "refc", inits, synthetic_cfg.data.n_past, 2, 1, tile, 0.7, 0.0)
    expect = [(int(i), (y, y + tile, x, x + tile)) for i in inits for y in (0, tile) for x in (0, tile)
              if (frames[i, y:y + tile, x:x + tile] >= 0.0).mean() >= 0.7]
    assert list(zip(got_inits.tolist(), boxes)) == expect and 0 < len(expect) < 4 * len(inits)
    cases = Cases(store, "refc", got_inits, 2, 1, boxes)
    assert cases.truth.shape == (len(expect), 2, tile, tile)
    (i0, (y0, y1, x0, x1)) = expect[0]
    np.testing.assert_array_equal(cases.truth.values[0, 1], frames[i0 + 2, y0:y1, x0:x1])
    fc = run_forecasters(cases, {"persistence": persistence_forecaster(store, "refc", 2)})["persistence"]
    np.testing.assert_array_equal(fc.values[0, 0, 1], frames[i0, y0:y1, x0:x1])


def test_forecasters_with_the_wrong_shape_are_named(synthetic_cfg):
    store = ZarrStore(synthetic_cfg.data.store)
    inits = select_cases(store, synthetic_cfg.data, lead_steps=1, max_cases=2)
    cases = Cases(store, "refc", inits, 1, 1)
    with pytest.raises(ValueError, match="'broken'"):
        run_forecasters(cases, {"broken": lambda i, box: np.zeros((2, 1, 5, 5))})


@pytest.mark.slow
def test_verify_command_writes_the_report_with_known_truth_calibration(synthetic_cfg, tmp_path):
    cfg_path = tmp_path / "c.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(synthetic_cfg.dump()))
    assert verify_main(["--config", str(cfg_path), "--synth-truth", "--out", str(tmp_path / "rep")]) == 0
    scores = json.loads((tmp_path / "rep" / "scores.json").read_text())
    assert set(scores) == {"persistence", "extrapolation", "steps"}
    assert scores["steps"]["1"]["members"] == 6 and "spread_skill" in scores["steps"]["1"]
    assert scores["extrapolation"]["2"]["crpss"] is not None
    cal = json.loads((tmp_path / "rep" / "calibration_vs_truth.json").read_text())
    assert set(cal) == {"steps"} and set(cal["steps"]) == {"20.0", "35.0", "40.0", "50.0"}
    c20 = cal["steps"]["20.0"]
    assert 0 <= c20["mean_forecast"] <= 1 and 0 < c20["mean_true"] <= 1  # the test hours hold convection
    lo, hi = c20["max_deviation_interval"]  # from resampling the cases
    assert c20["interval_level"] == 0.9 and 0 <= lo <= hi <= 1
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| persistence | 1 |" in md and "known probabilities" in md
    for png in ("reliability.png", "rank_histogram.png", "fss_vs_scale.png", "power_spectra.png", "crps_by_lead.png",
                "spread_skill.png"):
        assert (tmp_path / "rep" / png).stat().st_size > 1000


@pytest.mark.slow
def test_verify_against_outcomes_reports_what_a_calibrated_ensemble_would_show(synthetic_cfg, tmp_path):
    import yaml

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(synthetic_cfg.dump()))
    assert verify_main(["--config", str(cfg_path), "--out", str(tmp_path / "rep"),
                        "-o", "verify.thresholds=[0.0,10.0]"]) == 0  # dBZ levels the test hours reach
    cal = json.loads((tmp_path / "rep" / "calibration_vs_observed.json").read_text())
    assert set(cal) == {"steps"} and set(cal["steps"]) == {"0.0", "10.0"}
    for thr, r in cal["steps"].items():
        c = r["calibrated_max_deviation"]  # each of the 6 members scored against the other 5
        assert c["draws"] == 6 and (c["median"] is None or 0 <= c["median"] <= c["upper"] <= 1), (thr, c)
    assert any(r["calibrated_max_deviation"]["median"] is not None for r in cal["steps"].values())
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Reliability against what happened" in md and "| a calibrated ensemble: median (90%) |" in md
    row = next(line for line in md.splitlines() if line.startswith("| steps | 0.0 |"))
    assert row.count("|") == 8  # method, threshold, deviation, interval, calibrated, mean forecast, mean true
    # two members: nothing to score one against but the other, so no calibrated draws (and no failure)
    assert verify_main(["--config", str(cfg_path), "--out", str(tmp_path / "two"), "-o", "verify.members=2",
                        "-o", "verify.thresholds=[0.0]"]) == 0
    two = json.loads((tmp_path / "two" / "calibration_vs_observed.json").read_text())["steps"]["0.0"]
    assert two["calibrated_max_deviation"] == {"median": None, "upper": None, "draws": 0}
    assert "| steps | 0.0 |" in (tmp_path / "two" / "report.md").read_text()


def test_bad_model_argument_is_a_clear_error(synthetic_cfg, tmp_path, capsys):
    import yaml

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(synthetic_cfg.dump()))
    assert verify_main(["--config", str(cfg_path), "--model", "nonsense"]) == 2
    assert "NAME=CKPT" in capsys.readouterr().err


def test_case_progress_says_when_a_method_starts_then_at_most_a_line_a_minute_with_eta(capsys, monkeypatch):
    from def_ray.verify import workflow

    clock = iter([0.0, 30.0, 70.0, 100.0, 150.0])
    monkeypatch.setattr(workflow.time, "perf_counter", lambda: next(clock))
    progress = workflow.CaseProgress()
    for done in range(5):  # cases end at 30, 70, 100, 150 s
        progress("steps", done, 4)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["verify: running steps on 4 case(s)",
                     "verify: steps 2/4 cases, 1 min 10 s, ETA 1 min 10 s",
                     "verify: steps 4/4 cases, 2 min 30 s, done"]
