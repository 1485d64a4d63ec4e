"""UNet backbone shared by the deterministic baseline and the diffusion model.

Residual blocks with GroupNorm, optional sinusoidal timestep embedding, self-attention at the configured
(coarse) levels, strided-conv downsampling and nearest-neighbour upsampling. Any H x W is accepted: the input is
padded (reflect where the pad is smaller than the side, else replicate) to a multiple of 2**(levels-1) and the
output cropped back.

Batch invariance (``batch_invariant``): ensemble sampling needs a member's output not to depend on how many
members share the batch, to the last bit. On the CPU three things break that, each checked by
tests/models/diffusion/test_samplers.py: oneDNN and NNPACK choose convolution kernels by batch size (so they are
switched off and ATen's own convolution, one sample at a time, is used); vectorised transcendental functions
(SiLU) compute the elements of a ragged tail with the scalar formula, so where an element falls depends on the
batch (so SiLU runs one sample at a time); and strided q/k/v change the attention kernel's path (so they are
made contiguous, always). A timestep given as one value is embedded once and broadcast over the batch.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


_STATE = threading.local()


@contextmanager
def batch_invariant(device: torch.device | str) -> Iterator[None]:
    """Within this block, on the CPU, each sample's output is independent of the batch it is in (slower).

    The kernel switches are process-wide: run one sampling call at a time per process (as Ray actors and Serve
    replicas do); other threads' convolutions meanwhile only run slower, never differently.
    """
    if torch.device(device).type != "cpu":
        yield
        return
    before = getattr(_STATE, "on", False)
    _STATE.on = True
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TF32 acceleration on top of oneDNN.*")
            with torch.backends.mkldnn.flags(enabled=False), torch.backends.nnpack.flags(enabled=False):
                yield
    finally:
        _STATE.on = before


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU; one sample at a time inside ``batch_invariant`` (see the module docstring)."""
    if getattr(_STATE, "on", False) and x.shape[0] > 1:
        return torch.cat([F.silu(s) for s in x.split(1)])
    return F.silu(x)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding (sin | cos) of timesteps t (N,) -> (N, dim), in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    if channels % groups:
        raise ValueError(f"GroupNorm: {channels} channels are not divisible by groups={groups}")
    return nn.GroupNorm(groups, channels)


class _SiLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return silu(x)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb_dim: int | None, groups: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(in_ch, groups), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        # scale-shift (FiLM) conditioning on the timestep, as in Nichol & Dhariwal's UNet: a timestep-dependent
        # gain is what lets the network move from eps ~ x_t (t near T) to eps ~ (x_t - x_0)/sigma_t (t near 0)
        self.temb = nn.Linear(temb_dim, 2 * out_ch) if temb_dim else None
        self.norm2, self.conv2 = _norm(out_ch, groups), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        h = self.norm2(self.conv1(silu(self.norm1(x))))
        if self.temb is not None:
            scale, shift = self.temb(silu(temb))[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over all pixels of a (coarse) feature map, with a residual connection."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention: {channels} channels are not divisible by attention_heads={heads}")
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2)
        # contiguous q, k, v: with strided views the CPU kernel's result depends on the batch size
        q, k, v = (u.contiguous() for u in qkv.unbind(1))
        y = F.scaled_dot_product_attention(q, k, v)  # (b, heads, hw, c/heads)
        return x + self.proj(y.transpose(-1, -2).reshape(b, c, h, w).contiguous())


