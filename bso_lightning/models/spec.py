"""Rebuilding a task's model from its hyper-parameters: the one definition that the online classifier, the
baselines and the packed export share.

A task stores ``arch``, ``arch_kwargs`` (the neuron's ``decay`` and ``v_threshold`` included) and the model settings
of its own (``num_classes``, ``in_channels``, ``trace``; checkpoints before issue 22 also hold ``decay`` and
``v_threshold`` beside them) as hyper-parameters; :meth:`ModelSpec.from_hparams` turns them into
the factory call ``build_model(arch, **kwargs)``, and ``weights``/``neuron`` select a baseline variant
(:mod:`bso_lightning.models.variants`). A new model-building option is one more field here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from bso_lightning.nn.layers import set_weight_storage_

from bso_lightning.models.variants import NeuronVariant, WeightVariant, build_variant

#: Task hyper-parameters passed to the model factory as keyword arguments (when the task has them).
FACTORY_HPARAMS = ("num_classes", "in_channels", "trace", "decay", "v_threshold")
#: ``batchnorm_statistics``: ``per_time_step`` (running statistics per time step for evaluation,
#: :mod:`bso_lightning.nn.time_step_batchnorm`) or ``pooled`` (plain BatchNorm; checkpoints without the key).
BATCHNORM_STATISTICS = ("per_time_step", "pooled")


@dataclass(frozen=True)
class ModelSpec:
    """What builds a model: the factory name, its keyword arguments, the weight/neuron variant and how binary
    weights are stored (``weight_storage``: ``dense`` ±1 floats or ``packed`` bits; binary variant only)."""

    arch: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    weights: WeightVariant = "binary"
    neuron: NeuronVariant = "online"
    weight_storage: str = "dense"

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any], weights: WeightVariant = "binary",
                     neuron: NeuronVariant = "online") -> "ModelSpec":
        """The spec of a task's hyper-parameters: ``FACTORY_HPARAMS`` it has, then ``arch_kwargs``."""
        if "arch" not in hparams:
            raise ValueError("hyper-parameters have no 'arch': not a bso_lightning task checkpoint/module")
        kwargs = {key: hparams[key] for key in FACTORY_HPARAMS if key in hparams}
        arch_kwargs = dict(hparams.get("arch_kwargs") or {})
        repeated = sorted(set(kwargs) & set(arch_kwargs))
        if repeated:
            raise ValueError(f"arch_kwargs repeats {repeated}: set them as the task's own arguments, not in arch_kwargs")
        storage = str(hparams.get("weight_storage", "dense")) if weights == "binary" else "dense"
        statistics = hparams.get("batchnorm_statistics", "pooled")
        if statistics not in BATCHNORM_STATISTICS:
            raise ValueError(f"batchnorm_statistics must be one of {BATCHNORM_STATISTICS}, got {statistics!r}")
        if statistics == "per_time_step":  # (build_model's own argument: packed export rebuilds the same model)
            kwargs["batchnorm_time_steps"] = int(hparams.get("time_steps", 1))
        return cls(str(hparams["arch"]), {**kwargs, **arch_kwargs}, weights, neuron, storage)

    def build(self) -> nn.Module:
        """``build_model(arch, **kwargs)`` with the binary layers and neurons swapped as the variant says."""
        model = build_variant(self.arch, weights=self.weights, neuron=self.neuron, **self.kwargs)
        return set_weight_storage_(model, self.weight_storage)


def build_model_from_hparams(hparams: Mapping[str, Any], weights: WeightVariant = "binary",
                             neuron: NeuronVariant = "online") -> nn.Module:
    """The model a task with these hyper-parameters trains (``ModelSpec.from_hparams(...).build()``)."""
    return ModelSpec.from_hparams(hparams, weights, neuron).build()


__all__ = ["BATCHNORM_STATISTICS", "FACTORY_HPARAMS", "ModelSpec", "build_model_from_hparams"]
