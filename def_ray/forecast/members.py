"""Members sampled where the model lives: the batch job's Ray actors and the Serve replicas are this class.

The driver (batch job) or the ingress (Serve) builds the conditioning once with a light ``Forecaster``, puts it in
Ray's object store and hands member ranges to ``MemberSampler``s, each holding the network once.  Ranges start on
multiples of the member batch size (``member_chunks``), so each network batch holds the same members wherever it
runs: results stay bit-identical even where kernels depend on the batch shape (cuDNN).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from def_ray.config import SamplerConfig
from def_ray.data.normalise import Normaliser
from def_ray.forecast.forecaster import Forecaster

__all__ = ["member_chunks", "member_ranges", "MemberSampler"]


def member_chunks(members: int, chunk: int) -> list[tuple[int, int]]:
    """(member_offset, count) pieces covering 0..members-1 in order."""
    return [(start, min(chunk, members - start)) for start in range(0, members, chunk)]


def member_ranges(members: int, parts: int, align: int) -> list[tuple[int, int]]:
    """At most `parts` contiguous (member_offset, count) ranges, each made of whole chunks of `align` members."""
    chunks = member_chunks(members, max(1, align))
    groups = np.array_split(np.arange(len(chunks)), max(1, min(parts, len(chunks))))
    return [(chunks[g[0]][0], sum(chunks[i][1] for i in g)) for g in groups if g.size]


class MemberSampler:
    """Loads the model once (on the GPU when there is one) and samples member ranges in physical units."""

    def __init__(self, model_uri: str, storage_options: Mapping[str, Any] | None = None, threads: int = 1):
        import torch

        torch.set_num_threads(max(1, int(threads)))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.forecaster = Forecaster.load(model_uri, storage_options, device=device)

    def sample(self, cond: np.ndarray, members: int, lead_steps: int, options: SamplerConfig, seed: int,
               member_offset: int, normaliser: Normaliser) -> np.ndarray:
        return self.forecaster.sample(cond, members, lead_steps, options, seed=seed, member_offset=member_offset,
                                      normaliser=normaliser)
