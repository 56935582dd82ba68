"""`make selftrain`: nnU-Net self-training from the baseline on the MoE's budget.

    nnUNet_train 3d_fullres nnUNetTrainerV2_selftrain <task> <fold> --npz -pretrained_weights <baseline checkpoint>

The baseline pseudo-labels the unlabelled pool; confident cases join the labelled ones for the first half of
each round, the second half fine-tunes on the labelled cases (SELFTRAIN_ROUNDS, SELFTRAIN_THRESHOLD; see
nnunet/training/network_training/nnUNetTrainerV2_selftrain.py). Pseudo-labels go to the model folder's
pseudo_labels/, never into the task. Prints the validation Dice beside the other trained models'.
"""
from typing import Optional, Sequence

from covidseg.runs.baseline_variants import main_for
from covidseg.core.errors import main_guard


def main(argv: Optional[Sequence[str]] = None) -> None:
    main_for("selftrain", __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    main_guard(main)
