"""The online BSNN classifier: BSO/T-BSO flips binary weights at every time step (paper Alg. 1).

Per training batch: reset the neurons; for t = 0..T−1 run one forward step, compute L[t] (Eq. 8),
backpropagate spatially only (the neuron state is detached between steps), and — in ``realtime`` mode —
step BSO/T-BSO (with t) and SGD. In ``accumulated`` mode gradients add up over the T steps and both
optimizers step once after the last step (T-BSO then uses time_step 0).

Step counting: Lightning's ``trainer.global_step`` counts every ``optimizer.step()`` call. With two
optimizers it grows by 2·T per batch in ``realtime`` mode and by 2 per batch in ``accumulated`` mode, so
``max_steps`` is in those units; metrics are logged per batch, and the cosine learning rate and the BSO
hyper-parameter schedules advance once per epoch (or per batch: the schedule's ``interval``; the ``Run*`` ones).

The optimizers and schedules are given as objects (LightningCLI's ``OptimizerCallable`` pattern, ``class_path``/
``init_args`` in YAML; :mod:`bso_lightning.tasks.specs`): ``optimizer`` (BSO/T-BSO with their hyper-parameters),
``schedule`` (γ and 1 − β over the run), ``fp_optimizer`` and ``lr_scheduler`` (the full-precision parameters).
``loop`` (:class:`~bso_lightning.tasks.loop.OnlineLoop`) says how each batch runs; NaN/Inf is handled by one
collaborator, :class:`~bso_lightning.tasks.faults.NonFiniteHandler`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from typing import Any, Literal, Optional

import torch
from spikingjelly.activation_based import functional
from torch import Tensor

from bso_lightning.checkpoints import check_binary_weights, load_model_weights
from bso_lightning.models import build_model_from_hparams
from bso_lightning.nn.layers import WEIGHT_STORAGES
from bso_lightning.nn.packed import is_packed
from bso_lightning.nn.saved_activations import compact_saved_activations
from bso_lightning.optim import TBSO, CosineAnnealingToZero, FullPrecisionSGD, RunExponentialSchedule, check_partition
from bso_lightning.optim import split_parameters
from bso_lightning.optim.base import BinaryOptimizer
from bso_lightning.optim.schedules import BinaryHyperparameterScheduler, RunSchedule
from bso_lightning.tasks.base import TimeSteppedClassifier, architecture_view
from bso_lightning.tasks.batch import check_time_steps, input_at_time_step
from bso_lightning.tasks.faults import NonFiniteHandler
from bso_lightning.tasks.loop import OnlineLoop, check_choice
from bso_lightning.tasks.loss import online_loss

#: What each injected argument builds (LightningCLI's ``OptimizerCallable``/``LRSchedulerCallable`` pattern).
BinaryOptimizerCallable = Callable[[Iterable], BinaryOptimizer]
BinaryScheduleCallable = Callable[[BinaryOptimizer], BinaryHyperparameterScheduler]
OptimizerCallable = Callable[[Iterable], torch.optim.Optimizer]
LRSchedulerCallable = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


class OnlineClassifier(TimeSteppedClassifier):
    """Binary spiking classifier trained online with BSO or T-BSO (binary weights) and SGD (the rest).

    Args:
        arch: model factory name (``vgg11``, ``resnet18``, ``small_cnn``).
        num_classes: number of classes (linked from the DataModule by the CLI).
        in_channels: input channels (linked from the DataModule by the CLI).
        arch_kwargs: extra keyword arguments of the model factory (e.g. ``{"width": 32}``, ``{"stem": "cifar"}``),
            the LIF neuron's ``decay`` λ (0.5) and ``v_threshold`` Vth (1.0) included (Eq. 2–3).
        time_steps: T, the number of time steps each sample is presented for.
        trace: presynaptic trace for the online gradient, ``"ottt"`` or ``"ndot"`` (Eq. 6–7), or
            ``"ndot_reference"``, the NDOT decay of the authors' code (docs/fidelity.md).
        weight_storage: binary weights as ``"packed"`` bits (default) or ``"dense"`` ±1 floats.
        batchnorm_statistics: ``"per_time_step"`` (default; evaluation normalises step t with its own running
            statistics, docs/fidelity.md) or ``"pooled"`` (plain BatchNorm, the paper's).
        optimizer: builds the binary weights' optimizer from them: :class:`~bso_lightning.optim.TBSO` (Eq. 13–14,
            default) or :class:`~bso_lightning.optim.BSO` (Eq. 11–12) with γ, β, ... as their arguments.
        schedule: builds the γ / 1 − β schedule on that optimizer (:mod:`bso_lightning.optim.schedules`; default
            :class:`~bso_lightning.optim.RunExponentialSchedule`, log-linear to 1e-3× over the run).
        fp_optimizer: builds the full-precision parameters' optimizer (default
            :class:`~bso_lightning.optim.FullPrecisionSGD`: lr 0.1, momentum 0.9).
        lr_scheduler: builds its learning-rate schedule (default :class:`~bso_lightning.optim.CosineAnnealingToZero`
            over ``trainer.max_epochs``; the authors' code: ``torch.optim.lr_scheduler.ConstantLR`` with factor 1).
        loop: how each training batch runs (:class:`~bso_lightning.tasks.loop.OnlineLoop`: update mode, stepping
            inside the backward, saved-activation dtype, α of Eq. 8, NaN/Inf policy).
        bn_recalibration_batches: before every validation/test/predict epoch, re-estimate BatchNorm statistics over
            this many training batches (0 disables it); ``{stage}/acc_running_bn`` logs the running ones.
        pretrained: a Lightning checkpoint whose model weights (binary ones included) initialise this model — only
            the weights (ImageNet: pre-train with T = 1, fine-tune with T = 4–6). The architecture must match.

    Each injected argument is a callable (a class, a ``functools.partial``, what LightningCLI makes of
    ``class_path``/``init_args``) or a plain ``{"class_path", "init_args"}`` dict; the hyper-parameters keep the
    plain dict (:mod:`bso_lightning.tasks.specs`).
    """

    def __init__(
        self,
        arch: str = "small_cnn",
        num_classes: int = 10,
        in_channels: int = 1,
        arch_kwargs: Optional[dict[str, Any]] = None,
        time_steps: int = 4,
        trace: Literal["ottt", "ndot", "ndot_reference"] = "ottt",
        weight_storage: Literal["dense", "packed"] = "packed",
        batchnorm_statistics: Literal["per_time_step", "pooled"] = "per_time_step",
        optimizer: BinaryOptimizerCallable = TBSO,
        schedule: BinaryScheduleCallable = RunExponentialSchedule,
        fp_optimizer: OptimizerCallable = FullPrecisionSGD,
        lr_scheduler: LRSchedulerCallable = CosineAnnealingToZero,
        loop: OnlineLoop = OnlineLoop(),
        bn_recalibration_batches: int = 20,
        pretrained: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.loop = OnlineLoop.of(loop)
        self.hparams["loop"] = self.loop.as_dict()
        self._inject(optimizer=(optimizer, BinaryOptimizer), schedule=(schedule, BinaryHyperparameterScheduler),
                     fp_optimizer=(fp_optimizer, torch.optim.Optimizer),
                     lr_scheduler=(lr_scheduler, torch.optim.lr_scheduler.LRScheduler))
        check_choice("weight_storage", weight_storage, WEIGHT_STORAGES)
        self._check_shared_hyperparameters()
        self.model = build_model_from_hparams(self.hparams)  # (binary weights stored as weight_storage says)
        self.split = split_parameters(self.model)
        if not self.split.binary:
            raise ValueError(f"arch {arch!r} has no binary parameters for "
                             f"{self.hparams.optimizer['class_path'].rpartition('.')[2]} to train")
        self._build_optimization()  # every injected argument is checked here, before any training
        if pretrained:
            self._load_pretrained_weights(pretrained)
        self._make_metrics(num_classes)
        self.faults = NonFiniteHandler(self.loop.nonfinite, self.loop.max_skipped_fraction)

    @property
    def mse_weight(self) -> float:
        return self.loop.mse_weight

    def _load_pretrained_weights(self, path: str) -> None:
        """:func:`bso_lightning.checkpoints.load_model_weights` (read safely; NaN/Inf refused; latent weights to ±1;
        strict), after comparing the architectures as every version spells them (:func:`architecture_view`: the
        optimizer's kind, not its γ or β, which a fine-tune changes). Errors name the file."""
        load_model_weights(self.model, path, self.hparams, view=architecture_view)

    # ----------------------------------------------------------------- optimizers
    def _build_optimization(self) -> tuple[list, list]:
        """The binary and full-precision optimizers and their schedules, from the injected arguments."""
        binary_opt = self._build("optimizer", self.split.binary, BinaryOptimizer)
        fp_opt = self._build("fp_optimizer", self.split.full_precision, torch.optim.Optimizer)
        return [binary_opt, fp_opt], [self._build("lr_scheduler", fp_opt, torch.optim.lr_scheduler.LRScheduler),
                                      self._build("schedule", binary_opt, BinaryHyperparameterScheduler)]

    def configure_optimizers(self):
        optimizers, (lr_scheduler, binary_schedule) = self._build_optimization()
        check_partition(self.model, optimizers)
        if isinstance(lr_scheduler, CosineAnnealingToZero):
            lr_scheduler.set_max_epochs(self.trainer.max_epochs)
        return optimizers, [lr_scheduler, binary_schedule]

    def on_train_start(self) -> None:
        """A ``Run*`` schedule gets the run's length now and applies it at the (restored) k.

        (Not in ``configure_optimizers``: setting up the training data there, before Lightning restores the fit
        loop, made a resumed run start its epoch's data again at batch 0.)"""
        super().on_train_start()
        binary_schedule = self._scheduler_list()[1]
        if isinstance(binary_schedule, RunSchedule):
            binary_schedule.set_run_length(self._run_length_batches())

    def _schedule_intervals(self) -> tuple[str, ...]:
        """The learning rate steps per epoch, the BSO/T-BSO schedule per its ``interval``."""
        return ("epoch", getattr(self._scheduler_list()[1], "interval", "epoch"))

    def _run_length_batches(self) -> int:
        """Training batches in the whole run: ``max_epochs`` × batches per epoch, or fewer where ``max_steps``
        (2·T optimizer steps per batch in ``realtime`` mode, 2 in ``accumulated``) ends it earlier."""
        trainer = self.trainer
        steps_per_batch = 2 * (self.hparams.time_steps if self.loop.update_mode == "realtime" else 1)
        lengths = []
        if trainer.max_steps is not None and trainer.max_steps > 0:
            lengths.append(-(-trainer.max_steps // steps_per_batch))
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            per_epoch = trainer.num_training_batches  # set up by the fit loop before on_train_start
            if per_epoch != float("inf"):
                lengths.append(int(per_epoch) * trainer.max_epochs)
        if not lengths or min(lengths) < 1:
            raise ValueError(f"schedule {self.hparams.schedule['class_path']!r} is relative to the run: set "
                             "trainer.max_epochs or trainer.max_steps (a finite run with at least one batch)")
        return min(lengths)

    # ----------------------------------------------------------------- time loop
    def training_step(self, batch, batch_idx: int) -> Optional[Tensor]:
        """Alg. 1 on one batch: for t = 0..T−1, forward, L[t] (Eq. 8), backward (the binary tensors flip inside it
        when ``loop.step_in_backward``), step (every t in ``realtime`` mode, once after the last in
        ``accumulated``). NaN/Inf: ``self.faults``."""
        x, y = batch
        T, where = self.hparams.time_steps, f"batch {batch_idx} of epoch {self.current_epoch}"
        check_time_steps(x, T)
        binary_opt, fp_opt = self.optimizers()
        loss_sum = output_sum = None
        if not self.faults.skip_batch(x, where, self.trainer.strategy):
            realtime = self.loop.update_mode == "realtime"
            functional.reset_net(self.model)
            output_sum, loss_sum = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
            with compact_saved_activations(self.loop.saved_activation_dtype):
                for t in range(T):
                    out = self.model(input_at_time_step(x, t))
                    loss = online_loss(out, y, T, self.loop.mse_weight)
                    with self._stepping_in_backward(binary_opt, t):
                        self.manual_backward(loss)
                    if realtime or t == T - 1:
                        self._all_reduce_packed_grads()
                        self.faults.step(binary_opt, fp_opt, t if realtime else 0, where, self.model,
                                         self.split.full_precision)
                        binary_opt.zero_grad(set_to_none=True)
                        fp_opt.zero_grad(set_to_none=True)
                    output_sum, loss_sum = output_sum + out.detach(), loss_sum + loss.detach()
            functional.reset_net(self.model)
            self._log_train(output_sum, loss_sum, y)
        for name, value in self.faults.logged(binary_opt).items():
            self.log(name, value, batch_size=len(y))
        self._advance_schedules()
        self.faults.end_batch(self.current_epoch, self.trainer.is_last_batch)
        return loss_sum

    def _stepping_in_backward(self, binary_opt, time_step: int):
        """``binary_opt.stepping_in_backward(t)`` (each binary tensor flips as soon as its gradient is complete)
        when ``loop.step_in_backward`` and the run allows it: realtime mode, ``nonfinite="skip"``, one process
        (under DDP the gradient must be all-reduced first)."""
        if not self._backward_stepping:
            return nullcontext()
        return binary_opt.optimizer.stepping_in_backward(time_step=time_step)  # (the optimizer, not Lightning's wrapper)

    def on_fit_start(self) -> None:
        loop = self.loop
        self._backward_stepping = (loop.step_in_backward and loop.update_mode == "realtime"
                                   and loop.nonfinite == "skip" and self.trainer.world_size == 1)

    def on_train_epoch_start(self) -> None:
        self.faults.start_epoch()

    def on_train_end(self) -> None:
        """An epoch cut short (``max_steps``) still gets its summary of dropped batches."""
        if self.faults.pending():
            self.faults.end_epoch(self.current_epoch)

    def _all_reduce_packed_grads(self) -> None:
        """Under DDP, average the gradients that packed layers handed over (DDP only reduces ``.grad``)."""
        if self.trainer.world_size == 1:
            return
        for p in self.split.binary:
            if is_packed(p) and p.packed_grad is not None:
                p.packed_grad = self.trainer.strategy.reduce(p.packed_grad, reduce_op="mean")

    # ----------------------------------------------------------------- checkpoints
    def _checkpoint_extras(self) -> dict[str, Any]:
        """Also the fault counts (batches dropped, full-precision steps skipped)."""
        return {**super()._checkpoint_extras(), "fault_counts": self.faults.counts.detach().clone()}

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
            self.faults.counts.copy_(extras["fault_counts"])
