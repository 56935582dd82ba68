"""nnUNetTrainerV2_moe on several processes (torchrun; see distributed_training.DistributedTraining).

`nnUNet_train 3d_fullres nnUNetTrainerV2_moe ...` under torchrun with WORLD_SIZE > 1 trains with this class
(patch 0008 picks <trainer>_DDP) into nnUNetTrainerV2_moe's own folder, so `make semi NPROC_PER_NODE=N` resumes,
validates and predicts like the single-process MoE. Besides the mixin's DDP:
- the gate-weighted supervised loss sums its batch Dice's per-pair statistics over all ranks;
- the load-balancing loss uses the routing fractions of all ranks' batches (all-reduced; the mean gate
  probabilities are averaged by DDP's gradient average), i.e. the loss of the global batch;
- the logged losses, expert usage and diagnostics of moe_log.json are means over the ranks;
- the unlabelled batches, strong views and consistency are each rank's own, unchanged.
"""
from typing import Optional

import torch
from torch import distributed

from nnunet.training.loss_functions.moe_losses import expert_usage
from nnunet.training.network_training.distributed_training import DistributedTraining
from nnunet.training.network_training.nnUNetTrainerV2_moe import nnUNetTrainerV2_moe
from nnunet.utilities.distributed import awesome_allgather_function


class nnUNetTrainerV2_moe_DDP(DistributedTraining, nnUNetTrainerV2_moe):
    def __init__(self, plans_file, fold, output_folder=None, dataset_directory=None, batch_dice=True, stage=None,
                 unpack_data=True, deterministic=True, fp16=False, moe_settings: Optional[dict] = None,
                 consistency_settings: Optional[dict] = None, local_rank: Optional[int] = None,
                 distribute_batch_size: bool = False, settings: Optional[dict] = None):
        super().__init__(plans_file, fold, output_folder, dataset_directory, batch_dice, stage, unpack_data,
                         deterministic, fp16, moe_settings, consistency_settings, settings=settings)
        self.init_args = self.init_args + (None, None, local_rank, distribute_batch_size)
        self.init_distributed_training(local_rank, distribute_batch_size)

    def pair_statistics_gather(self):
        return awesome_allgather_function.apply

    def step_usage(self, indices: torch.Tensor) -> torch.Tensor:
        fractions = expert_usage(indices, self.moe.num_experts)
        distributed.all_reduce(fractions)
        return fractions / self.world_size

    def epoch_entry(self) -> dict:
        entry = super().epoch_entry()
        for key, value in entry.items():
            if key == "usage":
                entry[key] = [round(self.all_ranks_mean(v), 4) for v in value]
            elif key != "epoch":
                entry[key] = self.all_ranks_mean(value)
        return entry

    def save_moe_log(self):
        if self.is_main_process:
            super().save_moe_log()

    def plot_moe_progress(self):
        if self.is_main_process:
            super().plot_moe_progress()
