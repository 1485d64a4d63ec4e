"""Typed experiment configuration, validated once at job start.

One YAML file describes an experiment: where data comes from and goes to, the model, training, sampling,
forecasting, serving and tracking.  Every section has defaults, so a config only states what differs.
Unknown keys are errors (a typo must not silently fall back to a default), and messages name the key.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from def_ray.data.lexicon import DEFAULT_CHANNELS, check_variables


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageOptions(_Section):
    """fsspec / s3fs options for an object store. Secrets come from the environment, never from the file."""

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint URL (e.g. MinIO); None = AWS S3")
    anon: bool = Field(False, description="unsigned (anonymous) requests, for public buckets")
    region: str | None = Field(None, description="S3 region name; None = the client's default")

    def to_fsspec(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.anon:
            opts["anon"] = True
        client: dict[str, Any] = {}
        if self.endpoint_url:
            client["endpoint_url"] = self.endpoint_url
        if self.region:
            client["region_name"] = self.region
        if client:
            opts["client_kwargs"] = client
        return opts


class SynthConfig(_Section):
    """Seeded synthetic HRRR-like scenes (def_ray.data.synthetic)."""

    seed: int = Field(0, description="seed of the scenes' random draws (environment and cells)")
    hours: int = Field(24, ge=1, description="number of hourly scenes (hours) written, from start")
    start: datetime = Field(datetime(2024, 6, 1, 12), description="valid time of the first scene (UTC; a time "
                            "with a zone is converted to UTC)")
    ny: int = Field(64, ge=8, description="rows of the crop (grid points of the 3 km HRRR grid)")
    nx: int = Field(64, ge=8, description="columns of the crop (grid points of the 3 km HRRR grid)")
    # offset of the crop inside the full 1059 x 1799 HRRR grid
    y0: int = Field(400, ge=0, description="first row of the crop in the HRRR grid (grid points)")
    x0: int = Field(900, ge=0, description="first column of the crop in the HRRR grid (grid points)")
    out_dir: str = Field("data/synthetic/grib", description="local folder the GRIB2 files are written to, one per "
                         "hour in the archive's layout (hrrr.YYYYMMDD/conus/...)")
    init_rate: float = Field(0.004, ge=0, le=1, description="per grid point per hour probability of a new cell "
                             "where CAPE is high and CIN weak (the logistic factors' ceiling)")

    @field_validator("start")
    @classmethod
    def _naive_utc(cls, v: datetime) -> datetime:
        # GRIB2 times and the scenes' time axis are UTC without a zone
        from datetime import timezone

        return v if v.tzinfo is None else v.astimezone(timezone.utc).replace(tzinfo=None)

    @model_validator(mode="after")
    def _crop_inside_hrrr(self) -> SynthConfig:
        from def_ray.data.grid import HRRR_NX, HRRR_NY

        if self.y0 + self.ny > HRRR_NY or self.x0 + self.nx > HRRR_NX:
            raise ValueError(f"crop y0={self.y0} ny={self.ny} x0={self.x0} nx={self.nx} reaches outside the "
                             f"{HRRR_NY} x {HRRR_NX} HRRR grid")
        return self


class FetchConfig(_Section):
    """HRRR archive access (def_ray.data.fetch)."""

    archive_url: str = Field("s3://noaa-hrrr-bdp-pds", description="root of the HRRR archive (any fsspec URL or "
                             "folder with its hrrr.YYYYMMDD/conus/ layout)")
    storage: StorageOptions = Field(StorageOptions(anon=True), description="object-store options for archive_url "
                                    "(endpoint_url, anon, region; S3 options reach s3:// URLs only)")
    product: Literal["wrfsfcf", "wrfsubhf", "wrfprsf", "wrfnatf"] = Field(
        "wrfsfcf", description="HRRR file type: surface, sub-hourly surface, pressure levels or native levels")
    lead_hour: int = Field(0, ge=0, le=48, description="forecast hour of the files fetched (hours; 0 = analysis)")
    start: datetime | None = Field(None, description="first cycle fetched (UTC, whole hours); must be set to fetch")
    end: datetime | None = Field(None, description="last cycle fetched, inclusive (UTC); must be set to fetch")
    out_dir: str = Field("data/hrrr/grib", description="local folder the GRIB2 files land in (the archive's "
                         "relative layout)")
    retries: int = Field(4, ge=0, description="retries of a request after a transient error (0 = none)")
    backoff_s: float = Field(1.0, ge=0, description="wait before the first retry (seconds), doubled at every retry")
    variables: list[str] = Field(default_factory=lambda: list(DEFAULT_CHANNELS),
                                 description="variables fetched (def_ray.data.lexicon names), byte ranges of "
                                 "their GRIB2 messages only")
    merge_gap_bytes: int = Field(0, ge=0, description="also merge byte ranges this close (bytes; fewer "
                                 "requests, more bytes)")
    max_workers: int = Field(4, ge=1, description="hours downloaded at the same time")

    @field_validator("variables")
    @classmethod
    def _known_fetch_variables(cls, v: list[str]) -> list[str]:
        try:
            check_variables(v)
        except KeyError as err:  # pydantic reports ValueErrors only; UnknownVariableError is a KeyError
            raise ValueError(str(err)) from None
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate variables in {v}")
        return v

    @model_validator(mode="after")
    def _ordered(self) -> FetchConfig:
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ValueError(f"fetch.start {self.start} is after fetch.end {self.end}")
        return self


class MrmsConfig(_Section):
    """MRMS radar frames cropped and coarsened into a store (def_ray.data.mrms), e.g. for real-data evaluation."""

    files: str = Field("../shared/data/mrms/preciprate_20190610/*.grib2", description="glob of the MRMS GRIB2 "
                       "files read (one product)")
    box: tuple[float, float, float, float] = Field(
        (31.5, 34.06, -87.5, -84.94), description="crop (lat_min, lat_max, lon_min, lon_max), degrees north / east")
    factor: int = Field(2, ge=1, description="coarsening factor of the 0.01 degree grid (factor x factor pixels "
                        "averaged into one)")
    min_coverage: float = Field(0.5, ge=0, le=1, description="fraction of a block's pixels that must hold data "
                                "(inside radar coverage); less = NaN")

    @model_validator(mode="after")
    def _box(self) -> MrmsConfig:
        lat0, lat1, lon0, lon1 = self.box
        if not (lat0 < lat1 and lon0 < lon1):
            raise ValueError(f"box {self.box} must be (lat_min, lat_max, lon_min, lon_max) with min < max")
        return self


class DataConfig(_Section):
    """The Zarr store and the windows read from it."""

    store: str = Field("data/zarr/hrrr.zarr", description="the Zarr store of frames (local path or s3:// URL) "
                       "that ingest writes and training, forecasts, serve and verify read")
    storage: StorageOptions = Field(StorageOptions(), description="object-store options for store (endpoint_url, "
                                    "anon, region)")
    variables: list[str] = Field(default_factory=lambda: list(DEFAULT_CHANNELS),
                                 description="input variables of every past frame, in order "
                                 "(def_ray.data.lexicon names; units as in the lexicon)")
    target_variables: list[str] = Field(default_factory=lambda: ["refc"], description="variables forecast (a "
                                        "subset of variables; refc = composite reflectivity, dBZ)")
    n_past: int = Field(4, ge=1, description="past frames the model is conditioned on (dt_steps store steps "
                        "apart, the newest at the init time)")
    dt_steps: int = Field(1, ge=1, description="store time steps between frames of a window (1 = hourly store)")
    tile: int = Field(256, ge=8, description="spatial chunk edge in the Zarr store (grid points)")
    crop: int | None = Field(None, ge=8, description="edge of the random square training crop (grid points); "
                             "None = full frames")
    static_fields: list[Literal["latitude", "longitude"]] = Field(
        default_factory=list, description="fixed fields added to the conditioning as channels (standardised "
        "over the training grid); empty = none")
    crops_per_window: int = Field(1, ge=1, description="training crops cut from each window per epoch")
    val_crop: bool = Field(False, description="validate on crops cut like the training crops (crops_per_window of "
                           "each window, the same ones every epoch) instead of full frames")
    augment: bool = Field(False, description="training windows turned by one of the 8 rotations/flips at random "
                          "(motion and wind vectors turned with them)")
    crop_sampling: Literal["uniform", "rain"] = Field(
        "uniform", description="where training crops are cut: 'uniform' anywhere; 'rain' equally often from each "
        "rain-intensity class of the target frame, never where the first target is missing (outside radar coverage)")
    transforms: dict[str, Literal["none", "log"]] = Field(
        default_factory=dict, description="per-variable transform before normalisation: 'log' = log10(x + 0.1 mm) "
        "for rain (def_ray.data.normalise); unlisted variables are not transformed")
    # splits: fractions of the store's committed time axis, in time order, separated by `gap_steps`
    val_fraction: float = Field(0.15, ge=0, lt=1, description="fraction of the committed time steps in the "
                                "validation split (after train)")
    test_fraction: float = Field(0.15, ge=0, lt=1, description="fraction of the committed time steps in the "
                                 "test split (the last, used by verify)")
    gap_steps: int | None = Field(None, ge=0, description="store time steps left out between splits; None = n_past "
                                  "* dt_steps")

    @field_validator("variables", "target_variables")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        try:
            check_variables(v)
        except KeyError as err:
            raise ValueError(str(err)) from None
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate variables in {v}")
        return v

    @model_validator(mode="after")
    def _targets_in_variables(self) -> DataConfig:
        missing = [v for v in self.target_variables if v not in self.variables]
        if missing:
            raise ValueError(f"target_variables {missing} are not in data.variables {self.variables}")
        stray = [v for v in self.transforms if v not in self.variables]
        if stray:
            raise ValueError(f"transforms name {stray}, which are not in data.variables {self.variables}")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction leave less than 10% of the data to train on")
        return self

    @property
    def gap(self) -> int:
        return self.n_past * self.dt_steps if self.gap_steps is None else self.gap_steps


class ModelConfig(_Section):
    """The network: the UNet backbone and, for diffusion, the number of cosine-schedule steps T."""

    kind: Literal["deterministic", "diffusion"] = Field(
        "diffusion", description="'diffusion' = conditional DDPM drawing ensemble members; 'deterministic' = the "
        "UNet regressing one forecast")
    base_dims: int = Field(64, ge=4, description="channels of the UNet's finest level")
    channel_mults: list[int] = Field(default_factory=lambda: [1, 2, 4], description="channel multiplier of "
                                     "base_dims per UNet level; n levels downsample by 2^(n-1)")
    num_res_blocks: int = Field(2, ge=1, description="residual blocks per UNet level")
    attention_levels: list[int] = Field(default_factory=lambda: [2], description="levels (0 = finest) with attention")
    groups: int = Field(8, ge=1, description="GroupNorm groups (every level's channels must be divisible by it)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout probability inside the residual blocks")
    timesteps: int = Field(200, ge=2, description="diffusion steps T of the cosine schedule")
    patch: int = Field(1, ge=1, description="space-to-depth factor: the UNet works on patch x patch blocks of the "
                       "grid (pixel unshuffle in, pixel shuffle out), which divides its cost by patch^2")
    attention_heads: int = Field(4, ge=1, description="heads of the self-attention at attention_levels")
    eps_output: Literal["preconditioned", "direct"] = Field(
        "preconditioned", description="diffusion network output: eps = sqrt(1-ab) x_t - sqrt(ab) F ('preconditioned',"
        " stable sampling from the cosine schedule's last step) or eps = F ('direct'); see ddpm_convection.py")
    cond_dropout: float = Field(0.0, ge=0, lt=1, description="diffusion training drops the whole conditioning of a "
                                "sample with this probability (DEF: 0.1), so that sampler.guidance can scale it")
    residual: Literal["none", "extrapolation"] = Field(
        "none", description="'extrapolation': the conditioning also holds the targets' newest frame advected one step "
        "along its Lucas-Kanade motion, and the motion; the network learns the residual over that first guess "
        "(def_ray.data.layout)")
    loss_weighting: Literal["eps", "v"] = Field(
        "eps", description="per-timestep weight of MSE(eps_hat, eps): 'eps' uniform (the plain DDPM loss) or 'v' "
        "1/alpha_bar_t (the v-prediction loss; with the preconditioned output, uniform weight on F at every t)")

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        bad = [lvl for lvl in self.attention_levels if not 0 <= lvl < len(self.channel_mults)]
        if bad:
            raise ValueError(f"attention_levels {bad} outside 0..{len(self.channel_mults) - 1} (channel_mults)")
        if any(self.base_dims * m % self.groups for m in self.channel_mults):
            raise ValueError(f"base_dims * channel_mults must be divisible by groups={self.groups}")
        if self.loss_weighting == "v" and self.eps_output != "preconditioned":
            raise ValueError("loss_weighting 'v' needs eps_output 'preconditioned' (with 'direct' its weight "
                             "1/alpha_bar reaches 5e6 at the last step)")
        if any(self.base_dims * self.channel_mults[lvl] % self.attention_heads for lvl in self.attention_levels):
            raise ValueError(f"base_dims * channel_mults at attention_levels must be divisible by "
                             f"attention_heads={self.attention_heads}")
        return self


SamplerName = Literal["ddpm", "ddim", "dpmpp", "dpmpp3m", "unipc", "heun2"]
"""The samplers def_ray.models.diffusion.samplers offers (the config and the Serve schema both accept these)."""


class SamplerConfig(_Section):
    """How ensemble members are drawn from a trained diffusion model."""

    name: SamplerName = Field(
        "unipc", description="sampler: 'ddpm' ancestral (stochastic), 'ddim', 'dpmpp' DPM-Solver++ 2M, 'dpmpp3m' "
        "DPM-Solver++ 3M, 'unipc' UniPC, 'heun2' Heun 2nd order (2 passes a step; the last 1) (the solvers are "
        "deterministic given the initial noise; benchmarks/bench_samplers.py compares them)")
    steps: int | None = Field(10, ge=1, description="denoising steps (network evaluations) per member; None = all "
                                  "T for ddpm, 20 for the others. Default unipc 10 = half the passes of dpmpp 20 at "
                                  "its CRPS (benchmarks/README.md, issue 19)")
    member_batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        10, description="members sampled together in one network batch (memory vs speed; the members do not depend "
        "on it); 'auto': as many as fit in half the free memory of the device that samples them (the GPU's, or the "
        "machine's available memory on the CPU), measured by one member's network pass at sampling time")
    spread_scale: float = Field(1.0, gt=0, description="scales the sampling noise (initial and per-step); 1 = "
                                "faithful, > 1 wider ensemble")
    eta: float = Field(0.0, ge=0, le=1, description="DDIM stochasticity (0 = deterministic); ignored by every other sampler")
    guidance: float = Field(1.0, ge=0, description="classifier-free guidance scale w: eps = eps(no cond) + w (eps(cond) - "
                            "eps(no cond)); 1 = the conditional model, 0 = unconditional, > 1 sharper and narrower "
                            "(needs a model trained with model.cond_dropout > 0)")
    probability_matching: bool = Field(
        False, description="give every generated member frame the value distribution of the newest observed frame "
        "(rank by rank over the forecast grid, at every lead; pysteps' 'cdf' probability matching, as STEPS does): "
        "the network places the rain, the observation sets how much of each amount there is")
    motion_perturbation: float = Field(
        0.0, ge=0, description="scale of each member's own perturbation of the init time's motion (pysteps' "
        "Bowler-Pierce-Seed velocity perturbations, as STEPS draws them: one random vector per member along and "
        "across the motion, growing with lead; 1 = their published parameters, 0 = off). Each generated frame is "
        "moved by it before probability matching, so members differ in where the rain goes as well as in what the "
        "network adds. Needs a model with model.residual: extrapolation (the motion is in its conditioning)")
    tile: int | None = Field(
        None, ge=1, description="None = the network sees the whole frame; else it runs on overlapping tile x tile "
        "windows blended into one prediction at every denoising step (noise and solver state stay whole-frame), so "
        "memory is bounded by the tile: for grids whose activations do not fit (full CONUS). A multiple of the "
        "network's downsampling factor; the training crop is the natural choice. Close to, not equal to, untiled "
        "(GroupNorm and attention see the tile): def_ray.models.diffusion.samplers states the tolerance")
    tile_overlap: int = Field(64, ge=0, description="pixels shared by neighbouring tiles (a multiple of the "
                              "downsampling factor, at most tile/2); each tile's outer quarter of it is discarded and "
                              "the central half blended with a raised cosine. Larger = closer to untiled, more passes")

    @model_validator(mode="after")
    def _tiling(self) -> SamplerConfig:
        if self.tile is not None and 2 * self.tile_overlap > self.tile:
            raise ValueError(f"tile_overlap={self.tile_overlap} must be at most tile/2 ({self.tile // 2})")
        return self


class TrainConfig(_Section):
    """Ray Train: workers, optimiser, checkpoints on storage, fault tolerance."""

    epochs: int = Field(10, ge=1, description="passes over the training windows")
    batch_size: int = Field(1, ge=1, description="windows (crops) per micro-batch on each worker")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step (effective batch = batch_size "
                            "x grad_accum x num_workers)")
    lr: float = Field(2e-4, gt=0, description="peak AdamW learning rate, reached after warmup_steps, then cosine "
                      "decay to 0 at the last step")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(100, ge=0, description="optimiser steps of linear learning-rate warmup")
    grad_clip: float = Field(1.0, gt=0, description="largest global gradient norm (larger gradients are scaled "
                             "down)")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="per-optimiser-step decay of the EMA of the diffusion "
                             "model's weights (validation and export use the EMA)")
    bf16: bool = Field(True, description="bfloat16 autocast of training steps on CUDA (ignored on CPU)")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel DDP ranks)")
    use_gpu: bool = Field(False, description="one GPU per worker (the cluster needs num_workers GPUs)")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved by each Ray Train worker")
    storage_path: str = Field("runs", description="where runs live (local folder or s3:// URL): the run is "
                              "<storage_path>/<run_name>, with its checkpoints")
    storage: StorageOptions = Field(StorageOptions(), description="object-store options for storage_path and "
                                    "for the checkpoints forecast, serve and verify load")
    run_name: str = Field("def-ray", description="name of the run: its folder under storage_path and its MLflow "
                          "run name")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept in the run (those with the lowest "
                                  "val_score)")
    max_failures: int = Field(2, ge=0, description="worker failures Ray Train recovers from by restarting from "
                              "the latest checkpoint (0 = none)")
    val_members: int = Field(4, ge=2, description="members per window of the validation ensemble CRPS (and of "
                             "choose_sampler)")
    val_windows: int = Field(4, ge=1, description="validation windows scored by ensemble CRPS every epoch, all "
                             "workers together (diffusion)")
    export: Literal["best", "last"] = Field(
        "best", description="which checkpoint is exported: best = lowest validation score (a small, noisy ensemble "
        "CRPS for diffusion), last = the final epoch (its EMA weights for diffusion)")
    export_path: str | None = Field(None, description="exported checkpoint as one file; default "
                                                      "<storage_path>/<run>/best.pt")
    promote: bool | None = Field(None, description="move the registry alias 'champion' to this run's registered "
                                 "model: None = only when the model has no champion yet (a new version never "
                                 "replaces the one being served unless asked), true = always, false = never")
    seed: int = Field(0, description="seed of the initial weights, shuffling, training noise and validation draws")
    # validation of the diffusion model: a small ensemble from a fast sampler on the EMA weights
    choose_sampler: bool = Field(False, description="after training, choose forecast.sampler's spread_scale and "
                                 "guidance on validation windows (def_ray.train.sampler_choice) and store them in the "
                                 "checkpoint as its sampler defaults")
    spread_scales: list[float] = Field(default_factory=lambda: [1.0], description="spread_scale candidates of "
                                       "choose_sampler")
    guidance_scales: list[float] = Field(default_factory=lambda: [1.0], description="guidance candidates of "
                                         "choose_sampler (used when model.cond_dropout > 0)")
    choice_windows: int = Field(16, ge=1, description="validation windows (crops) choose_sampler scores each "
                                "candidate on, with val_members members")
    val_sampler: Literal["ddim", "dpmpp"] = Field("dpmpp", description="sampler of the validation ensemble")
    val_steps: int = Field(4, ge=1, description="sampler steps of the validation ensemble")
    log_every_steps: int = Field(10, ge=1, description="optimiser steps between logged training-loss points")
    # TEST HOOK (leave None in real configs): the worker of rank `fail_rank` fails once, right after optimiser step
    # `fail_at_step`, by raising ("raise") or by killing its process ("exit"); a marker file in the run folder
    # keeps the restarted worker from failing again.  Used to test resuming from checkpoints.
    fail_at_step: int | None = Field(None, ge=1, description="TEST HOOK: optimiser step after which one worker "
                                     "fails once; None = never")
    fail_mode: Literal["raise", "exit"] = Field("exit", description="TEST HOOK: the worker raises or kills its "
                                                "process")
    fail_rank: int = Field(0, ge=0, description="TEST HOOK: rank of the worker that fails")


class TrackingConfig(_Section):
    """MLflow tracking (rank 0 only; never fatal)."""

    tracking_uri: str | None = Field(None, description="MLflow tracking server URI; None = MLFLOW_TRACKING_URI or a "
                                                "local ./mlruns store")
    experiment: str = Field("def-ray", description="MLflow experiment the runs go to (created if missing)")
    enabled: bool = Field(True, description="log to MLflow; False = no tracking")
    http_timeout_s: float = Field(5.0, gt=0, description="seconds per MLflow request; an unreachable server is given "
                                  "up quickly")
    http_retries: int = Field(0, ge=0, description="retries of a failed MLflow request (at least 1 while the run "
                              "opens)")
    open_timeout_s: float = Field(30.0, gt=0, description="seconds per request while the driver opens the run (a cold "
                                                          "server answers its first calls slowly)")


class ForecastConfig(_Section):
    """The ensemble forecast batch job and its products."""

    members: int = Field(50, ge=1, description="ensemble size (members drawn per forecast)")
    lead_hours: int = Field(1, ge=1, description="forecast length (hours; a whole number of the model's steps)")
    thresholds: list[float] = Field(default_factory=lambda: [20.0, 35.0, 40.0, 50.0], description="exceedance-"
                                    "probability thresholds, in the target's units (dBZ for refc)")
    sampler: SamplerConfig = SamplerConfig()
    seed: int = Field(0, description="seed of the members' noise (member k's noise comes from (seed, k))")
    num_actors: int = Field(2, ge=1, description="Ray actors sampling chunks of members in parallel")
    out: str = Field("forecasts/forecast.zarr", description="output .zarr, .nc or .grib2 (probabilities and "
                     "mean), local or s3:// (PNG maps go to <name>_maps beside it)")
    storage: StorageOptions = Field(StorageOptions(), description="object-store options for out (endpoint_url, "
                                    "anon, region)")
    quantiles: list[float] = Field(default_factory=lambda: [0.1, 0.5, 0.9], description="member quantiles "
                                   "written (fractions in [0, 1])")
    cpus_per_actor: float = Field(1, gt=0, description="CPUs reserved by each batch-job sampling actor")
    gpus_per_actor: float | None = Field(None, ge=0, description="GPUs reserved by each batch-job sampling actor; "
                                         "None = 1 when the cluster has GPUs, else 0")
    init_time: datetime | None = Field(None, description="init time (UTC); None = the last committed time of the "
                                             "store")
    map_members: int = Field(4, ge=0, description="members drawn on the PNG maps")

    @field_validator("quantiles")
    @classmethod
    def _quantiles_in_unit_interval(cls, v: list[float]) -> list[float]:
        bad = [q for q in v if not 0 <= q <= 1]
        if bad:
            raise ValueError(f"quantiles {bad} outside [0, 1]")
        return v


class ServeConfig(_Section):
    """The Ray Serve HTTP endpoint: replicas, limits, access."""

    host: str = Field("127.0.0.1", description="address the HTTP proxy listens on (127.0.0.1 = this machine only, "
                      "0.0.0.0 = every interface)")
    port: int = Field(8000, ge=1, le=65535, description="TCP port of the HTTP proxy")
    sampler_replicas: int = Field(2, ge=1, description="EnsembleSampler replicas (a request's members are split "
                                  "among them)")
    gpus_per_replica: float = Field(0, ge=0, description="GPUs reserved by each EnsembleSampler replica "
                                    "(fractions share one; 0 = CPU)")
    max_members: int = Field(200, ge=1, description="largest ensemble a request may ask for")
    max_steps: int = Field(1000, ge=1, description="most sampler steps a request may ask for (also capped by the "
                           "model's T)")
    max_ongoing_requests: int = Field(4, ge=1, description="requests each sampler replica works on at once")
    max_queued_requests: int = Field(8, ge=0, description="requests waiting per sampler replica; beyond "
                                     "replicas x (ongoing + queued) the app answers 503")
    request_timeout_s: float = Field(120, gt=0, description="seconds a request may take from its receipt "
                                     "(waiting included); then 504 and its sampling is cancelled")
    api_key_env: str = Field("DEF_RAY_API_KEY", description="environment variable holding the API key; unset "
                             "or empty = no key needed")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest request body (bytes); larger "
                                "answers 413")
    cpus_per_replica: float = Field(1, gt=0, description="CPUs reserved by each EnsembleSampler replica")
    ingress_cpus: float = Field(0.5, ge=0, description="CPUs reserved by the ForecastIngress replica")
    route_prefix: str = Field("/", description="URL path prefix the app is served under")
    max_lead_hours: int = Field(48, ge=1, description="longest lead a request may ask for (hours)")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="seconds a sampler replica holds a new sampling "
                                        "job open for other calls of the same forecast (same conditioning, lead, "
                                        "sampler options, seed) to join one shared pass")
    sampler_max_replicas: int | None = Field(None, ge=1, description="autoscale the EnsembleSampler deployment "
                                             "between 1 and this many replicas, starting at sampler_replicas; "
                                             "None = a fixed sampler_replicas")
    target_ongoing_requests: float = Field(2, gt=0, description="sampler calls per replica the autoscaler aims "
                                           "at (with sampler_max_replicas)")


class VerifyConfig(_Section):
    """Which cases and scores `def-ray verify` computes."""

    split: Literal["train", "val", "test"] = Field("test", description="data split whose init times are "
                                                   "verified")
    max_cases: int = Field(24, ge=1, description="most init times verified (evenly thinned over the split)")
    members: int | None = Field(None, ge=2, description="ensemble size of the verified model and STEPS "
                                               "forecasts; None = forecast.members")
    lead_steps: int = Field(1, ge=1, description="leads verified: 1..lead_steps steps of data.dt_steps store "
                            "steps (hours for an hourly store)")
    thresholds: list[float] | None = Field(None, description="event thresholds of the probability scores, in the "
                                           "target's units (dBZ for refc); None = forecast.thresholds")
    scales: list[int] = Field(default_factory=lambda: [1, 3, 9, 17], description="FSS neighbourhood edges "
                              "(grid points)")
    baselines: list[Literal["persistence", "extrapolation", "steps"]] = Field(
        default_factory=lambda: ["persistence", "extrapolation", "steps"], description="reference forecasts "
        "scored beside the models: persistence, Lucas-Kanade advection, pysteps STEPS ensemble")
    rain_threshold: float | None = Field(None, description="pysteps rain/no-rain threshold; None = 10 dBZ or 0.1 mm/h")
    km_per_pixel: float = Field(3.0, gt=0, description="grid spacing (km): STEPS' scales, FSS and spectrum "
                                "axes in km")
    tile: int | None = Field(None, ge=8, description="verify on every tile x tile square (grid points) that is inside "
                             "radar coverage over the whole window and rainy at the init time (None = whole grid)")
    min_rain_fraction: float = Field(0.01, ge=0, le=1, description="a tile is rainy when this fraction of it is at or "
                                     "above 1 mm (rain) or 20 dBZ at the init time")
    out: str = Field("verification", description="folder the verification report (scores, plots) is written to")


class Config(_Section):
    name: str = Field("def-ray", description="experiment name, shown in map and verification titles")
    synth: SynthConfig = SynthConfig()
    fetch: FetchConfig = FetchConfig()
    mrms: MrmsConfig = MrmsConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()
    forecast: ForecastConfig = ForecastConfig()
    serve: ServeConfig = ServeConfig()
    verify: VerifyConfig = VerifyConfig()

    @model_validator(mode="after")
    def _cross_section(self) -> Config:
        if self.data.crop is not None:
            factor = 2 ** (len(self.model.channel_mults) - 1) * self.model.patch
            if self.data.crop % factor:
                raise ValueError(f"data.crop={self.data.crop} must be a multiple of {factor} (model downsampling)")
        steps = self.forecast.sampler.steps
        if steps is not None and steps > self.model.timesteps:
            raise ValueError(f"forecast.sampler.steps={steps} exceeds model.timesteps={self.model.timesteps}")
        return self

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _format_error(err: ValidationError, source: str) -> str:
    """One line naming the source and every offending key: the message a command prints before exiting 2."""
    problems = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        problems.append(f"{key}: {one_line(msg)}")
    return f"invalid config {source}: " + "; ".join(problems)


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Load and validate a YAML config; `overrides` maps dotted keys ("train.epochs") to values.

    Every way a file can be unusable (missing, a folder, unreadable, not UTF-8, not YAML, not a mapping, an
    unknown key or a bad value) is a one-line ConfigError naming the file.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {path} is a folder; expected a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"config {path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                          f"{err.start}); save it as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"config {path} cannot be read: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level, not a {type(raw).__name__}")
    return config_from_dict(apply_overrides(raw, overrides or {}), str(path))


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own text spans several lines)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """["train.epochs=3", "data.crop=null"] -> {"train.epochs": 3, "data.crop": None} (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {pair!r} is not KEY=VALUE with a dotted KEY (e.g. train.epochs=3)")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {pair!r}: the value {value!r} is not valid YAML ({_yaml_problem(err)}); "
                              "quote it, e.g. -o 'name=\"a [b\"'") from None
    return out


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys ("train.epochs") in a raw config mapping, creating sections as needed; returns `raw`."""
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for depth, p in enumerate(parents):
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                where = ".".join(parents[:depth + 1])
                raise ConfigError(f"override {dotted}: {where} is a {type(node).__name__}, not a section")
        node[leaf] = value
    return raw


def describe(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Markdown rows `key | default | meaning` for every config key (the reference in docs/config_keys.md)."""
    rows = []
    for name, f in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, _Section) and ann is not StorageOptions:
            doc = (ann.__doc__ or "").strip().splitlines()
            rows.append(f"| **{key}** | | {doc[0] if doc else ''} |")
            rows += describe(ann, key + ".")
            continue
        default = f.default_factory() if f.default_factory is not None else f.default
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json", exclude_defaults=True) or "{}"
        rows.append(f"| `{key}` | `{default}` | {f.description or ''} |")
    return rows


