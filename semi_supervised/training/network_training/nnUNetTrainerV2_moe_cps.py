"""nnUNetTrainerV2_moe_cps: the mixture of experts with cross pseudo-supervision between the chosen experts on one
(weak) view instead of weak-to-strong consistency (nnunet/training/loss_functions/moe_losses.py).

Its own class, so its models have their own folder (<trainer>__<plans>, the nnU-Net idiom for a variant) and a
name that says what they are: `make semi MOE_TRAINER=nnUNetTrainerV2_moe_cps`, `make experiment METHODS=moe_cps`.
Everything else is nnUNetTrainerV2_moe's, settings included.
"""
from nnunet.training.network_training.nnUNetTrainerV2_moe import nnUNetTrainerV2_moe


class nnUNetTrainerV2_moe_cps(nnUNetTrainerV2_moe):
    CONSISTENCY_KIND = "cps"
