"""TEST PLUMBING, not used by the pipeline: tiny seeded stores and untrained checkpoints for tests, benchmarks and
smoke runs of the forecast and serving paths (untrained weights give meaningless but perfectly reproducible
ensembles)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from def_ray.config import Config, config_from_dict
from def_ray.data.zarr_store import ZarrStore

__all__ = ["tiny_store", "tiny_config", "tiny_checkpoint", "KNOWN_ANSWER", "known_answer_batch", "train_known_answer"]

KNOWN_ANSWER = (1.5, 0.3, 0.5)  # (A, B, SIG): the known-answer law x = A c + B + SIG z, c and z standard normal


def tiny_store(url: str | Path, *, size: int = 16, hours: int = 20, seed: int = 0,
               storage_options: dict[str, Any] | None = None) -> ZarrStore:
    """Synthetic HRRR-like scenes (def_ray.data.synthetic) of size x size points, hourly, ingested into a store."""
    from def_ray.config import SynthConfig
    from def_ray.data.ingest import ingest_dataset
    from def_ray.data.synthetic import generate_scenes

    ds = generate_scenes(SynthConfig(seed=seed, hours=hours, ny=size, nx=size))
    report = ingest_dataset(ds, str(url), storage_options=storage_options, tile=size, progress=False)
    if report.failed:
        raise RuntimeError(f"tiny store {url}: steps failed {report.failed}")
    return ZarrStore(report.store, storage_options)


def tiny_config(store: str, *, timesteps: int = 10, base_dims: int = 8, **sections: dict[str, Any]) -> Config:
    """A valid Config for a tiny diffusion model on `store`; `sections` update whole sections (e.g. serve={...}).

    Its splits hold a window each on a 20-hour tiny store (data.dt_steps 1 or 2) (tiny_checkpoint takes the training split's statistics).
    """
    raw: dict[str, Any] = {
        "name": "tiny",
        "data": {"store": str(store), "variables": ["refc", "t2m", "cape"], "target_variables": ["refc"],
                 "n_past": 2, "tile": 16, "val_fraction": 0.25, "test_fraction": 0.25, "gap_steps": 0},
        "model": {"kind": "diffusion", "base_dims": base_dims, "channel_mults": [1, 2], "num_res_blocks": 1,
                  "attention_levels": [], "groups": 4, "timesteps": timesteps},
        "forecast": {"members": 6, "lead_hours": 1, "num_actors": 2, "cpus_per_actor": 0.5,
                     "sampler": {"name": "dpmpp", "steps": 2, "member_batch_size": 4}},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw, "tiny_config")


def tiny_checkpoint(path: str | Path, cfg: Config, *, seed: int = 0,
                    normalisation: dict[str, dict[str, float]] | None = None, described: bool = True) -> str:
    """An untrained (seeded) model for `cfg`, saved with save_checkpoint; returns the path.

    Described like a trained model (ModelDescription.of_training on cfg.data: the training split's statistics),
    or with the given `normalisation`; ``described=False`` writes a checkpoint as def_ray wrote them before
    checkpoints carried a description (no statistics).
    """
    import torch

    from def_ray.data.ray_dataset import prepare_windows
    from def_ray.models import build_model
    from def_ray.models.checkpoint import save_checkpoint
    from def_ray.models.description import ModelDescription

    torch.manual_seed(seed)
    layout = ModelDescription.from_config(cfg).layout
    model = build_model(cfg.model, layout.cond_channels, layout.target_channels)
    description = None
    if described:
        description = ModelDescription.of_training(cfg, prepare_windows(cfg.data))
        if normalisation is not None:
            description = replace(description, normalisation=normalisation)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, cfg.dump(), description=description)
    return str(path)


def known_answer_batch(n: int, size: int, generator: Any) -> tuple[Any, Any]:
    """(c, x) of n (1, size, size) fields drawn from the known-answer law with `generator` (c first, then z)."""
    import torch

    a, b, sig = KNOWN_ANSWER
    c = torch.randn(n, 1, size, size, generator=generator)
    return c, a * c + b + sig * torch.randn(n, 1, size, size, generator=generator)


def train_known_answer(model: Any, steps: int, *, batch: int = 32, size: int = 8, lr: float = 3e-3,
                       seed: int = 1) -> Any:
    """`model` (a ConvectionDDPM with one condition and one target channel) fitted to the known-answer law: Adam
    with cosine decay, fresh batches each step from one seeded generator; returned in eval mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        c, x = known_answer_batch(batch, size, g)
        loss = model.training_loss(c, x, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()

