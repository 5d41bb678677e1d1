"""LightningModules: the online BSO/T-BSO classifier (baselines live beside it)."""

from bso_lightning.tasks.online import OnlineClassifier

__all__ = ["OnlineClassifier"]
