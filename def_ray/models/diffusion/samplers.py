"""Ensemble sampling: a pure function of (denoiser, schedule, condition, members, sampler, steps, seed).

Reproducibility: member k (global index ``member_offset + k``) owns a CPU ``torch.Generator`` seeded from
(seed, k) and draws *all* its noise from it, in a fixed order (initial noise, then one draw per stochastic step).
Noise is drawn on the CPU and then moved, so a member's noise is the same on any device and for any member batch
size or split of members across workers. The network's output for one member must not depend on the batch
either: sampling runs inside ``unet.batch_invariant`` (on the CPU: batch-independent kernels; see unet.py), and
tests/models/diffusion/test_samplers.py checks that members are bit-identical for member batch sizes 1, 7 and
50. This costs some speed on the CPU (benchmarks/bench_sampling.py).
On CUDA, cuDNN also chooses kernels by shape: a member's noise is still the same, but its values can differ in
the last bits between member batch sizes (not checked: no GPU in CI).

Spread control (``spread_scale`` = s, default 1 = the faithful sampler): the initial noise is x_T = s * z_T and
every stochastic update becomes x_prev = mean(x_t) + s * sigma_t * z_t ("ddpm", and "ddim" with eta > 0).
Deterministic solvers ("dpmpp", "dpmpp3m", "unipc", "heun2", "ddim" with eta = 0) have no per-step noise, so for
them only x_T is scaled.
s > 1 widens the ensemble, s < 1 narrows it; calibrate s on validation data.

Higher-order solvers (issue 19 item 2; benchmarks/bench_samplers.py compares them at 4-20 steps): "dpmpp" is
DPM-Solver++ 2M (multistep, solver_order=2); "dpmpp3m" the same with solver_order=3; "unipc" UniPC (Zhao et al.
2023: a multistep predictor plus a corrector that reuses the next step's network output, so still one network pass
per step; bh2, solver_order=2); "heun2" is the EDM / Karras et al. (2022) Heun 2nd-order step in sigma space on the
model's own discrete noise levels (diffusers' HeunDiscreteScheduler, "trailing" spacing so every network call is at
a trained integer timestep): two passes per step but the last (2 x steps - 1). All take the network's epsilon
prediction on the training betas unchanged. Heun fits that cleanly but does badly at few steps here: the cosine
schedule's first noise level is sigma_max = sqrt(1 / alpha_bar_(T-1) - 1) ~ 4000 (betas clipped at 0.999), and
Heun's trapezoid in linear sigma over the first jump (4000 -> ~3 at 10 steps) is far off; EDM avoids it with
Karras-spaced sigmas (use_karras_sigmas) and sigma_max = 80, which put the network at fractional timesteps it was
never trained on (its timestep is a long integer). Measured on the known-answer problem (benchmarks/README.md): at
19 passes CRPS 1.4x (exact denoiser) and 9x (tiny trained model) dpmpp 20's; within 1 % only at 39 passes with the
exact denoiser. Offered for comparison, not recommended. EDM's own schedulers (EDMEuler / EDMDPMSolverMultistep)
expect EDM's preconditioned network (c_skip / c_out / c_noise = log(sigma) / 4), not this model's epsilon, so they
are not offered. SamplerConfig's default is "unipc" with 10 steps: the CRPS of "dpmpp" 20 steps (the previous
default) within 0.2 % with half the passes (tests/models/diffusion/test_higher_order_samplers.py checks it on a tiny
trained model).

Tiled sampling (``tile`` = T, ``tile_overlap`` = O; off by default): for grids whose activations do not fit in
memory, only the *network call* is tiled; the noise, the solver state x_t and the DPM-Solver history stay whole-frame.
At every denoising step the denoiser runs on overlapping T x T tiles of (x_t, cond) and the tiles' predictions are
blended with smooth separable weights into one whole-frame prediction (MultiDiffusion, Bar-Tal et al. 2023), so the
solver takes one step of one coherent field: no seams, and the peak memory of the network is that of a T x T frame
(times the member batch). Along each axis a tile is weighted 0 over the outer quarter of every overlap it shares
with a neighbour, rises as a raised cosine (sin^2) over the central half and is 1 elsewhere; neighbours' ramps are
complementary and the weights are normalised, so they sum to exactly 1 at every pixel. T and O must be multiples of
the network's downsampling factor (2**(levels - 1) x patch), so every tile sits on the frame's downsampling grid.

How close tiled is to untiled (tests/models/diffusion/test_tiled_sampling.py): a pixel's prediction from a tile
equals the whole-frame one when no part of the network that reaches it sees the tile's edge. For convolutions that
holds when the pixel is at least the receptive radius r from an interior tile edge; the blend keeps only pixels at
least O/4 from one, so a purely convolutional network with r <= O/4 gives the untiled result up to float rounding
(tested: 1e-5; with r > O/4 it does not). The UNet is not purely convolutional: GroupNorm normalises with statistics
over the tile, not the frame, and self-attention attends over the tile's pixels only (its reach is the whole frame,
so no overlap short of the frame covers it): every pixel of a tile differs a little whatever the overlap; the
difference is small, not zero, and shrinks as the tile grows toward the frame. Its theoretical receptive radius is
also wide (about 31 pixels for the tests' 2-level UNet, about 205 for configs/diffusion_4090.yaml's 4 levels x 2
blocks), though the effective one is much narrower. Stated tolerance, on a grid where both fit (the tiny UNet, 64 x
64 frame, 32-pixel tiles, overlap 16, 6 members, 4 DPM-Solver++ steps): the RMS difference between tiled and untiled
members is below 0.2 x the ensemble spread (the RMS member-to-member standard deviation; measured 0.07-0.13 over two
initialisations; 0.07 with 48-pixel tiles on 96 x 96, 8 members, 6 steps), i.e. tiling moves a member much less than
the forecast uncertainty does; and there is no seam: the difference field's gradient across the tile boundaries
stays within 2x its median inside the tiles (measured 1.3-1.6: the change from one tile's small error to the next is
spread over the ramp), where hard-cut tiles (overlap 0) reach 3-12. A tile that covers the grid is exactly the
untiled sampler (bit for bit); tiling off is the untiled code path unchanged. Members stay bit-identical across
member batch sizes: tiles are visited in a fixed order and each tile's network call is batch-invariant. A network
trained on T x T crops has only ever normalised and attended over T x T crops: the training crop is the natural
tile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

import numpy as np
import torch

from diffusers import DPMSolverMultistepScheduler, HeunDiscreteScheduler, UniPCMultistepScheduler

from def_ray.config import SamplerName
from def_ray.models.diffusion.schedule import SAMPLERS, sampling_scheduler, training_scheduler
from def_ray.models.memory import members_that_fit
from def_ray.models.unet import batch_invariant

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(x_t (b, C_t, H, W), timestep (0-d long tensor), cond (b, C_cond, H, W)) -> predicted noise (b, C_t, H, W)."""

