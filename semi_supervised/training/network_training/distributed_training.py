"""What one of our trainers needs to train under torchrun with DistributedDataParallel (the MoE's DDP variant).

nnU-Net's own nnUNetTrainerV2_DDP (patch 0008) rewrites nnUNetTrainerV2's iteration and loss; our trainers have
their own iterations, so this mixin adds DDP around them instead, changing as little as it can:
- the process group from torchrun's environment (nnunet.utilities.distributed.init_distributed: nccl or gloo),
  seeds by global rank, so that every rank draws its own batches;
- `self.network` stays the plain network (the trainer's code, checkpoints, validation and prediction use it);
  `self.ddp` wraps it, and the training forward passes go through `training_forward`, so that DDP averages the
  gradients. Every parameter gets a gradient in every step (the MoE's experts run as gathered weights), so DDP
  needs no unused-parameter search;
- the loss's batch Dice over all ranks' batches (DistributedDiceCELoss), and every deep-supervision output in the
  loss (EveryOutputLoss), so that every parameter gets a gradient (checked after the first step);
- rank 0 alone unpacks the data, writes checkpoints, logs, plots and validates; the others wait for it.
--dbs (distribute_batch_size) splits the plans' batch over the ranks instead of giving each rank the whole batch.
"""
from typing import Callable, Optional

import numpy as np
import torch
from torch import distributed
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet.training.loss_functions.distributed_losses import DistributedDiceCELoss, EveryOutputLoss
from nnunet.utilities.distributed import init_distributed, split_batch


class DistributedTraining:
    """Mixin: put it before the trainer class (class X_DDP(DistributedTraining, X))."""

    def init_distributed_training(self, local_rank: Optional[int], distribute_batch_size: bool) -> None:
        """Call at the end of the trainer's __init__."""
        self.rank, self.local_rank, self.world_size = init_distributed(local_rank)
        self.distribute_batch_size = distribute_batch_size
        self.ddp: Optional[DDP] = None
        np.random.seed(self.rank)
        torch.manual_seed(self.rank)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(self.rank)
        self.loss = DistributedDiceCELoss(batch_dice=self.batch_dice)

    @property
    def is_main_process(self) -> bool:
        return getattr(self, "rank", 0) == 0

    def process_plans(self, plans):
        super().process_plans(plans)
        if self.distribute_batch_size:
            self.batch_size = split_batch(self.batch_size, self.world_size)[self.rank]

    def initialize(self, training=True, force_load_plans=False):
        if not self.is_main_process:
            self.unpack_data = False  # rank 0 unpacks; the others wait at the barrier below
        super().initialize(training, force_load_plans)
        if training:
            self.loss = EveryOutputLoss(self.loss.loss, self.ds_loss_weights)  # nnUNetTrainerV2's, every output
            distributed.barrier()
            self.ddp = DDP(self.network, device_ids=[self.local_rank] if torch.cuda.is_available() else None)
            self._gradients_checked = False

    def run_iteration(self, data_generator, do_backprop=True, run_online_evaluation=False):
        loss = super().run_iteration(data_generator, do_backprop, run_online_evaluation)
        if do_backprop and not getattr(self, "_gradients_checked", True):
            self.check_every_parameter_has_a_gradient()
            self._gradients_checked = True
        return loss

    def check_every_parameter_has_a_gradient(self) -> None:
        """After the first training step: a parameter without a gradient would leave its DDP bucket un-averaged
        (silently: each rank would step on its own gradient), so it is an error."""
        missing = [name for name, p in self.network.named_parameters() if p.requires_grad and p.grad is None]
        if missing:
            raise RuntimeError(f"{len(missing)} parameter(s) got no gradient in a training step, which DDP cannot "
                               f"average: {', '.join(missing[:5])}")

    @property
    def training_forward(self) -> Callable:
        return self.ddp if self.ddp is not None else self.network

    def all_ranks_mean(self, value: Optional[float]) -> Optional[float]:
        """The mean over the ranks that measured a number (None: not measured on this rank; None when no rank
        did). Every rank takes part in the reduction, whatever it measured."""
        measured = value is not None
        total = torch.tensor([float(value) if measured else 0.0, 1.0 if measured else 0.0], dtype=torch.float64,
                             device=self.reduction_device)
        distributed.all_reduce(total)
        return float(total[0].item() / total[1].item()) if total[1].item() > 0 else None

    @property
    def reduction_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    # ------------------------------------------------------------------ rank 0 writes
    def print_to_log_file(self, *args, **kwargs):
        if self.is_main_process:
            super().print_to_log_file(*args, **kwargs)

    def save_checkpoint(self, fname, save_optimizer=True):
        if self.is_main_process:
            super().save_checkpoint(fname, save_optimizer)

    def plot_progress(self):
        if self.is_main_process:
            super().plot_progress()

    def validate(self, *args, **kwargs):
        """Rank 0 validates every case of the fold as one process would; the others wait for it."""
        if self.is_main_process:
            super().validate(*args, **kwargs)
        distributed.barrier()
