"""The initial learning rate of a fine-tuning run, shared by the MoE and its same-budget control.

Both continue the 3d_fullres baseline from its weights and follow nnU-Net's poly schedule from this rate over
their epochs, so with the same epochs x iterations they get the same schedule. nnU-Net's own 1e-2 is meant for
training from scratch; the environment variable FINETUNE_LR (make FINETUNE_LR=...) sets it.
"""
import os

FINETUNE_LR_VARIABLE = "FINETUNE_LR"
DEFAULT_FINETUNE_LR = 1e-2


def finetune_learning_rate() -> float:
    """FINETUNE_LR from the environment (unset or empty: DEFAULT_FINETUNE_LR); a ValueError names a bad value."""
    raw = os.environ.get(FINETUNE_LR_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_FINETUNE_LR
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise ValueError(f"{FINETUNE_LR_VARIABLE}={raw!r}: the initial learning rate must be a number in (0, 1)")
    return value