DEFAULT_FAST_STEPS = 20

SAMPLER_NAMES: tuple[str, ...] = get_args(SamplerName)
"""Every name ``sample_ensemble`` takes (the config's list): schedule.SAMPLERS and the higher-order solvers built
here."""
HIGHER_ORDER_SAMPLERS: tuple[str, ...] = tuple(n for n in SAMPLER_NAMES if n not in SAMPLERS)
_SOLVERS = ("dpmpp", *HIGHER_ORDER_SAMPLERS)  # deterministic given x_T: no per-step noise, ignore eta


def solver_scheduler(name: str, timesteps: int) -> Any:
    """A fresh (stateful) scheduler for `name` on the training betas: schedule.sampling_scheduler's names, and the
    higher-order solvers (module docstring)."""
    if name in SAMPLERS:
        return sampling_scheduler(name, timesteps)
    common = dict(num_train_timesteps=timesteps, trained_betas=training_scheduler(timesteps).betas.numpy(),
                  prediction_type="epsilon")
    if name == "dpmpp3m":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=3,
                                           lower_order_final=True)
    if name == "unipc":
        return UniPCMultistepScheduler(**common, solver_order=2, solver_type="bh2", predict_x0=True,
                                       lower_order_final=True)
    if name == "heun2":
        return HeunDiscreteScheduler(**common, timestep_spacing="trailing")
    raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLER_NAMES}")


