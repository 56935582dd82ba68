"""`make meanteacher`: nnU-Net's network with a mean teacher on the unlabelled scans, from the baseline, on the
MoE's budget.

    nnUNet_train 3d_fullres nnUNetTrainerV2_meanteacher <task> <fold> --npz -pretrained_weights <baseline checkpoint>

The MoE's weak-to-strong consistency with an EMA teacher (MT_EMA_DECAY) instead of the other experts (see
nnunet/training/network_training/nnUNetTrainerV2_meanteacher.py). Prints the validation Dice beside the other
trained models'.
"""
from typing import Optional, Sequence

from covidseg.runs.baseline_variants import main_for
from covidseg.core.errors import main_guard


def main(argv: Optional[Sequence[str]] = None) -> None:
    main_for("meanteacher", __doc__.split("\n\n")[0], argv, distributed=True)


if __name__ == "__main__":
    main_guard(main)