# -- how commands report bad input and failures (every `def-ray` command and jobs/*.py) --------------------------


class CommandParser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line (exit 2), not the usage text and then the error: a log or a
    terminal shows what was wrong, and --help shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: object) -> str:
    """`text` with its line breaks and runs of blanks made single spaces."""
    return " ".join(str(text).split())


def root_cause(err: BaseException) -> BaseException:
    """`err`, or for a Ray task error the exception raised in the task (without the remote traceback)."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) and cause is not err else err


def error_message(err: BaseException) -> str:
    """The one-line message of `err` (of its cause for a Ray task error)."""
    err = root_cause(err)
    if type(err).__str__ is KeyError.__str__ and isinstance(err, KeyError) and len(err.args) == 1:
        return one_line(err.args[0])  # KeyError's str() quotes its message
    return one_line(err) or type(err).__name__


def run_command(prog: str, work: Callable[[], int],
                bad_input: tuple[type[BaseException], ...] | Callable[[], tuple[type[BaseException], ...]] = ()) -> int:
    """Run a command's `work`: bad input (ConfigError and `bad_input`, or the classes it returns) prints one line and
    returns 2, any other failure one line naming its type and returns 1, Ctrl-C returns 130; never a traceback,
    unless DEF_RAY_DEBUG=1 asks for it (the exception is raised again)."""
    try:
        return work()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("DEF_RAY_DEBUG") == "1":
            raise
        kinds = bad_input if isinstance(bad_input, tuple) else bad_input()
        if isinstance(err, (ConfigError, *kinds)):
            print(f"{prog}: {error_message(err)}", file=sys.stderr)
            return 2
        print(f"{prog}: failed: {type(root_cause(err)).__name__}: {error_message(err)} (DEF_RAY_DEBUG=1 shows the "
              "traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    print("| key | default | meaning |\n|---|---|---|")
    print("\n".join(describe()))