def network_passes(sampler: str, steps: int) -> int:
    """Network evaluations per member of `steps` steps of `sampler` (x2 with guidance != 1): steps, but Heun's
    2 x steps - 1."""
    return 2 * steps - 1 if sampler == "heun2" else steps


def _seed_int(*keys: int) -> int:
    for k in keys:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0:
            raise ValueError(f"seeds and member indices must be non-negative integers, got {keys}")
    hi, lo = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return ((int(hi) << 32) | int(lo)) & (2**63 - 1)


def member_generator(seed: int, member: int) -> torch.Generator:
    """The CPU generator of global member ``member`` of a forecast seeded with ``seed``."""
    return torch.Generator(device="cpu").manual_seed(_seed_int(seed, member))


def perturbation_seed(seed: int, member: int) -> int:
    """The 32-bit seed of global member ``member``'s motion perturbation (independent of its noise stream)."""
    return _seed_int(seed, member, 0xB05) & (2**32 - 1)


def lead_seed(seed: int, lead: int) -> int:
    """Seed of lead step ``lead`` of a rollout: lead 0 uses ``seed`` itself, later leads independent streams."""
    return seed if lead == 0 else _seed_int(seed, lead, 0x1EAD)


def resolve_steps(sampler: str, steps: int | None, timesteps: int) -> int:
    """None -> all T steps for "ddpm", DEFAULT_FAST_STEPS for the fast samplers; checks 1 <= steps <= T."""
    if sampler not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLER_NAMES}")
    if steps is None:
        steps = timesteps if sampler == "ddpm" else min(DEFAULT_FAST_STEPS, timesteps)
    if not 1 <= steps <= timesteps:
        raise ValueError(f"sampler steps={steps} must be in 1..{timesteps} (the model's diffusion timesteps)")
    return steps


def sampler_kwargs(sampler_cfg: Any) -> dict[str, Any]:
    """Keyword arguments for ``rollout`` from a ``SamplerConfig`` (all but ``probability_matching`` and
    ``motion_perturbation``, which rollout applies itself, are ``ConvectionDDPM.sample``'s)."""
    return dict(sampler=sampler_cfg.name, steps=sampler_cfg.steps, member_batch_size=sampler_cfg.member_batch_size,
                spread_scale=sampler_cfg.spread_scale, eta=sampler_cfg.eta, guidance=sampler_cfg.guidance,
                probability_matching=sampler_cfg.probability_matching,
                motion_perturbation=sampler_cfg.motion_perturbation,
                tile=sampler_cfg.tile, tile_overlap=sampler_cfg.tile_overlap)


# -- tiled network calls ------------------------------------------------------------------------------------------

def downsampling_factor(denoiser: Any) -> int:
    """2**(levels - 1) x patch of the UNet inside `denoiser` (``.net`` or the denoiser itself); 1 if none."""
    net = getattr(denoiser, "net", denoiser)
    levels = getattr(net, "levels", None)
    return 2 ** (int(levels) - 1) * int(getattr(net, "patch", 1)) if levels else 1


def check_tiling(tile: int, overlap: int, factor: int = 1) -> None:
    """Refuse a tiling the blend cannot use: tile >= 1, 0 <= 2 x overlap <= tile, both multiples of `factor`."""
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
        raise ValueError(f"tile={tile!r} must be a whole number of pixels >= 1")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or overlap < 0 or 2 * overlap > tile:
        raise ValueError(f"tile_overlap={overlap!r} must be in 0..tile/2 ({tile // 2})")
    if tile % factor or overlap % factor:
        raise ValueError(f"tile={tile} and tile_overlap={overlap} must be multiples of {factor} (the network's "
                         "downsampling factor), so every tile lies on the frame's downsampling grid")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of the tiles along an axis of `length` pixels: stride tile - overlap, the last one flush with the
    end (it overlaps its neighbour by more); one tile when the axis fits in a tile."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    return list(range(0, length - tile, stride)) + [length - tile]


