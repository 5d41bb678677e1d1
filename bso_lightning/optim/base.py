"""The base of BSO and T-BSO: state bookkeeping, flip accounting, stepping inside the backward, checkpoints.

The update math lives in :mod:`bso_lightning.optim.functional`; this class gathers each group's tensors and
calls it. Binary weights may be dense (float ±1) or packed as bits (:class:`~bso_lightning.nn.packed.PackedBinaryParameter`,
whose gradient the layer hands over as ``packed_grad``).
"""

from __future__ import annotations

import functools
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from bso_lightning.nn.packed import binary_grad, binary_shape, clear_binary_grad, is_packed
from bso_lightning.optim.checks import check_binary_values, check_time_step
from bso_lightning.optim.functional import (NOISE_WIDTH, dequantize_int8, int8_scale_size, quantize_int8_,
                                            workspace_bytes)

#: Dtypes of the counters (the momentum's is the optimizer's ``momentum_dtype``; T-BSO's v and the block scales of
#: an int8 momentum are float32).
STATE_DTYPES: dict[str, torch.dtype] = {"v": torch.float32, "last_flips": torch.int64, "nonfinite_steps": torch.int64,
                                        "momentum_scale": torch.float32}
MOMENTUM_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8}
#: Device types on which ``fused=None`` (auto) steps through the compiled update (where Triton is available).
AUTO_FUSED_DEVICE_TYPES: tuple[str, ...] = ("cuda",)


@functools.cache
def _triton_available() -> bool:
    from torch.utils._triton import has_triton

    return has_triton()


def _is_compile_error(error: BaseException) -> bool:
    """Whether ``error`` comes from building the compiled step (no Triton, no C compiler, ...)."""
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import InductorError

    return isinstance(error, (BackendCompilerFailed, InductorError))


def check_momentum_dtype(value: Any) -> torch.dtype:
    """``float32``, ``bfloat16`` or ``int8`` (a ``torch.dtype`` or its name)."""
    allowed = tuple(MOMENTUM_DTYPES)
    if isinstance(value, torch.dtype) and value in MOMENTUM_DTYPES.values():
        return value
    if isinstance(value, str) and value in MOMENTUM_DTYPES:
        return MOMENTUM_DTYPES[value]
    raise ValueError(f"momentum_dtype must be one of {allowed}, got {value!r}")


