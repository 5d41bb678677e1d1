"""Bad arguments raise ValueError naming the argument and the allowed range."""

import pytest
import torch

from bso_lightning.optim import BSO, TBSO


def _binary(*shape):
    return torch.nn.Parameter(torch.ones(*shape))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: BSO(p, threshold=-1.0), r"threshold must be a finite number >= 0, got -1\.0"),
        (lambda p: BSO(p, threshold=float("inf")), r"threshold must be a finite number >= 0"),
        (lambda p: BSO(p, threshold=float("nan")), r"threshold must be a finite number >= 0"),
        (lambda p: BSO(p, beta=1.0), r"beta must be in \[0, 1\), got 1\.0"),
        (lambda p: BSO(p, beta=-0.1), r"beta must be in \[0, 1\)"),
        (lambda p: TBSO(p, threshold=-1e-9), r"threshold must be a finite number >= 0"),
        (lambda p: TBSO(p, betas=(1.0, 0.5)), r"betas\[0\] must be in \[0, 1\), got 1\.0"),
        (lambda p: TBSO(p, betas=(0.5, 1.5)), r"betas\[1\] must be in \[0, 1\)"),
        (lambda p: TBSO(p, betas=(0.5,)), r"betas must be a pair"),
        (lambda p: TBSO(p, eps=0.0), r"eps must be a finite number > 0, got 0\.0"),
        (lambda p: TBSO(p, eps=-1.0), r"eps must be a finite number > 0"),
        (lambda p: BSO([{"params": p, "threshold": -2.0}]), r"threshold must be a finite number >= 0"),
    ],
)
def test_bad_hyperparameters(make, message):
    with pytest.raises(ValueError, match=message):
        make([_binary(3)])


@pytest.mark.parametrize("cls", [BSO, TBSO])
def test_empty_parameter_list(cls):
    with pytest.raises(ValueError, match="empty parameter list"):
        cls([])


@pytest.mark.parametrize("cls", [BSO, TBSO])
@pytest.mark.parametrize("bad_value", [0.0, 0.5, -2.0, float("nan")])
def test_non_binary_parameter_is_rejected_with_its_index_and_shape(cls, bad_value):
    params = [_binary(2), _binary(4), _binary(1), _binary(64, 3, 3, 3)]
    with torch.no_grad():
        params[3][1, 2, 0, 0] = bad_value
    with pytest.raises(ValueError, match=r"parameter 3 \(shape \[64, 3, 3, 3\]\) holds values other than ±1"):
        cls(params)


def test_non_binary_parameter_in_added_group_is_rejected_and_not_kept():
    opt = BSO([_binary(2)])
    with pytest.raises(ValueError, match=r"parameter 1 \(shape \[3\]\)"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("time_step", [-1, 1.0, "0", True])
def test_bad_time_step(time_step):
    w = _binary(2)
    w.grad = torch.ones(2)
    with pytest.raises(ValueError, match="time_step must be an int >= 0"):
        TBSO([w]).step(time_step=time_step)
    with pytest.raises(ValueError, match="time_step must be an int >= 0"):
        BSO([w]).step(time_step=time_step)
    with pytest.raises(ValueError, match="time_step must be an int >= 0"):
        TBSO([w]).flip_thresholds(time_step)


def test_hyperparameters_set_in_param_groups_are_checked_at_step():
    w = _binary(2)
    w.grad = torch.ones(2)
    opt = TBSO([w])
    opt.param_groups[0]["eps"] = 0.0
    with pytest.raises(ValueError, match="eps must be"):
        opt.step(time_step=0)
