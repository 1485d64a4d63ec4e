"""What a network pass holds in memory, and how many members fit in what the device has free.

On CUDA the caching allocator's peak (``max_memory_allocated``) above the level at entry; on the CPU the rise of the
process's peak resident set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``), after the heap has handed
its free pages back to the system (``malloc_trim``) so that the rise measures the pass, not what earlier passes
left behind.  Elsewhere the CPU figure is unknown (NaN).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["PeakMemory", "free_bytes", "members_that_fit"]


def _status_kib(key: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def _reset_peak_rss() -> bool:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") > 0
    except OSError:
        return False


class PeakMemory:
    """Peak bytes above the level at entry (or above ``base``): the CUDA allocator's, or the process's resident set
    on the CPU (NaN where it cannot be read)."""

    def __init__(self, device: torch.device | str, base: int | None = None):
        self.device, self.base, self.peak = torch.device(device), base, float("nan")
        self.ok = True

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) if self.base is None else self.base
        else:
            self.ok = _reset_peak_rss()
            self.base = _status_kib("VmRSS") * 1024 if self.base is None else self.base
        return self

    def __exit__(self, *exc: object) -> bool:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        elif self.ok:
            self.peak = _status_kib("VmHWM") * 1024 - self.base
        return False


def free_bytes(device: torch.device | str) -> int:
    """Memory free for new work: the GPU's free memory, or the system's available memory for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def members_that_fit(one_member_pass: Callable[[], object], device: torch.device | str, most: int, *,
                     fraction: float = 0.5, floor_bytes: int = 0, free: int | None = None) -> int:
    """How many members to put through the network together: ``fraction`` of the free memory over what one
    member's pass holds (measured by running ``one_member_pass`` once), between 1 and ``most``.

    ``floor_bytes`` is the least a member is taken to hold (its sampler state), so that a measurement that cannot
    see the pass never sizes an unbounded batch; an unmeasurable pass gives 1.  The other half of the memory is
    the margin for what the measurement does not see (the sampler's arrays, the allocator's slack).
    """
    with PeakMemory(device) as pm:
        one_member_pass()
    if math.isnan(pm.peak):
        return 1
    per_member = max(pm.peak, floor_bytes, 1)
    free = free_bytes(device) if free is None else free
    return max(1, min(int(most), int(fraction * free // per_member)))
