"""nnUNetTrainerV2_finetune (the MoE's same-budget control) on several processes: nnU-Net's nnUNetTrainerV2_DDP
(patch 0008) with the control's settings (FINETUNE_LR). nnUNet_train picks it under torchrun and trains into
nnUNetTrainerV2_finetune's folder (`make control NPROC_PER_NODE=N`)."""
from typing import Optional

from nnunet.training.network_training.nnUNetTrainerV2_DDP import nnUNetTrainerV2_DDP
from nnunet.training.network_training.nnUNetTrainerV2_finetune import FinetuneSettingsMixin


class nnUNetTrainerV2_finetune_DDP(FinetuneSettingsMixin, nnUNetTrainerV2_DDP):
    def __init__(self, plans_file, fold, local_rank=None, output_folder=None, dataset_directory=None,
                 batch_dice=True, stage=None, unpack_data=True, deterministic=True, distribute_batch_size=False,
                 fp16=False, settings: Optional[dict] = None):
        super().__init__(plans_file, fold, local_rank, output_folder, dataset_directory, batch_dice, stage,
                         unpack_data, deterministic, distribute_batch_size, fp16)
        self.use_finetune_settings(settings)
