"""Ablation sweeps: variants x seeds as ordinary runs, results.csv and plots (`python -m lit_vit plot <sweep dir>`)."""

from lit_vit.ablation.config import Ablation, Variant

__all__ = ["Ablation", "Variant"]
