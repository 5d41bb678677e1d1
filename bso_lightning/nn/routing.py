"""Routing of parameters: binary weights to BSO/TBSO, everything else to a float optimizer (beside the binary layers that claim them).

Binary parameters are claimed by the layers that own them (duck typing): any module with a
callable ``binary_parameters()`` method claims the Parameters it returns. Every trainable
parameter must end up in exactly one optimizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from bso_lightning.nn.packed import is_packed


def _trainable(p: nn.Parameter) -> bool:
    """Trained by some optimizer: requires grad, or a packed binary weight (bits get G from their layer)."""
    return p.requires_grad or is_packed(p)


@dataclass
class ParameterSplit:
    """Trainable parameters of a model, split by which optimizer family should own them."""

    binary: list[nn.Parameter] = field(default_factory=list)
    full_precision: list[nn.Parameter] = field(default_factory=list)


def _claims(model: nn.Module, names: dict[int, str]) -> dict[int, str]:
    """Map id(param) -> name of the module claiming it; raise on double or foreign claims."""
    claimed_by: dict[int, str] = {}
    for module_name, module in model.named_modules():
        method = getattr(module, "binary_parameters", None)
        if not callable(method):
            continue
        label = module_name or "<root>"
        for p in method():
            if id(p) not in names:
                raise ValueError(
                    f"binary_parameters() of module {label!r} returned a tensor of shape "
                    f"{list(p.shape)} that is not a parameter of the model"
                )
            if id(p) in claimed_by:
                raise ValueError(
                    f"parameter {names[id(p)]!r} is claimed as binary by two modules: "
                    f"{claimed_by[id(p)]!r} and {label!r} (only the layer owning a binary "
                    "weight should list it in binary_parameters())"
                )
            claimed_by[id(p)] = label
    return claimed_by


def split_parameters(model: nn.Module) -> ParameterSplit:
    """Split the trainable parameters of ``model`` into binary and full-precision lists.

    Both lists follow ``model.named_parameters()`` order; shared parameters appear once;
    parameters with ``requires_grad=False`` are left out (except packed binary weights, which never require grad).
    """
    names = {id(p): name for name, p in model.named_parameters()}
    claimed = _claims(model, names)
    split = ParameterSplit()
    for p in model.parameters():
        if _trainable(p):
            (split.binary if id(p) in claimed else split.full_precision).append(p)
    return split


def check_partition(model: nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """Raise ValueError unless every trainable parameter of ``model`` is in exactly one group
    of exactly one optimizer, and no optimizer holds a tensor that is not part of ``model``."""
    names = {id(p): name for name, p in model.named_parameters()}
    owners: dict[int, list[str]] = {}
    foreign: list[str] = []
    for i, optimizer in enumerate(optimizers):
        for j, group in enumerate(optimizer.param_groups):
            where = f"optimizer {i} ({type(optimizer).__name__}) group {j}"
            for p in group["params"]:
                if id(p) not in names:
                    foreign.append(f"a tensor of shape {list(p.shape)} in {where}")
                else:
                    owners.setdefault(id(p), []).append(where)
    problems = [f"{text} is not a parameter of the model" for text in foreign]
    problems += [
        f"parameter {names[pid]!r} is claimed more than once: {', '.join(places)}"
        for pid, places in owners.items()
        if len(places) > 1
    ]
    problems += [
        f"parameter {name!r} is not in any optimizer"
        for name, p in model.named_parameters()
        if _trainable(p) and id(p) not in owners
    ]
    if problems:
        raise ValueError("parameters are not partitioned among the optimizers:\n  " + "\n  ".join(problems))
