"""Distributed training on Ray Train: the per-worker loop, the trainer assembly, checkpoints and tracking."""

from def_ray.train.console import connect_ray
from def_ray.train.trainer import TrainResult, train

__all__ = ["TrainResult", "connect_ray", "train"]
