"""Run a NIR graph in another library and compare it with ours (the checks of docs/deploying.md).

snntorch's NIR importer is the independent consumer (the ``[nir]`` extra); :func:`run_sequence` runs one of
our networks the way ``OnlineClassifier.forward`` does, for a network without its LightningModule.
"""

from __future__ import annotations

import contextlib
import io
from typing import Literal, Union

import nir
import torch
from torch import Tensor, nn

from bso_lightning.atomic import PathLike
from bso_lightning.interop.nir import read_nir

__all__ = ["agreement", "run_sequence", "snntorch_outputs"]


def _frame(x: Tensor, t: int) -> Tensor:
    """The input at step ``t``: frame ``t`` of a ``[B, T, C, H, W]`` batch, else ``x`` itself (static data, as
    ``OnlineClassifier`` feeds it; written here so that interop imports no LightningModule)."""
    return x[:, t] if x.dim() == 5 else x


def run_sequence(network: nn.Module, x: Tensor, time_steps: int) -> Tensor:
    """Mean output over ``time_steps`` of one of our networks (neurons reset before and after), like
    ``OnlineClassifier.forward``; ``x`` is ``[B, C, H, W]`` (static: the same input at every step) or
    ``[B, T, C, H, W]`` (frame t at step t)."""
    from spikingjelly.activation_based import functional

    functional.reset_net(network)
    total = sum(network(_frame(x, t)) for t in range(time_steps))
    functional.reset_net(network)
    return total / time_steps



def snntorch_outputs(graph: Union[nir.NIRGraph, PathLike], x: Tensor, time_steps: int,
                     reset: Literal["nir", "subtract"] = "nir") -> Tensor:
    """Mean output over ``time_steps`` of ``graph`` run by snntorch's NIR importer (``pip install '.[nir]'``).

    ``x``: ``[N, C, H, W]`` (static, shown at every step) or ``[N, T, C, H, W]``. snntorch maps NIR's
    ``Flatten(start_dim=0)`` to ``torch.nn.Flatten(0, -1)``, which would merge a batch dimension, so the
    samples run one at a time, unbatched, as NIR's shapes are. ``reset="nir"`` runs what the importer
    builds (``snn.Leaky(reset_mechanism="zero")``: NIR's reset to v_reset); ``"subtract"`` switches those
    neurons to snntorch's own reset by subtraction, the dynamics the graph's ``metadata["reset"]`` states.
    """
    import snntorch
    from snntorch.import_nir import import_from_nir

    if reset not in ("nir", "subtract"):
        raise ValueError(f"reset must be 'nir' or 'subtract', got {reset!r}")
    if not isinstance(graph, nir.NIRGraph):
        graph = read_nir(graph)
    with contextlib.redirect_stdout(io.StringIO()):  # the importer prints progress notes
        net = import_from_nir(graph)
    neurons = [m for m in net.modules() if isinstance(m, snntorch.Leaky)]
    if reset == "subtract":
        for neuron in neurons:
            neuron.reset_mechanism = "subtract"
    outs = []
    with torch.no_grad():
        for sample in x:
            for neuron in neurons:
                neuron.mem = torch.zeros(0)  # re-initialised to the input's shape at the first step
            state, total = None, 0.0
            for t in range(time_steps):
                out, state = net(_frame(sample.unsqueeze(0), t)[0], state)
                total = total + out
            outs.append(total / time_steps)
    return torch.stack(outs)


def agreement(ours: Tensor, theirs: Tensor) -> dict[str, float]:
    """Prediction agreement (fraction of equal arg-max) and output differences of two ``[N, classes]`` tensors."""
    diff = (ours - theirs).abs()
    return {"agreement": float((ours.argmax(1) == theirs.argmax(1)).float().mean()),
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}
