"""The training loop each Ray Train worker runs, for both model kinds.

Per worker: DDP through `prepare_model` (gloo on CPU, NCCL on GPU), AdamW with linear warm-up and cosine decay,
gradient accumulation (`train.grad_accum` micro-batches per optimiser step, DDP gradient sync only on the last),
gradient clipping, bf16 autocast on GPU, and for the diffusion model an EMA of the weights.  After every epoch the
workers validate (loss; for diffusion also CRPS and spread/skill of a small ensemble drawn with a fast sampler from
the EMA weights) and report the metrics together with a checkpoint, so `Result.metrics` is filled and the best
checkpoints can be kept by score.  A checkpoint holds everything (see checkpointing.py), so a restarted worker
group resumes at the first step after it.

Metrics are in normalised units (the target divided by its standard deviation): comparable across variables.
`val_score` is what checkpoints are ranked by (lower is better): the CRPS for diffusion, the MSE otherwise.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from def_ray.config import Config, config_from_dict
from def_ray.train.checkpointing import TrainState, load_state, rng_state, save_state, set_rng_state
from def_ray.train.tracking import Tracker

__all__ = ["train_loop_per_worker", "LossModule", "ensemble_scores", "lr_schedule", "ema_avg_fn"]


class LossModule(nn.Module):
    """Puts `training_loss` behind `forward`, so DDP's gradient synchronisation sees every step."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, cond: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.model.training_loss(cond, target)


def lr_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    from diffusers.optimization import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=min(warmup_steps, total_steps),
                                           num_training_steps=max(total_steps, 1))


def ensemble_scores(ens: np.ndarray, obs: np.ndarray) -> dict[str, float]:
    """Sums over pixels of CRPS, ensemble variance and squared error of the mean; ens (M, ...), obs (...)."""
    import scoringrules as sr

    crps = sr.crps_ensemble(obs, np.moveaxis(ens, 0, -1), backend="numpy")
    return {"crps_sum": float(np.sum(crps)), "var_sum": float(np.sum(ens.var(axis=0, ddof=1))),
            "se_sum": float(np.sum((ens.mean(axis=0) - obs) ** 2)), "pixels": float(obs.size)}


def ema_avg_fn(decay: float):
    """EMA update for AveragedModel with the usual warm-up: decay_n = min(decay, (1 + n) / (10 + n)), so the
    average follows the weights early on instead of staying at the random initialisation for ~1/(1-decay) steps."""

    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(ema_params, params, 1.0 - d)

    return update


def _all_reduce(values: dict[str, float], device: torch.device) -> dict[str, float]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def _all_gather(obj: Any) -> list[Any]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class _FailHook:
    """TEST HOOK train.fail_at_step: fail once (a marker file in the run folder records that it happened)."""

    REGISTER_WAIT_S = 5.0

    def __init__(self, cfg: Config, rank: int, run_url: str | None, storage_options: dict[str, Any]):
        self.step = cfg.train.fail_at_step if rank == cfg.train.fail_rank else None
        self.mode, self.run_url, self.opts = cfg.train.fail_mode, run_url, storage_options

    def __call__(self, global_step: int) -> None:
        if self.step is None or global_step != self.step or self.run_url is None:
            return
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.run_url, **self.opts)
        marker = f"{root}/.fail_injected_step{global_step}"
        if fs.exists(marker):
            return
        fs.makedirs(root, exist_ok=True)
        fs.pipe_file(marker, b"1")
        print(f"[def-ray] TEST HOOK: failing at optimiser step {global_step} ({self.mode})", flush=True)
        # Ray Train registers a reported checkpoint when its controller next polls the workers; a worker that dies
        # within that interval of a report loses it (seen in CI: the run restarted from scratch). Wait past it, so
        # the test checks resuming from the last checkpoint, not the race.
        time.sleep(self.REGISTER_WAIT_S)
        if self.mode == "exit":
            os._exit(1)
        raise RuntimeError(f"train.fail_at_step={global_step}: injected failure")


