"""nnUNetTrainerV2_finetune: the same-budget control of the mixture of experts.

nnU-Net's own trainer and network, continued from the 3d_fullres baseline's weights (`nnUNet_train ...
-pretrained_weights`, as `make control` does) on the labelled cases only. Its initial learning rate is
FINETUNE_LR (FinetuneSettings, nnunet/training/settings.py), which nnUNetTrainerV2_moe reads too, and it trains
for the epochs x iterations it is given (EPOCHS / ITERS): with the MoE's settings it gets the MoE's budget and
learning-rate schedule, so what is left between the two is the experts and the unlabelled scans.

Settings by name (method_settings; patch 0009 stores them in the checkpoint's .pkl and settings.json, and
restore_model gives them back as `settings=`): {"finetune": FinetuneSettings}. A subclass adds its own groups.
"""
from typing import Optional

from nnunet.training.network_training.nnUNetTrainerV2 import nnUNetTrainerV2
from nnunet.training.settings import FinetuneSettings, group_from


class FinetuneSettingsMixin:
    """The fine-tuning learning rate of a trainer that continues the baseline (set after nnU-Net's constructor)."""

    def use_finetune_settings(self, settings: Optional[dict]) -> None:
        self.finetune = group_from(settings, "finetune", FinetuneSettings)
        self.initial_lr = self.finetune.initial_lr

    def method_settings(self) -> dict:
        return {"finetune": self.finetune.as_record()}


class nnUNetTrainerV2_finetune(FinetuneSettingsMixin, nnUNetTrainerV2):
    def __init__(self, plans_file, fold, output_folder=None, dataset_directory=None, batch_dice=True, stage=None,
                 unpack_data=True, deterministic=True, fp16=False, settings: Optional[dict] = None):
        super().__init__(plans_file, fold, output_folder, dataset_directory, batch_dice, stage, unpack_data,
                         deterministic, fp16)
        self.use_finetune_settings(settings)
