"""Verification of ensemble forecasts: probabilistic, categorical and spatial scores, and power spectra."""

from def_ray.verify.metrics import (
    brier_decomposition,
    brier_score,
    contingency_scores,
    crps,
    crps_skill_score,
    ensemble_mean_rmse,
    ensemble_spread,
    exceedance_probability,
    fractions_skill_score,
    rank_histogram,
    reliability_diagram,
    roc_auc,
    roc_curve,
    spread_skill_ratio,
)
from def_ray.verify.spectra import radial_power_spectrum

__all__ = [
    "brier_decomposition",
    "brier_score",
    "contingency_scores",
    "crps",
    "crps_skill_score",
    "ensemble_mean_rmse",
    "ensemble_spread",
    "exceedance_probability",
    "fractions_skill_score",
    "radial_power_spectrum",
    "rank_histogram",
    "reliability_diagram",
    "roc_auc",
    "roc_curve",
    "spread_skill_ratio",
]
