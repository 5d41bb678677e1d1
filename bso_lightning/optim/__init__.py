"""Optimizers for binary weights (BSO, T-BSO), parameter routing, hyper-parameter schedules, and the full-precision
SGD with its cosine learning rate."""

from .bso import BSO
from bso_lightning.nn.routing import ParameterSplit, check_partition, split_parameters
from .full_precision import CosineAnnealingToZero, FullPrecisionSGD
from .schedules import (
    BinaryHyperparameterScheduler, ConstantDecay, ConstantSchedule, InverseSqrtDecay, InverseSqrtSchedule,
    RunExponentialSchedule, RunInverseSqrtSchedule, RunSchedule, RunStepSchedule, StepDecay, StepSchedule,
)
from .tbso import TBSO

__all__ = [
    "BSO",
    "TBSO",
    "ParameterSplit",
    "split_parameters",
    "check_partition",
    "ConstantDecay",
    "StepDecay",
    "InverseSqrtDecay",
    "BinaryHyperparameterScheduler",
    "ConstantSchedule",
    "StepSchedule",
    "InverseSqrtSchedule",
    "RunSchedule",
    "RunStepSchedule",
    "RunExponentialSchedule",
    "RunInverseSqrtSchedule",
    "FullPrecisionSGD",
    "CosineAnnealingToZero",
]
