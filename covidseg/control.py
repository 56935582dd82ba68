"""`make control`: the MoE's same-budget control, nnU-Net's own network fine-tuned on the labelled cases only.

    nnUNet_train 3d_fullres nnUNetTrainerV2_finetune <task> <fold> --npz -pretrained_weights <baseline checkpoint>

It continues the 3d_fullres baseline (`make baseline`) from its final checkpoint for EPOCHS x ITERS with the
initial learning rate FINETUNE_LR, exactly the MoE's budget and schedule when both are run with the same
settings (`make semi`), but without experts and without unlabelled scans. Prints the validation Dice of the
baseline, the control and the other trained models on the same cases.
"""
from typing import Optional, Sequence

from covidseg.runs.baseline_variants import main_for
from covidseg.core.errors import main_guard


def main(argv: Optional[Sequence[str]] = None) -> None:
    main_for("control", __doc__.split("\n\n")[0], argv, distributed=True)


if __name__ == "__main__":
    main_guard(main)