class BinaryOptimizer(torch.optim.Optimizer):
    """Base of :class:`~bso_lightning.optim.BSO` and :class:`~bso_lightning.optim.TBSO`.

    Subclasses implement ``_check_group(group)`` and ``_update(group, params, grads, states, noises, t)``
    and may extend ``_state_keys`` / ``_init_state``.

    Args:
        momentum_dtype: ``float32`` (default), ``bfloat16`` (2 bytes per weight) or ``int8`` (1 byte per weight +
            one float32 scale per block of 256: block-wise absmax codes). Both are stored by stochastic rounding
            from a generator seeded with ``rounding_seed``, whose state is saved in ``state_dict``.
        fused: step through the ``torch.compile``d update (an instance setting, not saved: a checkpoint resumes
            with either path). ``None`` (default, auto): compiled on CUDA where Triton is available (each tensor's
            update fused into a few kernels instead of the eager step's many small ones; the first step
            compiles), eager on CPU (no compile time, no C++ compiler needed); decided per device at each step by
            :meth:`fused_on`. In auto mode a compiled step that cannot be built falls back to the eager one with a
            warning.
    """

    _state_keys: frozenset[str] = frozenset({"momentum", "last_flips", "nonfinite_steps"})

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any], fused: bool | None = None,
                 momentum_dtype: torch.dtype | str = torch.float32, rounding_seed: int = 0) -> None:
        if fused is not None and not isinstance(fused, bool):
            raise TypeError(f"fused must be a bool or None (auto), got {fused!r}")
        if not isinstance(rounding_seed, int) or isinstance(rounding_seed, bool):
            raise ValueError(f"rounding_seed must be an int, got {rounding_seed!r}")
        self.fused = fused
        self._eager_devices: set[torch.device] = set()  # auto mode: devices whose compiled step failed to build
        self.momentum_dtype = check_momentum_dtype(momentum_dtype)
        self.rounding_seed = rounding_seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self._noise_rows: dict[torch.device, Tensor] = {}
        self._backward_hooks: list[Any] = []
        self._backward_time_step = 0
        self._stepped_in_backward: set[int] = set()
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of Tensors or dicts, got a Tensor")
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list; pass at least one binary parameter")
        super().__init__(params, defaults)

    # -- construction ------------------------------------------------------------------

    def _check_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        """Add the missing state entries of ``p`` (all of them at its first step)."""
        if "momentum" not in state:
            state["momentum"] = torch.zeros(binary_shape(p), dtype=self.momentum_dtype, device=p.device)
        if self.momentum_dtype == torch.int8 and "momentum_scale" not in state:
            state["momentum_scale"] = torch.zeros(int8_scale_size(binary_shape(p).numel()), dtype=torch.float32,
                                                  device=p.device)
        for key in ("last_flips", "nonfinite_steps"):
            if key not in state:
                state[key] = torch.zeros((), dtype=torch.int64, device=p.device)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after checking its hyper-parameters and that its dense weights are ±1."""
        first_index = sum(len(g["params"]) for g in self.param_groups)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_group(group)
            check_binary_values([p for p in group["params"] if not is_packed(p)], first_index)
        except ValueError:
            self.param_groups.pop()
            raise

    # -- stepping ----------------------------------------------------------------------

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Any]], noises: list[Tensor | None] | None, time_step: int,
                fused: bool) -> None:
        raise NotImplementedError

    def fused_on(self, device: torch.device) -> bool:
        """Whether the step of tensors on ``device`` runs compiled: ``fused`` if set, else (auto) on CUDA with
        Triton (unless building it failed there), eager elsewhere."""
        if self.fused is not None:
            return self.fused
        return device.type in AUTO_FUSED_DEVICE_TYPES and device not in self._eager_devices and _triton_available()

    @staticmethod
    def _evaluate(closure: Callable[[], Any] | None) -> Any:
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def _rounding_noise(self, params: list[Tensor]) -> list[Tensor | None] | None:
        """Per tensor, a row of uniform 16-bit integers for the stochastic rounding of a bfloat16 or int8 momentum
        (None for float32).

        Each row is a fixed random row (``NOISE_WIDTH`` entries, from ``rounding_seed``) plus a fresh random
        offset per tensor and step, modulo 2**16: every entry's noise is uniform and independent across steps, so
        the rounding is unbiased, at the cost of one small draw per tensor instead of one per weight.
        """
        if self.momentum_dtype == torch.float32:
            return None
        noises = []
        for p in params:
            gen = self._generators.get(p.device)
            if gen is None:
                gen = self._generators[p.device] = torch.Generator(device=p.device)
                gen.manual_seed(self.rounding_seed)
            row = self._noise_rows.get(p.device)
            if row is None:
                row_gen = torch.Generator(device=p.device)
                row_gen.manual_seed(self.rounding_seed + 1)
                row = self._noise_rows[p.device] = torch.randint(0, 1 << 16, (NOISE_WIDTH,), dtype=torch.int32,
                                                                 device=p.device, generator=row_gen)
            offset = torch.randint(0, 1 << 16, (1,), dtype=torch.int32, device=p.device, generator=gen)
            noises.append(torch.bitwise_and(row + offset, 0xFFFF))
        return noises

    def _step_params(self, group: dict[str, Any], params: list[Tensor], time_step: int) -> None:
        """Run the update on ``params`` (all with a gradient, state initialised), one call per device."""
        by_device: dict[torch.device, list[Tensor]] = defaultdict(list)
        for p in params:
            by_device[p.device].append(p)
        for device, ps in by_device.items():
            args = (group, ps, [binary_grad(p) for p in ps], [self.state[p] for p in ps], self._rounding_noise(ps),
                    time_step)
            fused = self.fused_on(device)
            try:
                self._update(*args, fused=fused)
            except Exception as error:  # a build error is raised before the compiled graph changed anything
                if self.fused is not None or not fused or not _is_compile_error(error):
                    raise
                self._eager_devices.add(device)
                reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
                warnings.warn(f"{type(self).__name__}: the compiled step could not be built on {device} ({reason}); "
                              "stepping eagerly there (set fused=False to skip the attempt)", RuntimeWarning)
                self._update(*args, fused=False)

    def _params_with_grad(self, group: dict[str, Any]) -> list[Tensor]:
        """Parameters of ``group`` with a pending gradient (state initialised); the others' ``last_flips``
        become 0, except those already stepped inside this backward."""
        params = []
        for p in group["params"]:
            grad = binary_grad(p)
            if grad is None or p.numel() == 0:
                state = self.state.get(p)
                if state and "last_flips" in state and id(p) not in self._stepped_in_backward:
                    state["last_flips"].zero_()
                continue
            if grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            self._ensure_state(p)
            params.append(p)
        return params

    def _ensure_state(self, p: Tensor) -> None:
        state = self.state[p]
        keys = self._state_keys | ({"momentum_scale"} if self.momentum_dtype == torch.int8 else set())
        if not keys <= state.keys():
            self._init_state(p, state)

    def _groups_to_step(self) -> Iterator[tuple[dict[str, Any], list[Tensor]]]:
        """Each group (hyper-parameters re-checked: a schedule may have changed them) with its parameters
        that have a gradient; groups without any are skipped."""
        for group in self.param_groups:
            self._check_group(group)
            params = self._params_with_grad(group)
            if params:
                yield group, params

    @torch.no_grad()
    def _step(self, closure: Callable[[], Any] | None, time_step: int) -> Any:
        loss = self._evaluate(closure)
        for group, params in self._groups_to_step():
            self._step_params(group, params, time_step)
        self._stepped_in_backward.clear()
        return loss

    # -- stepping inside the backward (no whole-model gradient) -----------------------------

    @contextmanager
    def stepping_in_backward(self, time_step: int = 0) -> Iterator[None]:
        """Inside the block, each binary tensor is stepped (for time step ``time_step``) as soon as the backward has
        completed its gradient, and the gradient is freed at once; no ``step()`` is needed after it::

            with binary_opt.stepping_in_backward(time_step=t):
                loss.backward()

        The peak then holds one layer's weight gradient instead of the model's. Not for DDP (the gradient must be
        all-reduced first) or for accumulating gradients over several backwards. ``flip_counts()`` afterwards
        reports this backward's flips (0 for tensors that got no gradient).
        """
        self.set_backward_time_step(time_step)
        enabled_here = not self.steps_in_backward
        if enabled_here:
            self.step_in_backward(True)
        self._stepped_in_backward.clear()
        try:
            yield
        finally:
            if enabled_here:
                self.step_in_backward(False)
            for p in self.binary_parameters():
                state = self.state.get(p)
                if state and "last_flips" in state and id(p) not in self._stepped_in_backward:
                    state["last_flips"].zero_()

    def step_in_backward(self, enabled: bool = True) -> None:
        """Step each binary tensor as soon as its gradient is complete, then free that gradient (until switched off).

        With it, the peak holds one layer's weight gradient instead of the model's. Set the time step with
        :meth:`set_backward_time_step` before each backward; ``step()`` then only finishes the accounting.
        Not for DDP (the gradient must be all-reduced first) or gradient accumulation over steps.
        :meth:`stepping_in_backward` does the same for one backward.
        """
        for handle in self._backward_hooks:
            handle.remove()
        self._backward_hooks = []
        if not enabled:
            return
        for p in chain.from_iterable(g["params"] for g in self.param_groups):
            register = p.register_grad_ready_hook if is_packed(p) else p.register_post_accumulate_grad_hook
            self._backward_hooks.append(register(self._backward_hook))

    def set_backward_time_step(self, time_step: int) -> None:
        """The time step t that :meth:`step_in_backward` passes to the update (an int >= 0)."""
        self._backward_time_step = check_time_step(time_step)

    def _group_of(self, p: Tensor) -> dict[str, Any]:
        """The param group holding ``p``, looked up at call time (``load_state_dict`` replaces the group dicts)."""
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                return group
        raise KeyError("parameter is not in this optimizer")

    def _backward_hook(self, p: Tensor) -> None:
        """Step ``p`` now that its gradient is complete, then free the gradient."""
        group = self._group_of(p)
        with torch.no_grad():
            self._check_group(group)
            self._ensure_state(p)
            self._step_params(group, [p], self._backward_time_step)
        clear_binary_grad(p)
        self._stepped_in_backward.add(id(p))

    @property
    def steps_in_backward(self) -> bool:
        return bool(self._backward_hooks)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Also drop the gradients handed over by packed layers."""
        super().zero_grad(set_to_none=set_to_none)
        for p in chain.from_iterable(g["params"] for g in self.param_groups):
            if is_packed(p):
                p.packed_grad = None

    # -- accounting --------------------------------------------------------------------

    def binary_parameters(self) -> list[Tensor]:
        """All parameters of all groups, flattened in order."""
        return [p for group in self.param_groups for p in group["params"]]

    def _stacked(self, key: str) -> Tensor:
        params = self.binary_parameters()
        device = params[0].device
        values = []
        for p in params:
            state = self.state.get(p)
            value = state[key] if state and key in state else torch.zeros((), dtype=torch.int64, device=p.device)
            values.append(value.to(device))
        return torch.stack(values)

    def flip_counts(self) -> Tensor:
        """int64 [n_params]: entries flipped at the last step (0 for params never stepped)."""
        return self._stacked("last_flips")

    def nonfinite_counts(self) -> Tensor:
        """int64 [n_params]: steps skipped per tensor because its update was not finite."""
        return self._stacked("nonfinite_steps")

    def memory_bytes(self) -> dict[str, int]:
        """Bytes this optimizer keeps between steps, by kind (everything counted; ``benchmarks/state_bytes.py``).

        ``weights``: the binary tensors (packed: their bits); ``momentum``; ``momentum_scale`` (int8 block scales);
        ``v`` (T-BSO); ``counters`` (flips, skipped steps); ``rounding_noise`` (the random rows and generator states
        of stochastic rounding); ``workspaces`` (the eager step's reused buffers on these devices, shared by every
        optimizer there); ``gradients``: binary gradients alive now (none between steps after ``zero_grad()`` or
        when stepping inside the backward).
        """
        def nbytes(t: Tensor) -> int:
            return t.numel() * t.element_size()

        params = self.binary_parameters()
        kinds = {"momentum": "momentum", "momentum_scale": "momentum_scale", "v": "v", "last_flips": "counters",
                 "nonfinite_steps": "counters"}
        out = dict.fromkeys(("weights", "momentum", "momentum_scale", "v", "counters", "rounding_noise",
                             "workspaces", "gradients"), 0)
        for p in params:
            out["weights"] += nbytes(p)
            grad = binary_grad(p)
            out["gradients"] += nbytes(grad) if grad is not None else 0
            for key, value in self.state.get(p, {}).items():
                if isinstance(value, Tensor):
                    out[kinds.get(key, key)] = out.get(kinds.get(key, key), 0) + nbytes(value)
        out["rounding_noise"] = (sum(nbytes(row) for row in self._noise_rows.values())
                                 + sum(nbytes(gen.get_state()) for gen in self._generators.values()))
        out["workspaces"] = sum(workspace_bytes(device) for device in {p.device for p in params})
        return out

    # -- checkpoints -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Optimizer.state_dict`` plus the stochastic-rounding generators' states (exact resume)."""
        out = super().state_dict()
        if self._generators:
            out["rounding_rng"] = {str(device): gen.get_state() for device, gen in self._generators.items()}
        return out

    def _momentum_as_own_dtype(self, key: Any, values: dict[str, Any]) -> dict[str, Any]:
        """A saved parameter state with its momentum converted to this optimizer's ``momentum_dtype`` storage."""
        momentum, scale = values.get("momentum"), values.get("momentum_scale")
        if not isinstance(momentum, Tensor):
            return values
        if (momentum.dtype == torch.int8) != isinstance(scale, Tensor):
            raise ValueError(f"optimizer state of parameter {key}: an int8 momentum needs its float32 "
                             "'momentum_scale' and only an int8 momentum has one")
        if isinstance(scale, Tensor) and scale.numel() != int8_scale_size(momentum.numel()):
            raise ValueError(f"optimizer state of parameter {key}: 'momentum_scale' has {scale.numel()} entries, "
                             f"its int8 momentum of {momentum.numel()} entries needs {int8_scale_size(momentum.numel())}")
        values = dict(values)
        if momentum.dtype == torch.int8 and self.momentum_dtype != torch.int8:
            values["momentum"] = dequantize_int8(momentum, scale.float())
            del values["momentum_scale"]
        elif momentum.dtype != torch.int8 and self.momentum_dtype == torch.int8:
            m = momentum.to(torch.float32, copy=True)
            values["momentum"] = torch.empty_like(m, dtype=torch.int8)
            values["momentum_scale"] = torch.zeros(int8_scale_size(m.numel()), dtype=torch.float32, device=m.device)
            quantize_int8_(m, values["momentum"], values["momentum_scale"], None)
        return values

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like ``torch.optim.Optimizer`` but keep the state dtypes (momentum: ``momentum_dtype``; counters int64).

        (The base class would cast every state tensor to the parameter's dtype: the int64 counters, and the
        momentum of a bf16 or packed weight, would be corrupted.) A momentum of any ``momentum_dtype`` loads into
        an optimizer of any other (an int8 one is dequantised; one loaded into an int8 optimizer is quantised,
        rounding to nearest).
        """
        state_dict = dict(state_dict)
        rng_states = state_dict.pop("rounding_rng", {})
        saved_state = state_dict["state"]
        super().load_state_dict({**state_dict, "state": {}})
        id_map = dict(zip(chain.from_iterable(g["params"] for g in state_dict["param_groups"]),
                          chain.from_iterable(g["params"] for g in self.param_groups)))
        dtypes = {**STATE_DTYPES, "momentum": self.momentum_dtype}
        for key, values in saved_state.items():
            if key not in id_map:
                continue
            param = id_map[key]
            self.state[param] = {
                name: (value.to(device=param.device, dtype=dtypes.get(name, value.dtype), copy=True)
                       if isinstance(value, Tensor) else value)
                for name, value in self._momentum_as_own_dtype(key, values).items()
            }
            momentum = self.state[param].get("momentum")
            if momentum is not None and momentum.shape != binary_shape(param):
                raise ValueError(f"optimizer state of parameter {key} has a momentum of shape {list(momentum.shape)}, "
                                 f"but the weight has shape {list(binary_shape(param))}")
        for device_name, rng_state in rng_states.items():
            device = torch.device(device_name)
            gen = self._generators.get(device)
            if gen is None:
                gen = self._generators[device] = torch.Generator(device=device)
            gen.set_state(rng_state)
