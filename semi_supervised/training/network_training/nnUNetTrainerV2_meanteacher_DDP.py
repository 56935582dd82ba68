"""nnUNetTrainerV2_meanteacher on several processes (torchrun; see distributed_training.DistributedTraining).

`nnUNet_train 3d_fullres nnUNetTrainerV2_meanteacher ...` under torchrun with WORLD_SIZE > 1 trains with this class
(patch 0008 picks <trainer>_DDP) into nnUNetTrainerV2_meanteacher's own folder, so `make meanteacher
NPROC_PER_NODE=N` resumes, validates and predicts like the single-process mean teacher. Besides the mixin's DDP
(the student's forward passes through DistributedDataParallel, the batch Dice over all ranks, rank 0 writes):
- every rank keeps its own teacher; it starts as the student and follows it by EMA after each step, and since DDP
  gives every rank the same student, the teachers stay equal (rank 0 saves it beside the checkpoint);
- the unlabelled batches, strong views and consistency are each rank's own; the logged means are over the ranks.
"""
from typing import Optional

from nnunet.training.network_training.distributed_training import DistributedTraining
from nnunet.training.network_training.nnUNetTrainerV2_meanteacher import nnUNetTrainerV2_meanteacher


class nnUNetTrainerV2_meanteacher_DDP(DistributedTraining, nnUNetTrainerV2_meanteacher):
    def __init__(self, plans_file, fold, output_folder=None, dataset_directory=None, batch_dice=True, stage=None,
                 unpack_data=True, deterministic=True, fp16=False, consistency_settings: Optional[dict] = None,
                 ema_decay: Optional[float] = None, local_rank: Optional[int] = None,
                 distribute_batch_size: bool = False, settings: Optional[dict] = None):
        super().__init__(plans_file, fold, output_folder, dataset_directory, batch_dice, stage, unpack_data,
                         deterministic, fp16, consistency_settings, ema_decay, settings=settings)
        self.init_args = self.init_args + (None, None, local_rank, distribute_batch_size)
        self.init_distributed_training(local_rank, distribute_batch_size)
