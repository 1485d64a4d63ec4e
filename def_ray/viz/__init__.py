"""Plots: forecast maps (maps.py) and verification plots (plots.py)."""
