"""Members sampled where the model lives: the batch job's Ray actors and the Serve replicas are this class.

The driver (batch job) or the ingress (Serve) builds the conditioning once with a light ``Forecaster``, puts it in
Ray's object store ONCE per forecast (``ray.put``) and hands the reference with each member range to the
``MemberSampler``s: Ray resolves a top-level ObjectRef argument in the actor / replica from the object store (zero
copy on the same node), so the conditioning (about 230 MB at full CONUS) is not serialised into every call. Each
sampler loads the network once, in ``__init__``, and keeps it resident for every call it serves (``resident``
reports the loads and calls of its process; tests/forecast/test_conditioning_by_reference.py checks both). Ranges
start on multiples of the member batch size (``member_chunks``), so each network batch holds the same members
wherever it runs: results stay bit-identical even where kernels depend on the batch shape (cuDNN). With the member
batch "auto" each sampler sizes its batches from its own free memory: on the CPU members stay bit-identical, on CUDA
they agree to the kernels' batch dependence (about 4e-4 of the unit spread, benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from def_ray.config import SamplerConfig
from def_ray.data.normalise import Normaliser
from def_ray.forecast.forecaster import Forecaster

__all__ = ["member_chunks", "member_ranges", "MemberSampler"]


def member_chunks(members: int, chunk: int | str, parts: int = 1) -> list[tuple[int, int]]:
    """(member_offset, count) pieces covering 0..members-1 in order: of `chunk` members, or with the member batch
    "auto" (each sampler sizes its batches from its free memory) `parts` nearly equal pieces."""
    chunk = -(-members // max(1, parts)) if chunk == "auto" else max(1, int(chunk))
    return [(start, min(chunk, members - start)) for start in range(0, members, chunk)]


def member_ranges(members: int, parts: int, align: int | str) -> list[tuple[int, int]]:
    """At most `parts` contiguous (member_offset, count) ranges, each made of whole chunks of `align` members
    ("auto": one range per part)."""
    chunks = member_chunks(members, align, parts)
    groups = np.array_split(np.arange(len(chunks)), max(1, min(parts, len(chunks))))
    return [(chunks[g[0]][0], sum(chunks[i][1] for i in g)) for g in groups if g.size]


class MemberSampler:
    """Loads the model once (on the GPU when there is one) and samples member ranges in physical units."""

    loads = 0
    """Models loaded in this process (a Ray actor / Serve replica is one process: 1 for its lifetime)."""

    def __init__(self, model_uri: str, storage_options: Mapping[str, Any] | None = None, threads: int = 1):
        import torch

        torch.set_num_threads(max(1, int(threads)))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.forecaster = Forecaster.load(model_uri, storage_options, device=device)
        MemberSampler.loads += 1
        self.calls = 0

    def sample(self, cond: Any, members: int, lead_steps: int, options: SamplerConfig, seed: int,
               member_offset: int, normaliser: Normaliser) -> np.ndarray:
        """Members member_offset .. + members - 1 from `cond`: the array, or its ObjectRef (Ray resolves a
        top-level reference before the call; one passed any other way is fetched here)."""
        import ray

        if isinstance(cond, ray.ObjectRef):
            cond = ray.get(cond)
        self.calls += 1
        return self.forecaster.sample(cond, members, lead_steps, options, seed=seed, member_offset=member_offset,
                                      normaliser=normaliser)

    def resident(self) -> dict[str, int]:
        """{pid, loads (models loaded by this process), calls (sample calls served), model (id of the network)}:
        a sampler that keeps its model resident shows loads == 1 and the same model id however many calls."""
        import os

        return {"pid": os.getpid(), "loads": MemberSampler.loads, "calls": self.calls,
                "model": id(self.forecaster.model)}