def _ramp(n: int, overlap: int) -> np.ndarray:
    """Weight of the first `n` pixels of a tile after an interior edge: 0 over the outer quarter of the overlap,
    sin^2 over its central half, 1 beyond; ramp(k) + ramp(overlap - 1 - k) = 1 (complementary neighbours)."""
    margin = overlap // 4
    width = overlap - 2 * margin
    k = np.arange(n, dtype=np.float64)
    w = np.ones(n, dtype=np.float64)
    if width > 0:
        w = np.sin(0.5 * np.pi * np.clip((k - margin + 0.5) / width, 0.0, 1.0)) ** 2
        w[k < margin] = 0.0
        w[k >= margin + width] = 1.0
    return w


def axis_weights(length: int, tile: int, overlap: int) -> list[tuple[slice, torch.Tensor]]:
    """(span, weights) of each tile along one axis; the weights of all tiles sum to 1 at every pixel."""
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    raw = []
    for s in starts:
        w = np.ones(size, dtype=np.float64)
        if s > 0:  # an interior leading edge
            w *= _ramp(size, overlap)
        if s + size < length:  # an interior trailing edge
            w *= _ramp(size, overlap)[::-1]
        raw.append(w)
    total = np.zeros(length, dtype=np.float64)
    for s, w in zip(starts, raw):
        total[s:s + size] += w
    if not (total > 0).all():  # cannot happen for a valid tiling; a guard, not a code path
        raise AssertionError(f"tile weights leave pixels uncovered (length={length}, tile={tile}, overlap={overlap})")
    return [(slice(s, s + size), torch.from_numpy(w / total[s:s + size]).float()) for s, w in zip(starts, raw)]


def tiled_denoiser(denoiser: Denoiser, grid: tuple[int, int], tile: int, overlap: int) -> Denoiser:
    """`denoiser` evaluated on overlapping tiles of a `grid` = (H, W) frame and blended into one prediction."""
    rows, cols = axis_weights(grid[0], tile, overlap), axis_weights(grid[1], tile, overlap)

    def tiled(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for ys, wy in rows:  # a fixed order: a member's sum does not depend on its batch
            for xs, wx in cols:
                eps = denoiser(x[..., ys, xs], t, c[..., ys, xs]).float()
                out[..., ys, xs] += eps * (wy[:, None] * wx[None, :]).to(x.device)
        return out

    return tiled


def _noise(gens: list[torch.Generator], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens]).to(device)


