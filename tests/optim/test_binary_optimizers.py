"""What BSO and T-BSO share, run over both: every test takes ``spec``, one optimizer with its update rule written out
by hand. Each one's own equations on hand-computed sequences (Eq. 11–12 and the momentum reset in test_bso.py;
Eq. 13–14, v[t] per time step and ε placement in test_tbso.py) stay in its own file.

Shared here: flips only by sign and exactly by the rule, with no latent weight (the state is the momentum, and v for
T-BSO); packed bits and dense weights step bit for bit alike, eagerly and compiled; a non-finite gradient skips only
its tensor; state_dict round trips; low-precision and mixed weight dtypes; the closure; parameter groups and
parameters without a gradient; the checks of the arguments both take.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from bso_lightning.nn.packed import PackedBinaryParameter, binary_signs
from bso_lightning.optim import BSO, TBSO

F32_MAX = torch.finfo(torch.float32).max


def _overflows(x: torch.Tensor) -> bool:
    """Not finite once stored in float32 (NaN included)."""
    return not bool(x.abs() <= F32_MAX)


def bso_rule(w, m, v, g, t, *, threshold, beta, reset_momentum_on_flip):
    """Eq. 11–12 by hand, in float64: M ← β·M + (1 − β)·G; W ← −W exactly where W·M > γ (and M ← 0 there with the
    reset). Skipped (``ok`` False, nothing changes) where ‖G‖² is not finite in float32."""
    if _overflows((g * g).sum()):
        return w, m, v, False
    m = beta * m + (1 - beta) * g
    flip = w * m > threshold
    if reset_momentum_on_flip:
        m = torch.where(flip, torch.zeros_like(m), m)
    return torch.where(flip, -w, w), m, v, True


def tbso_rule(w, m, v, g, t, *, threshold, betas, eps, eps_placement):
    """Eq. 13–14 by hand, in float64: v grows with zeros to t + 1 entries; v[t] ← β2·v[t] + (1 − β2)·mean(G²);
    M ← β1·M + (1 − β1)·G; W ← −W exactly where W·M > γ·sqrt(v[t] + ε) (``outside``: γ·(sqrt(v[t]) + ε)).
    Skipped (``ok`` False, only v's length changes) where ‖G‖² or the new v[t] is not finite in float32."""
    v = torch.cat([v, v.new_zeros(max(0, t + 1 - v.numel()))])
    v_t = betas[1] * v[t] + (1 - betas[1]) * (g * g).mean()
    if _overflows((g * g).sum()) or _overflows(v_t):
        return w, m, v, False
    v[t] = v_t
    m = betas[0] * m + (1 - betas[0]) * g
    limit = threshold * (v_t.sqrt() + eps) if eps_placement == "outside" else threshold * (v_t + eps).sqrt()
    flip = w * m > limit
    return torch.where(flip, -w, w), m, v, True


@dataclass(frozen=True)
class Spec:
    cls: type
    rule: Callable[..., tuple]
    decay: Callable[[float], dict[str, Any]]  # the momentum decay β (T-BSO: β1, with β2 = 0.5 and ε = 0.25)
    decay_name: str  # as the error message names it
    option: dict[str, Any]  # the optimizer's own non-default switch

    def make(self, params, threshold: float = 0.1, decay: float = 0.5, **kwargs: Any):
        return self.cls(params, threshold=threshold, **self.decay(decay), **kwargs)


SPECS = {
    "BSO": Spec(BSO, bso_rule, lambda b: {"beta": b}, "beta", {"reset_momentum_on_flip": True}),
    "TBSO": Spec(TBSO, tbso_rule, lambda b: {"betas": (b, 0.5), "eps": 0.25}, r"betas\[0\]",
                 {"eps_placement": "outside"}),
}


@pytest.fixture(params=list(SPECS))
def spec(request) -> Spec:
    return SPECS[request.param]


class Reference:
    """``spec.rule`` over copies of the optimizer's tensors (in float64): what its weights, momenta, v and counters
    must be after each step."""

    def __init__(self, spec: Spec, opt) -> None:
        self.rule = spec.rule
        self.groups = [({k: v for k, v in g.items() if k != "params"}, g["params"]) for g in opt.param_groups]
        params = [p for _, ps in self.groups for p in ps]
        self.w = {p: binary_signs(p).double() for p in params}
        self.m = {p: torch.zeros_like(self.w[p]) for p in params}
        self.v = {p: torch.zeros(0, dtype=torch.float64) for p in params}
        self.flips = {p: 0 for p in params}
        self.skips = {p: 0 for p in params}

    def step(self, grads: dict, t: int = 0) -> None:
        for hyper, params in self.groups:
            for p in params:
                old = self.w[p]
                self.w[p], self.m[p], self.v[p], ok = self.rule(old, self.m[p], self.v[p], grads[p].double(), t,
                                                                **hyper)
                self.flips[p] = int((self.w[p] != old).sum())
                self.skips[p] += not ok

    def assert_matches(self, opt) -> None:
        for p, w in self.w.items():
            assert torch.equal(binary_signs(p).double(), w)
            # exact: β = 0.5 and gradients in quarters keep every momentum a short binary fraction
            assert torch.equal(opt.state[p]["momentum"].double(), self.m[p])
            if "v" in opt.state[p]:
                torch.testing.assert_close(opt.state[p]["v"].double(), self.v[p], rtol=1e-6, atol=0)
        assert opt.flip_counts().tolist() == list(self.flips.values())
        assert opt.nonfinite_counts().tolist() == list(self.skips.values())


def _set_grad(p, g) -> None:
    if isinstance(p, PackedBinaryParameter):
        p.packed_grad = g.clone()
    else:
        p.grad = g.clone().to(p.dtype)


PATHS = pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
SHAPES = [(5,), (3, 4), (2, 3, 3)]  # packed: padded last bytes


@pytest.mark.parametrize("fused, storage, option", [
    (False, "dense", False), (False, "dense", True), (False, "packed", False), (False, "packed", True),
    (True, "dense", False), (True, "packed", True),  # (each compile costs seconds)
], ids=["eager-dense", "eager-dense-option", "eager-packed", "eager-packed-option", "fused-dense",
        "fused-packed-option"])
def test_steps_flip_exactly_by_the_hand_written_rule(spec, fused, storage, option):
    """Eight steps over three tensors, time steps 0-2, a NaN and an overflowing gradient on the way: the same
    weights (packed bits or dense ±1), momenta, v, flip and skip counts as the rule gives, so packed == dense and
    compiled == eager bit for bit."""
    gen = torch.Generator().manual_seed(0)
    signs = [(torch.randint(0, 2, s, generator=gen) * 2 - 1).float() for s in SHAPES]
    params = [PackedBinaryParameter.from_signs(s) if storage == "packed" else torch.nn.Parameter(s) for s in signs]
    opt = spec.make(params, threshold=0.25, fused=fused, **(spec.option if option else {}))
    ref = Reference(spec, opt)
    flipped = 0
    for step, t in enumerate([0, 1, 0, 2, 1, 2, 0, 1]):
        grads = {p: torch.randint(-8, 9, s, generator=gen) / 4 for p, s in zip(params, SHAPES)}
        if step == 3:
            grads[params[1]].view(-1)[2] = float("nan")
        if step == 5:
            grads[params[0]][1] = 3e38  # finite, but its square overflows float32
        for p, g in grads.items():
            _set_grad(p, g)
        opt.step(time_step=t)
        ref.step(grads, t)
        ref.assert_matches(opt)
        flipped += sum(ref.flips.values())
        assert all(torch.all(binary_signs(p).abs() == 1) for p in params)
    assert flipped > 0 and list(ref.skips.values()) == [1, 1, 0]
    # no latent weight: besides the sign, the optimizer keeps a momentum the size of W and counters (and v[t])
    for p in params:
        assert set(opt.state[p]) <= {"momentum", "last_flips", "nonfinite_steps", "v"}
        assert opt.state[p]["momentum"].shape == binary_signs(p).shape
        assert all(opt.state[p][k].numel() == 1 for k in ("last_flips", "nonfinite_steps"))


@pytest.mark.parametrize("bad_grad", [[float("nan"), 1e9, float("inf"), 1.0], [3.4e38, -3.4e38, 3.4e38, -3.4e38]],
                         ids=["nan-inf", "overflowing-squares"])
@PATHS
def test_a_nonfinite_gradient_skips_only_that_tensor(spec, fused, bad_grad):
    good, bad = torch.nn.Parameter(torch.tensor([1.0, -1.0, 1.0, -1.0])), torch.nn.Parameter(torch.ones(4))
    opt = spec.make([good, bad], fused=fused)
    ref = Reference(spec, opt)

    def step(g_good, g_bad):
        grads = {good: torch.tensor(g_good), bad: torch.tensor(g_bad)}
        for p, g in grads.items():
            _set_grad(p, g)
        opt.step()
        ref.step(grads)
        ref.assert_matches(opt)

    step([1.0, 1.0, 0.0, 0.0], [-0.5, -0.25, -0.5, -0.25])  # W·M < 0: bad keeps its weights
    before = {key: value.clone() for key, value in opt.state[bad].items()}
    for _ in range(2):
        step([1.0, 1.0, 0.0, 0.0], bad_grad)
        assert torch.equal(bad.detach(), torch.ones(4))  # untouched
        for key, value in before.items():
            if key not in ("last_flips", "nonfinite_steps"):
                assert torch.equal(opt.state[bad][key], value), key
            assert torch.isfinite(opt.state[bad][key].float()).all()
        assert opt.flip_counts().tolist()[1] == 0
    assert opt.nonfinite_counts().tolist() == [0, 2]
    assert opt.state[good]["momentum"].tolist() == [0.875, 0.875, 0.0, 0.0]  # the finite tensor stepped on
    step([0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0])  # an ordinary gradient afterwards flips again
    assert opt.flip_counts().tolist() == [0, 4]


@pytest.mark.parametrize("serialize", [False, True])
def test_state_dict_round_trip(spec, serialize):
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randint(0, 2, (4, 5), generator=gen).float() * 2 - 1)
    opt = spec.make([w], threshold=0.05, decay=0.8, **spec.option)
    for _ in range(3):  # T = 1: T-BSO's v has one entry in the checkpoint
        w.grad = torch.randn(4, 5, generator=gen)
        opt.step(time_step=0)

    state = opt.state_dict()
    if serialize:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = spec.cls([w2])  # hyper-parameters come from the state dict
    opt2.load_state_dict(state)
    assert opt2.param_groups[0].keys() == opt.param_groups[0].keys()
    for key, value in opt.param_groups[0].items():
        assert key == "params" or opt2.param_groups[0][key] == value, key
    assert opt2.state[w2].keys() == opt.state[w].keys()
    if spec.cls is TBSO:
        assert opt2.state[w2]["v"].shape == (1,)

    flipped = 0
    for step in range(12):  # T = 4 afterwards: T-BSO's v grows in both
        grad = torch.randn(4, 5, generator=gen)
        w.grad, w2.grad = grad.clone(), grad.clone()
        opt.step(time_step=step % 4)
        opt2.step(time_step=step % 4)
        assert torch.equal(w, w2)
        for key, value in opt.state[w].items():
            assert torch.equal(value, opt2.state[w2][key]), key
        assert torch.equal(opt.flip_counts(), opt2.flip_counts())
        flipped += int(opt.flip_counts().sum())
    assert flipped > 0
    if spec.cls is TBSO:
        assert opt2.state[w2]["v"].shape == (4,)
        assert torch.equal(opt.flip_thresholds(2), opt2.flip_thresholds(2))


