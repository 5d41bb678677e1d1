"""Nothing of step t−1's autograd graph is alive after the backward of step t (spikingjelly issue #593)."""

import gc
import weakref

import torch
from spikingjelly.activation_based import functional

from bso_lightning.models import small_cnn


class _Saved:
    """A saved tensor, wrapped so the test can see when autograd lets go of it."""

    def __init__(self, tensor):
        self.tensor = tensor


def test_graph_of_previous_step_is_freed():
    torch.manual_seed(0)
    model = small_cnn(num_classes=10, in_channels=1, width=8)
    model.train()
    x = torch.rand(4, 1, 16, 16) * 3
    y = torch.randint(0, 10, (4,))
    saved_by_step: list[list[weakref.ref]] = []

    def pack(tensor):
        holder = _Saved(tensor)
        saved_by_step[-1].append(weakref.ref(holder))
        return holder

    functional.reset_net(model)
    for t in range(4):
        saved_by_step.append([])
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda holder: holder.tensor):
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out, y)
        loss.backward()
        del out, loss
        gc.collect()
        assert saved_by_step[-1], "the hook saw no saved tensors"
        for step in range(t + 1):
            alive = sum(ref() is not None for ref in saved_by_step[step])
            assert alive == 0, f"after the backward of step {t}, {alive} tensors saved at step {step} are alive"
