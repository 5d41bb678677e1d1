"""Optimizers for binary weights (BSO, T-BSO), parameter routing and hyper-parameter schedules."""

from .bso import BSO
from bso_lightning.nn.routing import ParameterSplit, check_partition, split_parameters
from .schedules import BinaryHyperparameterScheduler, ConstantDecay, InverseSqrtDecay, StepDecay
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
]