@pytest.mark.parametrize("dtype, fused", [(torch.bfloat16, False), (torch.bfloat16, True), (torch.float16, False)],
                         ids=["bf16-eager", "bf16-fused", "fp16-eager"])
def test_low_precision_weights_keep_float32_momentum_and_int64_counters_through_a_checkpoint(spec, dtype, fused):
    w = torch.nn.Parameter(torch.tensor([1.0, -1.0, 1.0], dtype=dtype))
    opt = spec.make([w], threshold=0.0, fused=fused)
    w.grad = torch.tensor([1 / 3, -1 / 3, -1.0], dtype=dtype)
    opt.step(time_step=2)
    assert opt.state[w]["momentum"].dtype == torch.float32
    assert w.dtype == dtype and w.tolist() == [-1.0, 1.0, 1.0]  # W·M = [1/6, 1/6, -1/2] > 0

    # the base class would cast state to the weight's dtype; ours keeps every entry's dtype and value exactly
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = spec.cls([w2])
    opt2.load_state_dict(opt.state_dict())
    for key, value in opt.state[w].items():
        assert opt2.state[w2][key].dtype == value.dtype and torch.equal(opt2.state[w2][key], value), key
    assert opt2.state[w2]["last_flips"].dtype == opt2.state[w2]["nonfinite_steps"].dtype == torch.int64


