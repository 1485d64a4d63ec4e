import pytest
import torch

from def_ray.config import Config
from def_ray.models import build_model
from def_ray.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tests.models.helpers import tiny_cfg


def _models():
    torch.manual_seed(0)
    return build_model(tiny_cfg(kind="deterministic"), 8, 1), build_model(tiny_cfg(timesteps=20), 8, 1)


def test_round_trip_keeps_outputs_config_and_extra(tmp_path):
    det, dif = _models()
    cond = torch.randn(1, 8, 9, 11)
    path = str(tmp_path / "sub" / "det.pt")
    save_checkpoint(path, det, tiny_cfg(kind="deterministic").model_dump(), extra={"epoch": 3, "val": [0.5]})
    model, config, extra = load_checkpoint(path)
    assert extra == {"epoch": 3, "val": [0.5]} and config["kind"] == "deterministic"
    assert not model.training and model.cond_channels == 8 and model.target_channels == 1
    torch.testing.assert_close(model.predict(cond), det.predict(cond), rtol=0, atol=0)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["det.pt"]  # no temporary file left

    full = Config(model=tiny_cfg(timesteps=20)).dump()
    save_checkpoint(str(tmp_path / "dif.pt"), dif, full)
    model, config, _ = load_checkpoint(str(tmp_path / "dif.pt"))
    assert config == full and model.timesteps == 20
    kw = dict(sampler="dpmpp", steps=3, seed=1)
    assert torch.equal(model.sample(cond, 2, **kw), dif.sample(cond, 2, **kw))


def test_ema_weights_are_loaded_unless_asked_otherwise(tmp_path):
    det, _ = _models()
    ema = {"module." + k: v + 1.0 for k, v in det.state_dict().items()}  # AveragedModel-style keys
    ema["n_averaged"] = torch.tensor(5)
    path = str(tmp_path / "ema.pt")
    save_checkpoint(path, det, tiny_cfg(kind="deterministic").model_dump(), ema_state=ema)
    with_ema, _, _ = load_checkpoint(path)
    raw, _, _ = load_checkpoint(path, use_ema=False)
    key = "net.inp.weight"
    torch.testing.assert_close(with_ema.state_dict()[key], det.state_dict()[key] + 1.0)
    torch.testing.assert_close(raw.state_dict()[key], det.state_dict()[key])


@pytest.mark.s3
def test_round_trip_through_s3(s3_bucket, tmp_path):
    bucket, opts = s3_bucket
    det, _ = _models()
    url = f"s3://{bucket}/runs/best.pt"
    save_checkpoint(url, det, tiny_cfg(kind="deterministic").model_dump(), extra={"run": "x"},
                    storage_options=opts)
    model, _, extra = load_checkpoint(url, storage_options=opts)
    assert extra == {"run": "x"}
    cond = torch.randn(1, 8, 8, 8)
    torch.testing.assert_close(model.predict(cond), det.predict(cond), rtol=0, atol=0)


def test_bad_checkpoints_give_clear_errors(tmp_path):
    det, dif = _models()
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt is not a readable torch file"):
        load_checkpoint(str(tmp_path / "junk.pt"))
    with pytest.raises(CheckpointError, match="does not match"):
        save_checkpoint(str(tmp_path / "x.pt"), det, tiny_cfg(kind="diffusion").model_dump())
    with pytest.raises(CheckpointError, match="no valid model section"):
        save_checkpoint(str(tmp_path / "x.pt"), dif, {"model": {"base_dims": -1}})
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.gpu
def test_loads_onto_cuda(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    det, _ = _models()
    save_checkpoint(str(tmp_path / "g.pt"), det, tiny_cfg(kind="deterministic").model_dump())
    model, _, _ = load_checkpoint(str(tmp_path / "g.pt"), map_location="cuda")
    cond = torch.randn(1, 8, 8, 8)
    torch.testing.assert_close(model.predict(cond.cuda()).cpu(), det.predict(cond), rtol=1e-4, atol=1e-4)
