"""Distributed training on Ray Train: the per-worker loop, the trainer assembly, checkpoints and tracking."""

from def_ray.train.trainer import TrainResult, connect_ray, train

__all__ = ["TrainResult", "connect_ray", "train"]
