"""Baselines beside the BSO/T-BSO classifier, on the same models, loss, data and evaluation.

* :class:`OTTTClassifier` — full-precision online training through time (OTTT): the same per-time-step
  loop as :class:`OnlineClassifier` (forward, L[t], backward, step at every t), but the hidden convolutions
  have real-valued weights and one SGD optimizer (cosine-annealed) trains every parameter.
* :class:`BPTTLatentClassifier` — the usual BSNN recipe: real-valued latent weights, ``sign`` in the forward
  pass, straight-through estimator ``1_{|w| ≤ 1}`` in the backward, neurons that keep their gradient across
  time steps, one backward through all T steps per batch, latent weights clipped to [−1, 1] after each step.

Both take the :class:`OnlineClassifier` arguments that apply to them (``arch``, ``num_classes``,
``in_channels``, ``time_steps``, ``lr``, ...), build the same architecture with other weights or neurons
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
from bso_lightning.optim import check_partition, split_parameters
from bso_lightning.tasks.base import UPDATES, TimeSteppedClassifier, check_choice
from bso_lightning.tasks.batch import check_time_steps, input_at_time_step
from bso_lightning.tasks.loss import online_loss

LATENT_OPTIMIZERS = ("adam", "sgd")


class OTTTClassifier(TimeSteppedClassifier):
    """Full-precision online training (OTTT): BSO's online loop with real-valued weights and SGD.

    Args:
        arch, num_classes, in_channels, arch_kwargs, time_steps, trace, update_mode, mse_weight, decay,
        v_threshold, bn_recalibration_batches, batchnorm_statistics: as in :class:`OnlineClassifier`.
        lr, momentum, weight_decay: SGD for **every** parameter (hidden convs included), cosine-annealed to 0
            over ``cosine_epochs`` (default ``trainer.max_epochs``).
    """

    def __init__(
        self,
        arch: str = "small_cnn",
        num_classes: int = 10,
        in_channels: int = 1,
        arch_kwargs: Optional[dict[str, Any]] = None,
        time_steps: int = 4,
        trace: Literal["ottt", "ndot"] = "ottt",
        update_mode: Literal["realtime", "accumulated"] = "realtime",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        cosine_epochs: Optional[int] = None,
        mse_weight: float = 0.05,
        decay: float = 0.5,
        v_threshold: float = 1.0,
        bn_recalibration_batches: int = 20,
        batchnorm_statistics: Literal["per_time_step", "pooled"] = "per_time_step",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_choice("update_mode", update_mode, UPDATES)
        self._check_shared_hyperparameters()
        self.model = build_model_from_hparams(self.hparams, weights="full_precision")
        self.split = split_parameters(self.model)
        self._make_metrics(num_classes)

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad], lr=hp.lr,
                              momentum=hp.momentum, weight_decay=hp.weight_decay)
        check_partition(self.model, [opt])
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self._cosine_epochs(), eta_min=0.0)
        return [opt], [cosine]

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y = batch
        check_time_steps(x, self.hparams.time_steps)
        opt = self.optimizers()
        output_sum, loss_sum = self._online_time_loop(x, y, lambda time_step: opt.step())
        self._log_train(output_sum, loss_sum, y)
        self._advance_schedules()
        return loss_sum


class BPTTLatentClassifier(TimeSteppedClassifier):
    """Binary SNN trained by backpropagation through time with latent weights (the usual BSNN recipe).

    Per batch: reset the neurons, run T forward steps (the membrane keeps its gradient across steps), sum the
    per-step losses L[t] (Eq. 8, the same objective as the online methods), one backward, one step of each
    optimizer, then clip the latent weights to [−1, 1].

    Args:
        arch, num_classes, in_channels, arch_kwargs, time_steps, mse_weight, decay, v_threshold,
        bn_recalibration_batches, batchnorm_statistics: as in :class:`OnlineClassifier`.
        latent_optimizer: ``"adam"`` (default) or ``"sgd"`` (momentum ``momentum``) for the latent weights.
        latent_lr: learning rate of the latent weights (cosine-annealed to 0).
        clip_latent: clip latent weights to [−1, 1] after each step.
        lr, momentum, weight_decay: SGD for the full-precision parameters (first conv, BatchNorm, classifier),
            cosine-annealed to 0 over ``cosine_epochs`` (default ``trainer.max_epochs``).
    """

    def __init__(
        self,
        arch: str = "small_cnn",
        num_classes: int = 10,
        in_channels: int = 1,
        arch_kwargs: Optional[dict[str, Any]] = None,
        time_steps: int = 4,
        latent_optimizer: Literal["adam", "sgd"] = "adam",
        latent_lr: float = 1e-3,
        clip_latent: bool = True,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        cosine_epochs: Optional[int] = None,
        mse_weight: float = 0.05,
        decay: float = 0.5,
        v_threshold: float = 1.0,
        bn_recalibration_batches: int = 20,
        batchnorm_statistics: Literal["per_time_step", "pooled"] = "per_time_step",
    ) -> None:
        if latent_optimizer not in LATENT_OPTIMIZERS:
            raise ValueError(f"latent_optimizer must be one of {LATENT_OPTIMIZERS}, got {latent_optimizer!r}")
        if not latent_lr >= 0:
            raise ValueError(f"latent_lr must be >= 0, got {latent_lr}")
        super().__init__()
        self.save_hyperparameters()
        self._check_shared_hyperparameters()
        self.model = build_model_from_hparams(self.hparams, weights="latent", neuron="bptt")
        self.split = split_parameters(self.model)
        self._make_metrics(num_classes)

    def latent_parameters(self) -> list[torch.nn.Parameter]:
        """The real-valued latent weights (binarised by sign in the forward pass)."""
        return latent_parameters(self.model)

    def configure_optimizers(self):
        hp = self.hparams
        latent = self.latent_parameters()
        latent_ids = {id(p) for p in latent}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in latent_ids]
        if hp.latent_optimizer == "adam":
            latent_opt: torch.optim.Optimizer = torch.optim.Adam(latent, lr=hp.latent_lr)
        else:
            latent_opt = torch.optim.SGD(latent, lr=hp.latent_lr, momentum=hp.momentum)
        fp_opt = torch.optim.SGD(rest, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        check_partition(self.model, [latent_opt, fp_opt])
        epochs = self._cosine_epochs()
        schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=epochs, eta_min=0.0)
                      for o in (latent_opt, fp_opt)]
        return [latent_opt, fp_opt], schedulers

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
