"""One way from a task's hyper-parameters to its model (models/spec.py), used by the tasks and the export."""

from functools import partial

import pytest
import torch

from bso_lightning.export import model_spec_from_hparams
from bso_lightning.models import ModelSpec, build_model, build_model_from_hparams
from bso_lightning.nn.bptt import BPTTLIFNode
from bso_lightning.nn.latent import LatentBinaryConv2d
from bso_lightning.optim import CosineAnnealingToZero
from bso_lightning.tasks import BPTTLatentClassifier, OnlineClassifier, OTTTClassifier

HPARAMS = dict(arch="small_cnn", arch_kwargs={"width": 4}, num_classes=7, in_channels=2, trace="ndot", decay=0.25,
               v_threshold=0.9, time_steps=3, lr=0.1)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_spec_is_the_factory_call_the_hyper_parameters_name():
    spec = ModelSpec.from_hparams(HPARAMS)
    assert spec == ModelSpec("small_cnn", dict(num_classes=7, in_channels=2, trace="ndot", decay=0.25, v_threshold=0.9,
                                               width=4))
    torch.manual_seed(0)
    built = spec.build()
    torch.manual_seed(0)
    assert _same(built, build_model("small_cnn", num_classes=7, in_channels=2, trace="ndot", decay=0.25,
                                    v_threshold=0.9, width=4))
    assert model_spec_from_hparams(HPARAMS) == (spec.arch, dict(spec.kwargs))  # what the export header stores


def test_every_task_builds_its_model_through_the_spec():
    shared = {k: HPARAMS[k] for k in ("arch", "num_classes", "in_channels", "time_steps")}
    shared["arch_kwargs"] = {**HPARAMS["arch_kwargs"], "decay": 0.25, "v_threshold": 0.9}  # (the neuron's settings)
    for cls, weights, neuron in ((OnlineClassifier, "binary", "online"), (OTTTClassifier, "full_precision", "online"),
                                 (BPTTLatentClassifier, "latent", "bptt")):
        torch.manual_seed(0)
        task = cls(**shared, lr_scheduler=partial(CosineAnnealingToZero, epochs=1))
        torch.manual_seed(0)
        assert _same(task.model, build_model_from_hparams(task.hparams, weights=weights, neuron=neuron)), cls
    latent = build_model_from_hparams(BPTTLatentClassifier(**shared).hparams, weights="latent", neuron="bptt")
    assert any(isinstance(m, LatentBinaryConv2d) for m in latent.modules())
    assert any(isinstance(m, BPTTLIFNode) for m in latent.modules())


def test_hyper_parameters_without_arch_or_with_a_repeated_argument_are_refused():
    with pytest.raises(ValueError, match="no 'arch'"):
        ModelSpec.from_hparams({"num_classes": 10})
    with pytest.raises(ValueError, match=r"arch_kwargs repeats \['num_classes'\]"):
        ModelSpec.from_hparams({**HPARAMS, "arch_kwargs": {"num_classes": 3}})
    with pytest.raises(ValueError, match="arch_kwargs repeats"):
        OnlineClassifier(arch_kwargs={"trace": "ndot"})  # (the neuron's decay/v_threshold belong in arch_kwargs)
