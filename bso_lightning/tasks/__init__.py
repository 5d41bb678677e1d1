"""LightningModules: the online BSO/T-BSO classifier and the baselines beside it."""

from bso_lightning.tasks.baselines import BPTTLatentClassifier, OTTTClassifier
from bso_lightning.tasks.online import OnlineClassifier

__all__ = ["BPTTLatentClassifier", "OTTTClassifier", "OnlineClassifier"]
