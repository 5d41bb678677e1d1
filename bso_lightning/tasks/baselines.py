"""Baselines beside the BSO/T-BSO classifier, on the same models, loss, data and evaluation.

* :class:`OTTTClassifier` — full-precision online training through time (OTTT): the same per-time-step
  loop as :class:`OnlineClassifier` (forward, L[t], backward, step at every t), but the hidden convolutions
  have real-valued weights and one SGD optimizer (cosine-annealed) trains every parameter.
* :class:`BPTTLatentClassifier` — the usual BSNN recipe: real-valued latent weights, ``sign`` in the forward
  pass, straight-through estimator ``1_{|w| ≤ 1}`` in the backward, neurons that keep their gradient across
  time steps, one backward through all T steps per batch, latent weights clipped to [−1, 1] after each step.

Both take the :class:`OnlineClassifier` arguments that apply to them (``arch``, ``num_classes``,
``in_channels``, ``time_steps``, ``fp_optimizer``, ``lr_scheduler``, ...), build the same architecture with other weights or neurons
(:func:`bso_lightning.models.build_model_from_hparams`) and use the same loss (Eq. 8). Like
:class:`OnlineClassifier` they subclass :class:`~bso_lightning.tasks.base.TimeSteppedClassifier`, so they
predict, evaluate and re-estimate BatchNorm statistics with the same code (none of the online classifier's
BSO/T-BSO settings, checkpoint extras or fault handling apply). Select them from a LightningCLI config with
``model.class_path: bso_lightning.tasks.OTTTClassifier`` (or ``BPTTLatentClassifier``).

Step counting (``trainer.global_step`` counts every ``optimizer.step()``): OTTT has one optimizer, so it grows
by T per batch in ``realtime`` mode and by 1 in ``accumulated`` mode; BPTT steps two optimizers once per
batch (+2 per batch). The cosine learning rates advance once per epoch, stepped with the epoch's last batch
(so a run resumed from a checkpoint saved at the end of that batch continues with the same learning rate).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
from spikingjelly.activation_based import functional
from torch import Tensor

from bso_lightning.models import build_model_from_hparams
from bso_lightning.nn.latent import clip_latent_, latent_parameters
from bso_lightning.optim import CosineAnnealingToZero, FullPrecisionSGD, check_partition, split_parameters
from bso_lightning.tasks.base import TimeSteppedClassifier
from bso_lightning.tasks.batch import check_time_steps, input_at_time_step
from bso_lightning.tasks.loop import UPDATES, check_choice
from bso_lightning.tasks.loss import online_loss
from bso_lightning.tasks.online import LRSchedulerCallable, OptimizerCallable

LRScheduler = torch.optim.lr_scheduler.LRScheduler


def _lr_schedulers(task: TimeSteppedClassifier, optimizers: list[torch.optim.Optimizer]) -> list[LRScheduler]:
    schedulers = [task._build("lr_scheduler", opt, LRScheduler) for opt in optimizers]
    for scheduler in schedulers:
        if isinstance(scheduler, CosineAnnealingToZero):
            scheduler.set_max_epochs(task.trainer.max_epochs)
    return schedulers


class OTTTClassifier(TimeSteppedClassifier):
    """Full-precision online training (OTTT): BSO's online loop with real-valued weights and SGD.

    Args:
        arch, num_classes, in_channels, arch_kwargs, time_steps, trace, bn_recalibration_batches,
        batchnorm_statistics: as in :class:`OnlineClassifier`.
        update_mode, mse_weight: as in :class:`~bso_lightning.tasks.loop.OnlineLoop`.
        fp_optimizer: builds the optimizer of **every** parameter (hidden convs included; default
            :class:`~bso_lightning.optim.FullPrecisionSGD`, lr 0.1, momentum 0.9).
        lr_scheduler: its learning-rate schedule (default cosine to 0 over ``trainer.max_epochs``).
    """

    legacy_baseline = True

    def __init__(
        self,
        arch: str = "small_cnn",
        num_classes: int = 10,
        in_channels: int = 1,
        arch_kwargs: Optional[dict[str, Any]] = None,
        time_steps: int = 4,
        trace: Literal["ottt", "ndot"] = "ottt",
        update_mode: Literal["realtime", "accumulated"] = "realtime",
        fp_optimizer: OptimizerCallable = FullPrecisionSGD,
        lr_scheduler: LRSchedulerCallable = CosineAnnealingToZero,
        mse_weight: float = 0.05,
        bn_recalibration_batches: int = 20,
        batchnorm_statistics: Literal["per_time_step", "pooled"] = "per_time_step",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_choice("update_mode", update_mode, UPDATES)
        self._inject(fp_optimizer=(fp_optimizer, torch.optim.Optimizer), lr_scheduler=(lr_scheduler, LRScheduler))
        self._check_shared_hyperparameters()
        self.model = build_model_from_hparams(self.hparams, weights="full_precision")
        self.split = split_parameters(self.model)
        self.configure_optimizers(check_only=True)
        self._make_metrics(num_classes)

    def configure_optimizers(self, check_only: bool = False):
        opt = self._build("fp_optimizer", [p for p in self.model.parameters() if p.requires_grad], torch.optim.Optimizer)
        check_partition(self.model, [opt])
        if check_only:
            return self._build("lr_scheduler", opt, LRScheduler)
        return [opt], _lr_schedulers(self, [opt])

    def training_step(self, batch, batch_idx: int) -> Tensor:
        """For t = 0..T−1: forward, L[t] (Eq. 8), backward, step (every t, or once after the last)."""
        x, y = batch
        T, hp = self.hparams.time_steps, self.hparams
        check_time_steps(x, T)
        opt = self.optimizers()
        functional.reset_net(self.model)
        output_sum, loss_sum = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for t in range(T):
            out = self.model(input_at_time_step(x, t))
            loss = online_loss(out, y, T, hp.mse_weight)
            self.manual_backward(loss)
            if hp.update_mode == "realtime" or t == T - 1:
                opt.step()
                opt.zero_grad(set_to_none=True)
            output_sum, loss_sum = output_sum + out.detach(), loss_sum + loss.detach()
        functional.reset_net(self.model)
        self._log_train(output_sum, loss_sum, y)
        self._advance_schedules()
        return loss_sum


class BPTTLatentClassifier(TimeSteppedClassifier):
    """Binary SNN trained by backpropagation through time with latent weights (the usual BSNN recipe).

    Per batch: reset the neurons, run T forward steps (the membrane keeps its gradient across steps), sum the
    per-step losses L[t] (Eq. 8, the same objective as the online methods), one backward, one step of each
    optimizer, then clip the latent weights to [−1, 1].

    Args:
        arch, num_classes, in_channels, arch_kwargs, time_steps, bn_recalibration_batches, batchnorm_statistics:
            as in :class:`OnlineClassifier`; mse_weight: α of Eq. 8.
        latent_optimizer: builds the latent weights' optimizer (default ``torch.optim.Adam``, lr 1e-3).
        clip_latent: clip latent weights to [−1, 1] after each step.
        fp_optimizer: builds the full-precision parameters' optimizer (first conv, BatchNorm, classifier; default
            :class:`~bso_lightning.optim.FullPrecisionSGD`).
        lr_scheduler: the learning-rate schedule of both (default cosine to 0 over ``trainer.max_epochs``).
    """

    legacy_baseline = True

    def __init__(
        self,
        arch: str = "small_cnn",
        num_classes: int = 10,
        in_channels: int = 1,
        arch_kwargs: Optional[dict[str, Any]] = None,
        time_steps: int = 4,
        latent_optimizer: OptimizerCallable = torch.optim.Adam,
        clip_latent: bool = True,
        fp_optimizer: OptimizerCallable = FullPrecisionSGD,
        lr_scheduler: LRSchedulerCallable = CosineAnnealingToZero,
        mse_weight: float = 0.05,
        bn_recalibration_batches: int = 20,
        batchnorm_statistics: Literal["per_time_step", "pooled"] = "per_time_step",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._inject(latent_optimizer=(latent_optimizer, torch.optim.Optimizer),
                     fp_optimizer=(fp_optimizer, torch.optim.Optimizer), lr_scheduler=(lr_scheduler, LRScheduler))
        self._check_shared_hyperparameters()
        self.model = build_model_from_hparams(self.hparams, weights="latent", neuron="bptt")
        self.split = split_parameters(self.model)
        self._optimizers(check_only=True)
        self._make_metrics(num_classes)

    def latent_parameters(self) -> list[torch.nn.Parameter]:
        """The real-valued latent weights (binarised by sign in the forward pass)."""
        return latent_parameters(self.model)

    def _optimizers(self, check_only: bool = False) -> list[torch.optim.Optimizer]:
        latent = self.latent_parameters()
        latent_ids = {id(p) for p in latent}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in latent_ids]
        optimizers = [self._build("latent_optimizer", latent, torch.optim.Optimizer),
                      self._build("fp_optimizer", rest, torch.optim.Optimizer)]
        check_partition(self.model, optimizers)
        if check_only:
            for opt in optimizers:
                self._build("lr_scheduler", opt, LRScheduler)
        return optimizers

    def configure_optimizers(self):
        optimizers = self._optimizers()
        return optimizers, _lr_schedulers(self, optimizers)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y = batch
        hp = self.hparams
        check_time_steps(x, hp.time_steps)
        latent_opt, fp_opt = self.optimizers()
        functional.reset_net(self.model)
        output_sum = torch.zeros((), device=self.device)
        loss = torch.zeros((), device=self.device)
        for t in range(hp.time_steps):
            out = self.model(input_at_time_step(x, t))
            loss = loss + online_loss(out, y, hp.time_steps, hp.mse_weight)
            output_sum = output_sum + out.detach()
        self.manual_backward(loss)
        latent_opt.step()
        fp_opt.step()
        latent_opt.zero_grad(set_to_none=True)
        fp_opt.zero_grad(set_to_none=True)
        if hp.clip_latent:
            clip_latent_(self.latent_parameters())
        functional.reset_net(self.model)
        self._log_train(output_sum, loss.detach(), y)
        self._advance_schedules()
        return loss.detach()


__all__ = ["BPTTLatentClassifier", "OTTTClassifier"]
