"""The initial learning rate of a fine-tuning run, shared by the MoE and its same-budget control.

Both continue the 3d_fullres baseline from its weights and follow nnU-Net's poly schedule from this rate over
their epochs, so with the same epochs x iterations they get the same schedule. nnU-Net's own 1e-2 is meant for
training from scratch; the environment variable FINETUNE_LR (make FINETUNE_LR=...) sets it
(nnunet.training.settings.FinetuneSettings).
"""
from nnunet.training.settings import FinetuneSettings

FINETUNE_LR_VARIABLE = FinetuneSettings.ENVIRONMENT["initial_lr"].name
DEFAULT_FINETUNE_LR = FinetuneSettings().initial_lr


def finetune_learning_rate() -> float:
    """FINETUNE_LR from the environment (unset or empty: DEFAULT_FINETUNE_LR); a ValueError names a bad value."""
    return FinetuneSettings.from_environment().initial_lr
