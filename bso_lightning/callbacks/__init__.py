"""Callbacks: telemetry (they only observe: flip rates, training memory against T, model size) and
a checkpoint on SIGTERM/Ctrl+C.

Usable from LightningCLI YAML, e.g. ``class_path: bso_lightning.callbacks.FlipRateCallback``.
Metric names are listed in each module's docstring and in docs/telemetry.md.
"""

from bso_lightning.callbacks.checkpoint_on_signal import CheckpointOnInterrupt
from bso_lightning.callbacks.flip_rate import FlipRateCallback
from bso_lightning.callbacks.memory import (
    AutogradMemoryMeter,
    MemoryCallback,
    cuda_peak_bytes,
    peak_rss_bytes,
    persistent_state_bytes,
)
from bso_lightning.callbacks.model_size import ModelSizeCallback

__all__ = [
    "AutogradMemoryMeter",
    "CheckpointOnInterrupt",
    "FlipRateCallback",
    "MemoryCallback",
    "ModelSizeCallback",
    "cuda_peak_bytes",
    "peak_rss_bytes",
    "persistent_state_bytes",
]
