"""The pieces the classifier will be given (issue 22 item 2): schedule classes, injected-object specs, the loop's
settings, the translation of flat hyper-parameters, the fault-handling collaborator."""

from __future__ import annotations

import functools

import pytest
import torch

from bso_lightning.optim import (
    BSO, TBSO, BinaryHyperparameterScheduler, CosineAnnealingToZero, FullPrecisionSGD, RunExponentialSchedule,
    StepDecay, StepSchedule,
)
from bso_lightning.optim.schedules import ExponentialDecay
from bso_lightning.tasks.faults import NonFiniteError, NonFiniteHandler
from bso_lightning.tasks.legacy import is_legacy, translate_online
from bso_lightning.tasks.loop import OnlineLoop
from bso_lightning.tasks.specs import check_class_paths_loaded, factory_of, spec_of


def _binary(n: int = 8) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.ones(n))]


def test_step_schedule_is_the_decay_it_names():
    a, b = TBSO(_binary()), TBSO(_binary())
    ours, theirs = StepSchedule(a, every=2, factor=0.5, interval="step"), BinaryHyperparameterScheduler(b, StepDecay(2, 0.5))
    for _ in range(5):
        ours.step(), theirs.step()
    assert a.param_groups[0]["threshold"] == b.param_groups[0]["threshold"] and ours.interval == "step"


def test_run_schedule_holds_until_it_knows_the_run_then_applies_at_k():
    opt = TBSO(_binary(), threshold=1e-6)
    schedule = RunExponentialSchedule(opt, final=1e-2)
    schedule.step(), schedule.step()
    assert opt.param_groups[0]["threshold"] == 1e-6 and schedule.interval == "step"
    schedule.set_run_length(4)
    assert opt.param_groups[0]["threshold"] == pytest.approx(1e-6 * ExponentialDecay(4, 1e-2)(2))
    with pytest.raises(ValueError, match=r"final \(the factor at the end of the run\) must be in \(0, 1\]"):
        RunExponentialSchedule(TBSO(_binary()), final=2.0)


def test_full_precision_defaults_and_checks():
    opt = FullPrecisionSGD([torch.nn.Parameter(torch.zeros(2))])
    assert (opt.defaults["lr"], opt.defaults["momentum"]) == (0.1, 0.9)
    with pytest.raises(ValueError, match="lr must be a finite number >= 0, got nan"):
        FullPrecisionSGD([torch.nn.Parameter(torch.zeros(2))], lr=float("nan"))
    cosine = CosineAnnealingToZero(opt)
    cosine.set_max_epochs(4)
    assert cosine.T_max == 4
    with pytest.raises(ValueError, match="needs epochs when the trainer has no max_epochs"):
        CosineAnnealingToZero(FullPrecisionSGD([torch.nn.Parameter(torch.zeros(2))])).set_max_epochs(None)


def test_specs_are_plain_and_build_only_loaded_classes():
    spec = spec_of(functools.partial(BSO, threshold=1e-6, reset_momentum_on_flip=True), "optimizer")
    assert spec == {"class_path": "bso_lightning.optim.BSO",
                    "init_args": {"threshold": 1e-6, "reset_momentum_on_flip": True}}
    assert spec_of(TBSO, "optimizer") == {"class_path": "bso_lightning.optim.TBSO", "init_args": {}}
    built = factory_of(spec, "optimizer", BSO)(_binary())
    assert isinstance(built, BSO) and built.param_groups[0]["reset_momentum_on_flip"]
    with pytest.raises(ValueError, match="optimizer must be a class, a functools.partial of one"):
        spec_of(lambda params: BSO(params), "optimizer")
    with pytest.raises(ValueError, match="'no_such_module.X' is not a object subclass loaded in this process"):
        check_class_paths_loaded({"optimizer": {"class_path": "no_such_module.X"}})


def test_loop_settings_are_checked_naming_them():
    assert OnlineLoop.of({"update_mode": "accumulated"}).update_mode == "accumulated"
    with pytest.raises(ValueError, match="loop.update_mode must be one of"):
        OnlineLoop(update_mode="sometimes")
    with pytest.raises(ValueError, match="loop has no setting 'lr'"):
        OnlineLoop.of({"lr": 0.1})


def test_flat_hyper_parameters_translate():
    flat = {"arch": "small_cnn", "optimizer": "bso", "threshold": 1e-6, "schedule": "step", "schedule_every": 1,
            "lr_schedule": "constant", "update_mode": "accumulated", "decay": 0.25}
    assert is_legacy(flat)
    new = translate_online(flat)
    assert not is_legacy(new)
    assert new["optimizer"]["class_path"] == "bso_lightning.optim.BSO" and new["optimizer"]["init_args"]["threshold"] == 1e-6
    assert new["schedule"]["init_args"]["every"] == 1 and new["loop"]["update_mode"] == "accumulated"
    assert new["lr_scheduler"]["class_path"] == "torch.optim.lr_scheduler.ConstantLR"
    assert new["arch_kwargs"] == {"decay": 0.25}


class _Strategy:
    @staticmethod
    def reduce_boolean_decision(decision: bool, all: bool = True) -> bool:  # noqa: A002 - Lightning's name
        return decision


def test_fault_handler_skips_or_raises_a_nonfinite_batch():
    skip = NonFiniteHandler("skip", max_skipped_fraction=1.0)
    assert skip.skip_batch(torch.tensor([float("nan")]), "batch 0 of epoch 0", _Strategy())
    assert not skip.skip_batch(torch.ones(1), "batch 1 of epoch 0", _Strategy())
    assert int(skip.counts[0]) == 1 and skip.pending()
    with pytest.raises(NonFiniteError, match="batch 0 of epoch 0: its input holds 1 NaN"):
        NonFiniteHandler("raise").skip_batch(torch.tensor([float("nan")]), "batch 0 of epoch 0", _Strategy())
