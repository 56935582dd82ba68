"""nnUNetTrainerV2_finetune: the same-budget control of the mixture of experts.

nnU-Net's own trainer and network, continued from the 3d_fullres baseline's weights (`nnUNet_train ...
-pretrained_weights`, as `make control` does) on the labelled cases only. Its initial learning rate is
FINETUNE_LR, which nnUNetTrainerV2_moe reads too, and it trains for the epochs x iterations it is given
(EPOCHS / ITERS): with the MoE's settings it gets the MoE's budget and learning-rate schedule, so what is left
between the two is the experts and the unlabelled scans.
"""
from nnunet.training.learning_rate.finetune_lr import finetune_learning_rate
from nnunet.training.network_training.nnUNetTrainerV2 import nnUNetTrainerV2


class nnUNetTrainerV2_finetune(nnUNetTrainerV2):
    def __init__(self, plans_file, fold, output_folder=None, dataset_directory=None, batch_dice=True, stage=None,
                 unpack_data=True, deterministic=True, fp16=False):
        super().__init__(plans_file, fold, output_folder, dataset_directory, batch_dice, stage, unpack_data,
                         deterministic, fp16)
        self.initial_lr = finetune_learning_rate()