def _batches(shard, batch_size: int, device: torch.device, drop_last: bool,
             shuffle_seed: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of a dataset shard; with `shuffle_seed`, a local buffer mixes the windows of different read blocks
    (each block holds windows close in time).  The columns are float32 and int64 already: no dtype conversion."""
    shuffle = {} if shuffle_seed is None else {"local_shuffle_buffer_size": max(4 * batch_size, 16),
                                                "local_shuffle_seed": shuffle_seed}
    yield from shard.iter_torch_batches(batch_size=batch_size, drop_last=drop_last, device=device, **shuffle)


def _validate(cfg: Config, model: nn.Module, shard, device: torch.device, rank: int, world: int,
              epoch: int) -> tuple[dict[str, float], dict[str, np.ndarray] | None]:
    """Validation metrics (all workers together) and, on rank 0, one sample (target, forecast) for a map."""
    diffusion = model.kind == "diffusion"
    crps_windows = math.ceil(cfg.train.val_windows / world) if diffusion else 0
    sums = {"loss_sum": 0.0, "n": 0.0, "crps_sum": 0.0, "var_sum": 0.0, "se_sum": 0.0, "pixels": 0.0}
    sample = None
    seen = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for b, batch in enumerate(_batches(shard, max(cfg.train.batch_size, 4), device, drop_last=False)):
            cond, target = batch["cond"], batch["target"]
            # a fixed generator per batch: the noise of the validation loss is the same every epoch
            gen = torch.Generator(device=device).manual_seed(cfg.train.seed * 7919 + rank * 104729 + b)
            loss = model.training_loss(cond, target, generator=gen)
            sums["loss_sum"] += float(loss) * cond.shape[0]
            sums["n"] += cond.shape[0]
            for i in range(cond.shape[0]):
                if seen >= crps_windows and not (rank == 0 and sample is None):
                    break
                if diffusion and seen < crps_windows:
                    ens = model.sample(cond[i], members=cfg.train.val_members, sampler=cfg.train.val_sampler,
                                       steps=min(cfg.train.val_steps, cfg.model.timesteps),
                                       seed=cfg.train.seed + 1000 * epoch + seen,
                                       member_batch_size=cfg.train.val_members)
                    ens_np, obs = ens.float().cpu().numpy(), target[i].float().cpu().numpy()
                    for k, v in ensemble_scores(ens_np, obs).items():
                        sums[k] += v
                    if rank == 0 and sample is None:
                        sample = {"target": obs[0], "forecast": ens_np.mean(axis=0)[0], "member": ens_np[0, 0]}
                    seen += 1
                elif rank == 0 and sample is None:
                    pred = model.predict(cond[i:i + 1])[0].float().cpu().numpy()
                    sample = {"target": target[i, 0].float().cpu().numpy(), "forecast": pred[0]}
    model.train(was_training)
    tot = _all_reduce(sums, device)
    out = {"val_loss": tot["loss_sum"] / max(tot["n"], 1)}
    if diffusion and tot["pixels"] > 0:
        m = cfg.train.val_members
        spread = math.sqrt(tot["var_sum"] / tot["pixels"])
        rmse = math.sqrt(tot["se_sum"] / tot["pixels"])
        out.update(val_crps=tot["crps_sum"] / tot["pixels"], val_spread=spread, val_rmse=rmse,
                   # ratio ~1 for a calibrated ensemble; sqrt((M+1)/M) corrects for the finite ensemble
                   val_spread_skill=math.sqrt((m + 1) / m) * spread / rmse if rmse > 0 else float("nan"))
        out["val_score"] = out["val_crps"]
    else:
        out["val_rmse"] = math.sqrt(out["val_loss"])
        out["val_score"] = out["val_loss"]
    return out, sample


def _sample_png(sample: dict[str, np.ndarray], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sample)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), constrained_layout=True)
    vmin = min(float(np.min(a)) for a in sample.values())
    vmax = max(float(np.max(a)) for a in sample.values())
    for ax, name in zip(np.atleast_1d(axes), names):
        im = ax.imshow(sample[name], origin="lower", vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.8, label="normalised target")
    fig.suptitle(title)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def train_loop_per_worker(lc: dict[str, Any]) -> None:
    """Ray Train entry point; `lc` is built by def_ray.train.trainer (config dump, channel counts, steps, run ids)."""
    import ray.train
    import ray.train.torch
    from torch.optim.swa_utils import AveragedModel

    from def_ray.models import build_model

    cfg = config_from_dict(lc["config"], "train loop config")
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()

    torch.manual_seed(tc.seed)  # identical initial weights on every rank (DDP broadcasts rank 0's anyway)
    model = build_model(cfg.model, lc["cond_channels"], lc["target_channels"])
    wrapped = ray.train.torch.prepare_model(LossModule(model))  # moves `model` to the device, wraps DDP
    ema = AveragedModel(model, multi_avg_fn=ema_avg_fn(tc.ema_decay)) if model.kind == "diffusion" else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = int(lc["steps_per_epoch"])
    scheduler = lr_schedule(optimizer, tc.warmup_steps, steps_per_epoch * tc.epochs)

    state = TrainState(config=lc["config"], mlflow_run_id=lc.get("mlflow_run_id"))
    torch.manual_seed(tc.seed * 1000 + rank + 1)  # per-rank noise / timestep draws
    np.random.seed((tc.seed * 1000 + rank + 1) % 2**32)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_state(d)
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        if ema is not None and state.ema is not None:
            ema.module.load_state_dict(state.ema)
            ema.n_averaged.fill_(int(state.metrics.get("ema_n_averaged", state.global_step)))
        if rank < len(state.rng):
            set_rng_state(state.rng[rank])
        state.mlflow_run_id = state.mlflow_run_id or lc.get("mlflow_run_id")
        state.restored_from.append(state.epoch)
        if rank == 0:
            print(f"[def-ray] resumed from epoch {state.epoch} (optimiser step {state.global_step})", flush=True)

    tracker = Tracker(lc.get("tracking_uri") if rank == 0 else None, state.mlflow_run_id,
                      timeout_s=cfg.tracking.http_timeout_s, retries=cfg.tracking.http_retries)
    fail = _FailHook(cfg, rank, lc.get("run_url"), lc.get("storage_options") or {})
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    use_amp = tc.bf16 and device.type == "cuda"
    micro_per_epoch = steps_per_epoch * tc.grad_accum
    no_sync = getattr(wrapped, "no_sync", None)

    for epoch in range(state.epoch + 1, tc.epochs):
        t0 = time.perf_counter()
        model.train()
        micro, loss_acc, loss_log, n_log, loss_epoch = 0, 0.0, 0.0, 0, 0.0
        optimizer.zero_grad(set_to_none=True)
        for batch in _batches(train_shard, tc.batch_size, device, drop_last=True,
                              shuffle_seed=(tc.seed * 100003 + epoch) * world + rank):
            if micro >= micro_per_epoch:
                continue  # the few windows that do not fill a whole optimiser step (drained, not trained on)
            last = (micro + 1) % tc.grad_accum == 0
            # DDP all-reduces gradients only on the last micro-batch of an optimiser step
            with contextlib.nullcontext() if last or no_sync is None else no_sync():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    loss = wrapped(batch["cond"], batch["target"])
                (loss / tc.grad_accum).backward()
            loss_acc += float(loss.detach()) / tc.grad_accum
            micro += 1
            if not last:
                continue
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update_parameters(model)
            state.global_step += 1
            loss_log += loss_acc
            loss_epoch += loss_acc
            n_log += 1
            loss_acc = 0.0
            if rank == 0 and state.global_step % tc.log_every_steps == 0:
                tracker.log_metrics({"train_loss": loss_log / n_log, "lr": scheduler.get_last_lr()[0]},
                                    state.global_step)
                loss_log, n_log = 0.0, 0
            fail(state.global_step)
        if micro != micro_per_epoch:
            raise RuntimeError(f"worker {rank} got {micro} batches in epoch {epoch}, expected {micro_per_epoch}: "
                               "the data shards are not equal")
        train_time = time.perf_counter() - t0
        eval_model = ema.module if ema is not None else model
        val, sample = _validate(cfg, eval_model, val_shard, device, rank, world, epoch)
        metrics = {"epoch": epoch, "global_step": state.global_step, "epoch_time_s": train_time,
                   "epoch_train_loss": loss_epoch / max(steps_per_epoch, 1),
                   "steps_per_s": steps_per_epoch / train_time if train_time > 0 else 0.0, **val}
        if ema is not None:
            metrics["ema_n_averaged"] = int(ema.n_averaged)
        rngs = _all_gather(rng_state())
        state.epoch = epoch
        if rank == 0:
            tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, state.global_step)
            with tempfile.TemporaryDirectory() as d:
                state.model = {k: v.detach().cpu() for k, v in model.state_dict().items()}
                state.ema = None if ema is None else {k: v.detach().cpu() for k, v in ema.module.state_dict().items()}
                state.optimizer = optimizer.state_dict()
                state.scheduler = scheduler.state_dict()
                state.rng = rngs
                state.metrics = dict(metrics)
                save_state(d, state)
                if sample is not None and epoch == tc.epochs - 1 and tracker.enabled:
                    tracker.log_artifact(_sample_png(sample, Path(d) / f"sample_epoch{epoch:03d}.png",
                                                     f"{cfg.name} epoch {epoch + 1}"), "maps")
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                                 checkpoint_dir_name=f"epoch_{epoch:04d}")
        else:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=f"epoch_{epoch:04d}")