class UNet(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, base_dims: int = 64,
                 channel_mults: tuple[int, ...] | list[int] = (1, 2, 4), num_res_blocks: int = 2,
                 attention_levels: tuple[int, ...] | list[int] = (2,), groups: int = 8, dropout: float = 0.0,
                 attention_heads: int = 4, time_embedding: bool = True, patch: int = 1):
        super().__init__()
        if patch < 1:
            raise ValueError(f"UNet patch must be >= 1, got {patch}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"UNet needs >= 1 input and output channel, got {in_channels} -> {out_channels}")
        bad = [lvl for lvl in attention_levels if not 0 <= lvl < len(channel_mults)]
        if bad:
            raise ValueError(f"attention_levels {bad} outside 0..{len(channel_mults) - 1}")
        self.levels = len(channel_mults)
        self.base_dims = base_dims
        self.patch = patch  # space-to-depth: the network works on patch x patch blocks (cost / patch^2)
        temb_dim = 4 * base_dims if time_embedding else None
        self.time_mlp = (nn.Sequential(nn.Linear(base_dims, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
                         if time_embedding else None)

        def attn(ch: int, lvl: int) -> nn.Module:
            return SelfAttention(ch, attention_heads, groups) if lvl in attention_levels else nn.Identity()

        self.inp = nn.Conv2d(in_channels * patch * patch, base_dims, 3, padding=1)
        skips, ch = [base_dims], base_dims
        self.down = nn.ModuleList()
        for lvl, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(nn.ModuleList([ResBlock(ch, base_dims * mult, temb_dim, groups, dropout),
                                                attn(base_dims * mult, lvl)]))
                ch = base_dims * mult
                skips.append(ch)
            if lvl < self.levels - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid1 = ResBlock(ch, ch, temb_dim, groups, dropout)
        self.mid_attn = attn(ch, self.levels - 1)
        self.mid2 = ResBlock(ch, ch, temb_dim, groups, dropout)
        self.up = nn.ModuleList()
        for lvl in reversed(range(self.levels)):
            out = base_dims * channel_mults[lvl]
            for _ in range(num_res_blocks + 1):
                self.up.append(nn.ModuleList([ResBlock(ch + skips.pop(), out, temb_dim, groups, dropout),
                                              attn(out, lvl)]))
                ch = out
            if lvl > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(ch, ch, 3, padding=1)))
        self.out = nn.Sequential(_norm(ch, groups), _SiLU(),
                                 nn.Conv2d(ch, out_channels * patch * patch, 3, padding=1))

    def _embed(self, t: torch.Tensor | int | None, batch: int, device: torch.device) -> torch.Tensor | None:
        if self.time_mlp is None:
            return None
        if t is None:
            raise ValueError("this UNet has a timestep embedding: pass t")
        t = torch.as_tensor(t, device=device).reshape(-1)
        if t.numel() not in (1, batch):
            raise ValueError(f"timesteps must be one value or one per sample ({batch}), got {t.numel()}")
        return self.time_mlp(timestep_embedding(t, self.base_dims))  # (1 or batch, temb_dim), broadcast below

    def forward(self, x: torch.Tensor, t: torch.Tensor | int | None = None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"UNet input must be (B, C, H, W), got {tuple(x.shape)}")
        h_in, w_in = x.shape[-2:]
        factor = 2 ** (self.levels - 1) * self.patch
        pad_h, pad_w = -h_in % factor, -w_in % factor
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h_in and pad_w < w_in else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        temb = self._embed(t, x.shape[0], x.device)
        if self.patch > 1:
            x = F.pixel_unshuffle(x, self.patch)
        h = self.inp(x)
        hs = [h]
        for block in self.down:
            if isinstance(block, nn.ModuleList):
                h = block[1](block[0](h, temb))
            else:
                h = block(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)
        for block in self.up:
            if isinstance(block, nn.ModuleList):
                h = block[1](block[0](torch.cat([h, hs.pop()], dim=1), temb))
            else:
                h = block(h)
        out = self.out(h)
        if self.patch > 1:
            out = F.pixel_shuffle(out, self.patch)
        return out[..., :h_in, :w_in]


def unet_from_config(model_cfg, in_channels: int, out_channels: int, time_embedding: bool) -> UNet:
    """A UNet with the sizes of a ``ModelConfig``."""
    return UNet(in_channels, out_channels, base_dims=model_cfg.base_dims, channel_mults=model_cfg.channel_mults,
                num_res_blocks=model_cfg.num_res_blocks, attention_levels=model_cfg.attention_levels,
                groups=model_cfg.groups, dropout=model_cfg.dropout, attention_heads=model_cfg.attention_heads,
                time_embedding=time_embedding, patch=model_cfg.patch)