def test_mixed_dtypes_in_one_group_match_separate_optimizers(spec):
    gen = torch.Generator().manual_seed(3)
    shapes_dtypes = [((6,), torch.float32), ((2, 3), torch.bfloat16), ((4,), torch.float16)]
    joint = [torch.nn.Parameter((torch.randint(0, 2, s, generator=gen) * 2 - 1).to(d)) for s, d in shapes_dtypes]
    alone = [torch.nn.Parameter(p.detach().clone()) for p in joint]
    opt = spec.make(joint, decay=0.7)
    singles = [spec.make([p], decay=0.7) for p in alone]
    flipped = 0
    for k in range(4):
        for p, q in zip(joint, alone):
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
            q.grad = p.grad.clone()
        opt.step(time_step=k % 2)
        for single in singles:
            single.step(time_step=k % 2)
        flipped += int(opt.flip_counts().sum())
    assert flipped > 0
    for p, q, single in zip(joint, alone, singles):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(value, single.state[q][key]), key


def test_closure_loss_is_returned_and_evaluated_with_grad(spec):
    w = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = spec.make([w], threshold=0.0, decay=0.0)

    def closure():
        opt.zero_grad()
        loss = (w * torch.tensor([1.0, 1.0])).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 0.0
    assert w.tolist() == [-1.0, -1.0]  # G = [1, 1], β = 0: W·M = [1, -1]


