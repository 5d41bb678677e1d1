"""The online BSNN classifier: BSO/T-BSO flips binary weights at every time step (paper Alg. 1).

Per training batch: reset the neurons; for t = 0..T−1 run one forward step, compute L[t] (Eq. 8),
backpropagate spatially only (the neuron state is detached between steps), and — in ``realtime`` mode —
step BSO/T-BSO (with t) and SGD. In ``accumulated`` mode gradients add up over the T steps and both
optimizers step once after the last step (T-BSO then uses time_step 0).

Step counting: Lightning's ``trainer.global_step`` counts every ``optimizer.step()`` call. With two
optimizers it grows by 2·T per batch in ``realtime`` mode and by 2 per batch in ``accumulated`` mode, so
``max_steps`` is in those units; metrics are logged per batch, and the cosine learning rate and the BSO
hyper-parameter schedules advance once per epoch (or per batch, with ``schedule_interval="step"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Optional

import torch
from torch import Tensor

from bso_lightning.models import build_model_from_hparams
from bso_lightning.nn import BinaryLayer, binarize_
from bso_lightning.nn.layers import WEIGHT_STORAGES
from bso_lightning.nn.packed import binary_grad, is_packed
from bso_lightning.nn.saved_activations import SAVED_ACTIVATION_DTYPES, compact_saved_activations
from bso_lightning.optim.base import MOMENTUM_DTYPES
from bso_lightning.optim import (
    BSO, TBSO, BinaryHyperparameterScheduler, ConstantDecay, InverseSqrtDecay, StepDecay, check_partition,
    split_parameters,
)
from bso_lightning.optim.checks import check_betas, check_decay, check_eps, check_threshold
from bso_lightning.optim.schedules import RUN_DECAYS, run_decay
from bso_lightning.tasks.base import UPDATES, TimeSteppedClassifier, check_choice
from bso_lightning.tasks.batch import check_time_steps
from bso_lightning.tasks.faults import (
    CheckpointError, NonFiniteError, all_finite, check_binary_weights, check_compatible, describe_nonfinite,
    nonfinite_gradients, read_checkpoint, report_skipped_batches, step_if,
)
from bso_lightning.tasks.state_guard import check_loaded_state

OPTIMIZERS = ("bso", "tbso")
EPS_PLACEMENTS = ("inside", "outside")
LR_SCHEDULES = ("cosine", "constant")
SCHEDULES = ("constant", "step", "inv_sqrt", *RUN_DECAYS)
NONFINITE = ("skip", "raise")


class OnlineClassifier(TimeSteppedClassifier):
    """Binary spiking classifier trained online with BSO or T-BSO (binary weights) and SGD (the rest).

    Args:
        arch: model factory name (``vgg11``, ``resnet18``, ``small_cnn``).
        num_classes: number of classes (linked from the DataModule by the CLI).
        in_channels: input channels (linked from the DataModule by the CLI).
        arch_kwargs: extra keyword arguments of the model factory (e.g. ``{"width": 32}``, ``{"stem": "cifar"}``).
        time_steps: T, the number of time steps each sample is presented for.
        optimizer: ``"tbso"`` (Eq. 13–14) or ``"bso"`` (Eq. 11–12) for the binary weights.
        trace: presynaptic trace for the online gradient, ``"ottt"`` or ``"ndot"`` (Eq. 6–7), or
            ``"ndot_reference"``, the NDOT decay of the authors' code (docs/fidelity.md).
        update_mode: ``"realtime"`` (step after every t, the paper's default) or ``"accumulated"`` (once per batch).
        threshold: γ, the flip threshold.
        beta: BSO momentum decay β.
        betas: T-BSO decays (β1, β2).
        eps: T-BSO ε.
        eps_placement: T-BSO only — ``"inside"`` (paper Eq. 14: flip where W·M > γ·sqrt(v[t] + ε)) or
            ``"outside"`` (the authors' code: W·M / (sqrt(v[t]) + ε) > γ).
        reset_momentum_on_flip: BSO only — zero the momentum where a weight flipped (the authors' code).
        fused_optimizer: step BSO/T-BSO through their ``torch.compile``d update (``fused=True``): the same
            update (up to float32 rounding of the momentum), about 2× faster; the first step compiles
            (~20 s on CPU, needs a C++ compiler; Triton on CUDA). ``None`` (default): compiled on CUDA, eager
            on CPU (``BSO``'s ``fused=None``).
        schedule: decay of γ and 1 − β (β1). Default ``"run_exp"`` with ``schedule_final=1e-3`` (measured:
            docs/hyperparameters.md). In ``schedule_interval`` units (the paper configs): ``"constant"``,
            ``"step"`` (× ``schedule_factor`` every ``schedule_every`` units) or ``"inv_sqrt"``
            (1/sqrt(1 + k/``schedule_scale``)).
            Relative to the run (they advance once per training batch, k/total = the fraction of the run's
            batches done, ``schedule_interval`` is ignored): ``"run_step"`` (× ``schedule_factor`` every
            ``schedule_fraction`` of the run; 0.125 is the authors' 50-of-400 epochs), ``"run_exp"`` (log-linear
            from 1 to ``schedule_final`` at the end) or ``"run_inv_sqrt"`` (1/√k reaching ``schedule_final``).
            See docs/hyperparameters.md.
        schedule_interval: unit k of the schedule: ``"epoch"`` or ``"step"`` (one per training batch).
        schedule_offset: ``schedule="step"`` only — delay every decay step by this many units (the authors'
            scheduler decays one epoch later than ``offset=0``: their first decayed epoch is 51, not 50).
        lr: SGD learning rate of the full-precision parameters.
        lr_schedule: ``"cosine"`` (annealed to 0 over ``cosine_epochs``) or ``"constant"`` (the authors' code:
            their cosine schedule is attached to the wrapper optimizer, whose learning rate nothing reads).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        cosine_epochs: length of the cosine annealing in epochs (default: ``trainer.max_epochs``; the authors'
            scripts name ``T_max=300`` for 400 epochs).
        mse_weight: α of the loss (Eq. 8).
        decay: membrane decay λ of every neuron.
        v_threshold: firing threshold Vth of every neuron.
        bn_recalibration_batches: before every validation/test/predict epoch, re-estimate BatchNorm
            statistics over this many training batches with the current weights (0 disables it). Evaluation
            logs ``{val,test}/acc`` with the re-estimated statistics and ``{val,test}/acc_running_bn`` with the
            running ones training left (the authors' evaluation; one more forward per batch while re-estimating).
        batchnorm_statistics: ``"per_time_step"`` (default; this library's variant, docs/fidelity.md): every
            BatchNorm also keeps running statistics per time step and evaluation normalises step t with its own
            (:class:`~bso_lightning.nn.time_step_batchnorm.TimeStepBatchNorm2d`): evaluation then normalises as
            training does (measured on MNIST 28×28: 37% → 80% for the same kept weights,
            docs/hyperparameters.md). ``"pooled"``: one set of statistics for all steps (plain BatchNorm, the
            paper's and the authors' code; ``configs/reference/paper.yaml``). Training is the same either way.
        nonfinite: what NaN/Inf does (see ``bso_lightning.tasks.faults``). ``"skip"``: a batch whose input is
            not finite is dropped (one host sync per batch for that check; one summary warning per epoch); a
            non-finite gradient changes nothing (BSO/T-BSO skip that tensor, the SGD step is undone on the
            device); both are counted
            and logged as ``faults/nonfinite_inputs`` (batches) and ``faults/nonfinite_grads`` (skipped updates:
            one per binary tensor and time step, plus one per full-precision step). ``"raise"``: stop with
            ``NonFiniteError`` naming the batch, the time step and the culprit (one host sync per time step).
            A NaN/Inf in the trained state itself (parameters, BatchNorm statistics) always stops the run
            (``bso_lightning.tasks.state_guard``).
        max_skipped_fraction: with ``nonfinite="skip"``, an epoch that drops more than this fraction of its
            training batches (all of them, always) stops with ``NonFiniteError``; each epoch that dropped any
            logs one summary warning (how many, which).
        pretrained: a Lightning checkpoint whose model weights (binary ones included) initialise this model —
            only the weights: epochs, optimizer state and schedules start afresh (ImageNet: pre-train with
            T = 1, then fine-tune with T = 4–6 from those weights). The architecture must match.
    """

    def __init__(
        self,
        arch: str = "small_cnn",
        num_classes: int = 10,
        in_channels: int = 1,
        arch_kwargs: Optional[dict[str, Any]] = None,
        time_steps: int = 4,
        optimizer: Literal["bso", "tbso"] = "tbso",
        trace: Literal["ottt", "ndot", "ndot_reference"] = "ottt",
        update_mode: Literal["realtime", "accumulated"] = "realtime",
        threshold: float = 5e-7,
        beta: float = 0.999,
        betas: tuple[float, float] = (0.999, 0.99999),
        eps: float = 1e-10,
        eps_placement: Literal["inside", "outside"] = "inside",
        reset_momentum_on_flip: bool = False,
        fused_optimizer: Optional[bool] = None,
        weight_storage: Literal["dense", "packed"] = "packed",
        momentum_dtype: Literal["float32", "bfloat16", "int8"] = "float32",
        step_in_backward: bool = True,
        saved_activation_dtype: Literal["float32", "bfloat16"] = "float32",
        schedule: Literal["constant", "step", "inv_sqrt", "run_step", "run_exp", "run_inv_sqrt"] = "run_exp",
        schedule_interval: Literal["epoch", "step"] = "epoch",
        schedule_every: int = 50,
        schedule_factor: float = 0.1,
        schedule_scale: float = 1.0,
        schedule_offset: int = 0,
        schedule_fraction: float = 0.125,
        schedule_final: float = 1e-3,
        lr: float = 0.1,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        cosine_epochs: Optional[int] = None,
        mse_weight: float = 0.05,
        decay: float = 0.5,
        v_threshold: float = 1.0,
        bn_recalibration_batches: int = 20,
        batchnorm_statistics: Literal["per_time_step", "pooled"] = "per_time_step",
        nonfinite: Literal["skip", "raise"] = "skip",
        max_skipped_fraction: float = 0.5,
        pretrained: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_choice("optimizer", optimizer, OPTIMIZERS)
        check_choice("update_mode", update_mode, UPDATES)
        check_choice("schedule", schedule, SCHEDULES)
        check_choice("schedule_interval", schedule_interval, ("epoch", "step"))
        check_choice("nonfinite", nonfinite, NONFINITE)
        check_choice("eps_placement", eps_placement, EPS_PLACEMENTS)
        check_choice("weight_storage", weight_storage, WEIGHT_STORAGES)
        check_choice("momentum_dtype", momentum_dtype, tuple(MOMENTUM_DTYPES))
        check_choice("saved_activation_dtype", saved_activation_dtype, SAVED_ACTIVATION_DTYPES)
        check_choice("lr_schedule", lr_schedule, LR_SCHEDULES)
        if not isinstance(schedule_offset, int) or isinstance(schedule_offset, bool) or schedule_offset < 0:
            raise ValueError(f"schedule_offset must be an int >= 0, got {schedule_offset!r}")
        if schedule_offset and schedule != "step":
            raise ValueError(f"schedule_offset={schedule_offset} delays the steps of schedule='step'; "
                             f"schedule={schedule!r} has none (set schedule_offset: 0 or schedule: step)")
        if not 0.0 <= max_skipped_fraction <= 1.0:
            raise ValueError(f"max_skipped_fraction must lie in [0, 1], got {max_skipped_fraction!r}")
        # every optimizer hyper-parameter is checked, also those the chosen optimizer ignores (beta for T-BSO, ...)
        check_threshold(threshold), check_decay(beta, "beta"), check_betas(betas), check_eps(eps)
        self._check_shared_hyperparameters()
        self.model = build_model_from_hparams(self.hparams)  # (binary weights stored as weight_storage says)
        self.split = split_parameters(self.model)
        if not self.split.binary:
            raise ValueError(f"arch {arch!r} has no binary parameters for {optimizer.upper()} to train")
        self._make_binary_optimizer()  # validates the BSO/T-BSO hyper-parameters before any training
        for name, value in (("schedule_fraction", schedule_fraction), ("schedule_final", schedule_final)):
            if not 0.0 < value <= 1.0:  # checked even where the schedule does not use it
                raise ValueError(f"{name} must lie in (0, 1], got {value!r}")
        self._make_schedule_decay()
        if pretrained:
            self._load_pretrained_weights(pretrained)
        self._make_metrics(num_classes)
        # [input batches skipped, full-precision steps skipped] for non-finite values; saved in checkpoints
        self.register_buffer("_fault_counts", torch.zeros(2, dtype=torch.int64), persistent=False)
        self._epoch_skips: list[str] = []  # this epoch's batches dropped for NaN/Inf inputs (one summary per epoch)
        self._epoch_batches = 0

    def _load_pretrained_weights(self, path: str) -> None:
        # weights_only=True; names the file if it is missing, truncated, unsafe, of another architecture or not finite
        checkpoint = read_checkpoint(path)
        if isinstance(checkpoint.get("hyper_parameters"), Mapping):
            check_compatible(checkpoint["hyper_parameters"], self.hparams, path)
        weights = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
        check_loaded_state(weights, path)
        binary_keys = {f"{name}.weight" for name, m in self.model.named_modules() if isinstance(m, BinaryLayer)}
        for key in binary_keys & weights.keys():  # ±1 in a BSO checkpoint; a latent-weight checkpoint maps to ±1
            if weights[key].is_floating_point():
                weights[key] = binarize_(weights[key].clone())
        try:
            self.model.load_state_dict(weights, strict=True)
        except RuntimeError as error:
            raise CheckpointError(path, f"its model weights do not fit arch {self.hparams.arch!r}: {error}") from error

    # ----------------------------------------------------------------- optimizers
    def _make_binary_optimizer(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "bso":
            return BSO(self.split.binary, threshold=hp.threshold, beta=hp.beta,
                       reset_momentum_on_flip=hp.reset_momentum_on_flip, fused=hp.fused_optimizer,
                       momentum_dtype=hp.get("momentum_dtype", "float32"))
        return TBSO(self.split.binary, threshold=hp.threshold, betas=tuple(hp.betas), eps=hp.eps,
                    eps_placement=hp.eps_placement, fused=hp.fused_optimizer,
                    momentum_dtype=hp.get("momentum_dtype", "float32"))

    def _make_schedule_decay(self, run_length: int = 1):
        """The decay of γ and 1 − β; a ``run_*`` one over ``run_length`` batches (1: only to check the arguments)."""
        hp = self.hparams
        if hp.schedule in RUN_DECAYS:
            return run_decay(hp.schedule, run_length, fraction=hp.schedule_fraction, factor=hp.schedule_factor,
                             final=hp.schedule_final)
        if hp.schedule == "step":
            return StepDecay(every=hp.schedule_every, factor=hp.schedule_factor, offset=hp.schedule_offset)
        if hp.schedule == "inv_sqrt":
            return InverseSqrtDecay(scale=hp.schedule_scale)
        return ConstantDecay()

    def configure_optimizers(self):
        hp = self.hparams
        binary_opt = self._make_binary_optimizer()
        fp_opt = torch.optim.SGD(self.split.full_precision, lr=hp.lr, momentum=hp.momentum,
                                 weight_decay=hp.weight_decay)
        check_partition(self.model, [binary_opt, fp_opt])
        if hp.lr_schedule == "constant":
            lr_schedule = torch.optim.lr_scheduler.ConstantLR(fp_opt, factor=1.0, total_iters=0)
        else:
            lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(fp_opt, T_max=self._cosine_epochs(), eta_min=0.0)
        # a run_* decay needs the run's length, which the fit loop knows once it has set up its data (in
        # on_train_start, after a resumed run's loop state was restored): constant until then
        decay = ConstantDecay() if hp.schedule in RUN_DECAYS else self._make_schedule_decay()
        binary_schedule = BinaryHyperparameterScheduler(binary_opt, decay)
        return [binary_opt, fp_opt], [lr_schedule, binary_schedule]

    def on_train_start(self) -> None:
        """Also give a ``run_*`` schedule the run's length and apply it at the (restored) k.

        (Not in ``configure_optimizers``: setting up the training data there, before Lightning restores the fit
        loop, made a resumed run start its epoch's data again at batch 0.)"""
        super().on_train_start()
        if self.hparams.schedule in RUN_DECAYS:
            binary_schedule = self._scheduler_list()[1]
            binary_schedule.decay = self._make_schedule_decay(self._run_length_batches())
            binary_schedule.load_state_dict(binary_schedule.state_dict())  # re-applies f(k) at the restored k

    # ----------------------------------------------------------------- time loop
    def training_step(self, batch, batch_idx: int) -> Optional[Tensor]:
        x, y = batch
        hp = self.hparams
        check_time_steps(x, hp.time_steps)
        binary_opt, fp_opt = self.optimizers()
        if self._skip_nonfinite_input(x, batch_idx):
            self._log_faults(binary_opt, len(y))
            self._advance_schedules()
            self._end_of_batch_faults()
            return None
        with compact_saved_activations(hp.get("saved_activation_dtype", "float32")):
            output_sum, loss_sum = self._online_time_loop(
                x, y, lambda time_step: self._optimizer_step(binary_opt, fp_opt, time_step, batch_idx),
                before_backward=self._before_backward)
        self._log_train(output_sum, loss_sum, y)
        self._log_faults(binary_opt, len(y))
        self._advance_schedules()
        self._end_of_batch_faults()
        return loss_sum

    def _schedule_intervals(self) -> tuple[str, ...]:
        """The cosine learning rate steps per epoch, the BSO/T-BSO schedule per ``schedule_interval`` (per batch
        for the ``run_*`` schedules)."""
        return ("epoch", "step" if self.hparams.schedule in RUN_DECAYS else self.hparams.schedule_interval)

    def _run_length_batches(self) -> int:
        """Training batches in the whole run: ``max_epochs`` × batches per epoch, or fewer where ``max_steps``
        (2·T optimizer steps per batch in ``realtime`` mode, 2 in ``accumulated``) ends it earlier."""
        trainer = self.trainer
        steps_per_batch = 2 * (self.hparams.time_steps if self.hparams.update_mode == "realtime" else 1)
        lengths = []
        if trainer.max_steps is not None and trainer.max_steps > 0:
            lengths.append(-(-trainer.max_steps // steps_per_batch))
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            per_epoch = trainer.num_training_batches  # set up by the fit loop before on_train_start
            if per_epoch != float("inf"):
                lengths.append(int(per_epoch) * trainer.max_epochs)
        if not lengths or min(lengths) < 1:
            raise ValueError(f"schedule {self.hparams.schedule!r} is relative to the run: set trainer.max_epochs "
                             "or trainer.max_steps (a finite run with at least one batch)")
        return min(lengths)

    # ----------------------------------------------------------------- non-finite values
    def _skip_nonfinite_input(self, x: Tensor, batch_idx: int) -> bool:
        """One finiteness check per batch (a host sync); under DDP every process skips (or raises) together."""
        local = not bool(torch.isfinite(x).all())
        if not self.trainer.strategy.reduce_boolean_decision(local, all=False):
            return False
        what = f"its input holds {describe_nonfinite(x)}" if local else "the batch of another process holds NaN/Inf"
        where = f"batch {batch_idx} of epoch {self.current_epoch}"
        if self.hparams.nonfinite == "raise":
            raise NonFiniteError(f"{where}: {what} (nonfinite='raise'; nonfinite='skip' drops such batches)")
        self._epoch_skips.append(f"batch {batch_idx}: {what}")  # summarised once per epoch
        self._fault_counts[0] += 1
        return True

    def on_train_epoch_start(self) -> None:
        self._epoch_skips: list[str] = []
        self._epoch_batches = 0

    def _end_of_batch_faults(self) -> None:
        """Count the batch; after the epoch's last one, summarise (or refuse) the batches it dropped."""
        self._epoch_batches += 1
        if self.trainer.is_last_batch:
            self._report_skipped_batches()

    def _report_skipped_batches(self) -> None:
        skipped, seen = self._epoch_skips, self._epoch_batches
        self._epoch_skips, self._epoch_batches = [], 0
        report_skipped_batches(self.current_epoch, skipped, seen, self.hparams.max_skipped_fraction)

    def on_train_end(self) -> None:
        """An epoch cut short (``max_steps``) still gets its summary."""
        if getattr(self, "_epoch_skips", None):
            self._report_skipped_batches()

    def _optimizer_step(self, binary_opt, fp_opt, time_step: int, batch_idx: int) -> None:
        self._all_reduce_packed_grads()
        if self.hparams.nonfinite == "raise":
            grads = [g for g in (binary_grad(p) for p in self.model.parameters()) if g is not None]
            if not bool(all_finite(grads)):  # one host sync per time step in "raise" mode
                raise NonFiniteError(
                    f"batch {batch_idx} of epoch {self.current_epoch}, time step {time_step}: the gradient of "
                    f"{', '.join(nonfinite_gradients(self.named_parameters()))} is not finite "
                    "(nonfinite='raise'; this step's update was not applied)")
            binary_opt.step(time_step=time_step)
            fp_opt.step()
            return
        ok = all_finite([p.grad for p in self.split.full_precision if p.grad is not None])
        binary_opt.step(time_step=time_step)  # leaves a tensor with a non-finite update as it is (no sync)
        step_if(fp_opt, ok)  # the SGD step is undone on the device if a full-precision gradient is not finite
        self._fault_counts[1] += ~ok

    # ----------------------------------------------------------------- stepping inside the backward
    def _steps_in_backward(self) -> bool:
        """Step each binary tensor inside the backward (``step_in_backward``): realtime mode, one process, and
        ``nonfinite='skip'`` (under DDP the gradient must be all-reduced first, so the ordinary step is used)."""
        hp = self.hparams
        return (hp.get("step_in_backward", False) and hp.update_mode == "realtime" and hp.nonfinite == "skip"
                and self.trainer.world_size == 1)

    def _before_backward(self, time_step: int) -> None:
        if self._backward_stepping:
            self._binary_optimizer().set_backward_time_step(time_step)

    def _binary_optimizer(self):
        return self.trainer.optimizers[0]

    def on_fit_start(self) -> None:
        self._backward_stepping = self._steps_in_backward()
        self._binary_optimizer().step_in_backward(self._backward_stepping)
        super_hook = getattr(super(), "on_fit_start", None)
        if super_hook is not None:
            super_hook()

    def on_fit_end(self) -> None:
        self._binary_optimizer().step_in_backward(False)

    def _all_reduce_packed_grads(self) -> None:
        """Under DDP, average the gradients that packed layers handed over (DDP only reduces ``.grad``)."""
        if self.trainer.world_size == 1:
            return
        for p in self.split.binary:
            if is_packed(p) and p.packed_grad is not None:
                p.packed_grad = self.trainer.strategy.reduce(p.packed_grad, reduce_op="mean")

    def _log_faults(self, binary_opt, batch_size: int) -> None:
        """Cumulative counts (no host sync): batches dropped, updates skipped for non-finite gradients."""
        skipped_updates = binary_opt.nonfinite_counts().sum() + self._fault_counts[1]
        self.log("faults/nonfinite_inputs", self._fault_counts[0].float(), batch_size=batch_size)
        self.log("faults/nonfinite_grads", skipped_updates.float(), batch_size=batch_size)

    # ----------------------------------------------------------------- checkpoints
    def _checkpoint_extras(self) -> dict[str, Any]:
        """Also the fault counts (batches dropped, full-precision steps skipped)."""
        return {**super()._checkpoint_extras(), "fault_counts": self._fault_counts.detach().clone()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also refuse a checkpoint whose binary weights are not ±1 (naming the file and the weight)."""
        super().on_load_checkpoint(checkpoint)
        names = [n for n, p in self.named_parameters() if any(p is b for b in self.split.binary)]
        path = (self._trainer.ckpt_path if self._trainer is not None else None) or "<checkpoint>"
        check_binary_weights(checkpoint.get("state_dict", {}), names, path)

    def _exactly_binary_weights(self) -> list[Tensor]:
        return list(self.split.binary)

    def _restore_checkpoint_extras(self, extras: Mapping[str, Any]) -> None:
        if "fault_counts" in extras:
            self._fault_counts.copy_(extras["fault_counts"])