@torch.no_grad()
def sample_ensemble(denoiser: Denoiser, timesteps: int, cond: torch.Tensor, members: int, target_channels: int, *,
                    sampler: str = "dpmpp", steps: int | None = None, seed: int = 0,
                    member_batch_size: int | Literal["auto"] = 10, spread_scale: float = 1.0, member_offset: int = 0,
                    eta: float = 0.0, guidance: float = 1.0, tile: int | None = None,
                    tile_overlap: int | None = None) -> torch.Tensor:
    """Draw ``members`` samples of the target given ``cond``; returns (members, C_t, H, W) float32.

    ``cond`` is (C_cond, H, W) or (1, C_cond, H, W) shared by all members, or (members, C_cond, H, W) with one
    condition per member (autoregressive rollout). Members go through the network ``member_batch_size`` at a time;
    "auto": as many as fit in half the device's free memory, measured by one member's pass (``models.memory``).
    ``eta`` is DDIM's stochasticity (0 = deterministic DDIM; ignored by "ddpm", which is eta = 1, and by the
    deterministic solvers "dpmpp", "dpmpp3m", "unipc", "heun2"). ``steps`` are solver steps: one network pass each
    (``network_passes``: Heun two, but the last).
    ``guidance`` w != 1 evaluates the denoiser also without conditioning (zeros) in the same pass and uses
    eps_u + w (eps_c - eps_u); w = 1 is the plain conditional denoiser (no extra pass).
    ``tile`` / ``tile_overlap``: evaluate the denoiser on overlapping tiles blended at every step (module docstring);
    None: no tiling. A tile that covers the grid is the untiled sampler.
    """
    if cond.ndim == 3:
        cond = cond[None]
    if cond.ndim != 4 or cond.shape[0] not in (1, members):
        raise ValueError(f"cond must be (C, H, W), (1, C, H, W) or ({members}, C, H, W); got {tuple(cond.shape)}")
    if members < 1 or (member_batch_size != "auto" and member_batch_size < 1):
        raise ValueError(f"members={members} and member_batch_size={member_batch_size} must be >= 1")
    if not spread_scale > 0:
        raise ValueError(f"spread_scale must be > 0, got {spread_scale}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if not guidance >= 0:
        raise ValueError(f"guidance must be >= 0, got {guidance}")
    steps = resolve_steps(sampler, steps, timesteps)
    if tile is not None:
        check_tiling(tile, tile_overlap or 0, downsampling_factor(denoiser))
    if guidance != 1.0:
        denoiser = _guided(denoiser, guidance)
    cond = cond.float()
    device = cond.device
    shape = (target_channels, cond.shape[-2], cond.shape[-1])
    if tile is not None and (shape[1] > tile or shape[2] > tile):
        denoiser = tiled_denoiser(denoiser, shape[1:], tile, tile_overlap or 0)
    out = torch.empty((members, *shape), dtype=torch.float32, device=device)
    with batch_invariant(device):
        if member_batch_size == "auto":
            member_batch_size = _members_that_fit(denoiser, timesteps, cond[:1], shape, members)
        for start in range(0, members, member_batch_size):
            stop = min(start + member_batch_size, members)
            gens = [member_generator(seed, member_offset + k) for k in range(start, stop)]
            c = cond[start:stop] if cond.shape[0] == members > 1 else cond.expand(stop - start, -1, -1, -1)
            out[start:stop] = _sample_batch(denoiser, timesteps, c, gens, shape, sampler, steps, spread_scale, eta)
    return out


def _members_that_fit(denoiser: Denoiser, timesteps: int, cond: torch.Tensor, shape: tuple[int, ...],
                      members: int) -> int:
    """The member batch that fits the free memory: one member's pass measured (no random draws: members do not
    change); a member holds at least its sampler state (the sample, the noise and the solver's history)."""
    x = torch.zeros((1, *shape), dtype=torch.float32, device=cond.device)
    t = torch.full((1,), timesteps - 1, dtype=torch.long, device=cond.device)
    return members_that_fit(lambda: denoiser(x, t, cond), cond.device, members, floor_bytes=8 * x.nbytes)


def _guided(denoiser: Denoiser, w: float) -> Denoiser:
    """Classifier-free guidance: the conditional and the unconditional (zero conditioning) prediction in one pass."""

    def guided(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        both = denoiser(torch.cat([x, x]), t, torch.cat([c, torch.zeros_like(c)])).float()
        eps_c, eps_u = both.chunk(2)
        return eps_u + w * (eps_c - eps_u)

    return guided


def _sample_batch(denoiser: Denoiser, timesteps: int, c: torch.Tensor, gens: list[torch.Generator],
                  shape: tuple[int, ...], sampler: str, steps: int, spread_scale: float, eta: float) -> torch.Tensor:
    device = c.device
    step_eta = 1.0 if sampler == "ddpm" else eta
    stochastic = sampler not in _SOLVERS and step_eta > 0
    scheduler = solver_scheduler(sampler, timesteps)  # fresh: multistep solvers keep the previous outputs
    scheduler.set_timesteps(steps, device=device)
    x = spread_scale * _noise(gens, shape, device) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        # Heun's timesteps are whole numbers held as floats: round, do not truncate
        t_net = (t.round() if t.is_floating_point() else t).to(device=device, dtype=torch.long)
        eps = denoiser(scheduler.scale_model_input(x, t), t_net, c).float()
        if sampler in _SOLVERS:
            x = scheduler.step(eps, t, x).prev_sample
        elif stochastic:
            z = spread_scale * _noise(gens, shape, device)  # drawn also at the last step: a fixed draw order
            x = scheduler.step(eps, t, x, eta=step_eta, variance_noise=z).prev_sample
        else:
            x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    return x