def test_param_groups_have_their_own_hyperparameters(spec):
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = spec.make([{"params": [a]}, {"params": [b], "threshold": 10.0}])
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    opt.step()
    # M = 0.5 everywhere; the flip limit is 0.1 (T-BSO: 0.1·sqrt(0.5 + 0.25)) for a, 100 times that for b
    assert a.tolist() == [-1.0, -1.0] and b.tolist() == [1.0, 1.0]
    assert opt.flip_counts().tolist() == [2, 0]
    # schedules change hyper-parameters through param_groups
    opt.param_groups[1]["threshold"] = 0.0
    opt.step()
    assert b.tolist() == [-1.0, -1.0]


def test_params_without_grad_are_skipped_and_not_counted(spec):
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = spec.make([a, b])
    assert opt.flip_counts().tolist() == [0, 0]  # never stepped
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    opt.step()
    assert opt.flip_counts().tolist() == [2, 2]
    b.grad = None
    opt.step()
    assert b.tolist() == [-1.0, -1.0]
    assert opt.flip_counts().tolist() == [0, 0]  # b did not move at this step
    assert opt.nonfinite_counts().tolist() == [0, 0]
    assert opt.flip_counts().dtype == opt.nonfinite_counts().dtype == torch.int64


# -- arguments both take: ValueError (TypeError for fused) naming the argument and the allowed range --------------


def _binary(*shape):
    return torch.nn.Parameter(torch.ones(*shape))


@pytest.mark.parametrize("value, message", [(-1.0, r", got -1\.0"), (-1e-9, ""), (float("inf"), ""),
                                            (float("nan"), "")])
def test_bad_threshold(spec, value, message):
    with pytest.raises(ValueError, match=r"threshold must be a finite number >= 0" + message):
        spec.make([_binary(3)], threshold=value)
    with pytest.raises(ValueError, match=r"threshold must be a finite number >= 0"):  # in a param group too
        spec.make([{"params": [_binary(3)], "threshold": value}])


@pytest.mark.parametrize("value", [1.0, -0.1])
def test_bad_momentum_decay(spec, value):
    message = spec.decay_name + r" must be in \[0, 1\), got " + repr(value).replace(".", r"\.")
    with pytest.raises(ValueError, match=message):
        spec.make([_binary(3)], decay=value)


def test_hyperparameters_set_in_param_groups_are_checked_at_step(spec):
    w = _binary(2)
    w.grad = torch.ones(2)
    opt = spec.make([w])
    opt.param_groups[0]["threshold"] = -2.0
    with pytest.raises(ValueError, match="threshold must be a finite number >= 0, got -2.0"):
        opt.step(time_step=0)


def test_empty_parameter_list(spec):
    with pytest.raises(ValueError, match=f"{spec.cls.__name__} got an empty parameter list"):
        spec.cls([])


@pytest.mark.parametrize("bad_value", [0.0, 0.5, -2.0, float("nan")])
def test_non_binary_parameter_is_rejected_with_its_index_and_shape(spec, bad_value):
    params = [_binary(2), _binary(4), _binary(1), _binary(64, 3, 3, 3)]
    with torch.no_grad():
        params[3][1, 2, 0, 0] = bad_value
    with pytest.raises(ValueError, match=r"parameter 3 \(shape \[64, 3, 3, 3\]\) holds values other than ±1"):
        spec.cls(params)


def test_non_binary_parameter_in_added_group_is_rejected_and_not_kept(spec):
    opt = spec.cls([_binary(2)])
    with pytest.raises(ValueError, match=r"parameter 1 \(shape \[3\]\)"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("time_step", [-1, 1.0, "0", True])
def test_bad_time_step(spec, time_step):
    w = _binary(2)
    w.grad = torch.ones(2)
    with pytest.raises(ValueError, match="time_step must be an int >= 0"):
        spec.cls([w]).step(time_step=time_step)


@pytest.mark.parametrize("value", ["auto", "yes", 1])
def test_fused_must_be_a_bool_or_none(spec, value):
    with pytest.raises(TypeError, match=r"fused must be a bool or None \(auto\), got " + repr(value)):
        spec.cls([_binary(2)], fused=value)
