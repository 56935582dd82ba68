"""Losses for DistributedDataParallel training: the same loss as one process would compute on all ranks' batches.

DistributedDiceCELoss: nnU-Net's Dice + cross-entropy with the batch Dice over all ranks.
nnU-Net's 3d_fullres loss (DC_and_CE_loss: soft Dice without background, smooth 1e-5, plus cross-entropy) uses
batch Dice: true positives, false positives and false negatives are summed over the batch before the ratio. On N
processes each rank only sees its part of the batch, so here the sums are all-gathered over the ranks
(nnunet.utilities.distributed.awesome_allgather_function, whose gradient is scaled for DDP's average, patch 0008).
The cross-entropy is a mean over the rank's voxels, which DDP's gradient average turns into the mean over all.

EveryOutputLoss: nnU-Net's deep-supervision sum (MultipleOutputLoss2), except that an output weighted 0 (the
coarsest) still enters the graph, times 0. MultipleOutputLoss2 skips it, so its segmentation head gets no gradient;
DDP without find_unused_parameters then never reduces that head's gradient bucket, and the other parameters in the
bucket are silently left un-averaged. (nnUNetTrainerV2_DDP's own loss also takes every output.)
"""
from typing import Sequence

import numpy as np
import torch
from torch import nn

from nnunet.training.loss_functions.crossentropy import RobustCrossEntropyLoss
from nnunet.training.loss_functions.dice_loss import get_tp_fp_fn_tn
from nnunet.utilities.distributed import awesome_allgather_function
from nnunet.utilities.nd_softmax import softmax_helper

SMOOTH = 1e-5  # nnUNetTrainerV2's


class DistributedDiceCELoss(nn.Module):
    def __init__(self, batch_dice: bool = True, smooth: float = SMOOTH):
        super().__init__()
        self.batch_dice, self.smooth = batch_dice, smooth
        self.ce = RobustCrossEntropyLoss()

    def forward(self, net_output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        axes = tuple(range(2, net_output.dim()))
        tp, fp, fn, _ = get_tp_fp_fn_tn(softmax_helper(net_output), target, axes, None, False)  # (B, C) each
        if self.batch_dice:
            tp, fp, fn = (awesome_allgather_function.apply(t).sum(0) for t in (tp, fp, fn))  # (C,) over all ranks
        dice = (2 * tp + self.smooth) / (2 * tp + fp + fn + self.smooth + 1e-8)
        return self.ce(net_output, target[:, 0].long()) - dice[..., 1:].mean()


class EveryOutputLoss(nn.Module):
    def __init__(self, loss: nn.Module, weights: Sequence[float]):
        super().__init__()
        self.loss, self.weights = loss, np.asarray(weights, dtype=float)

    def forward(self, outputs, targets) -> torch.Tensor:
        return sum(float(w) * self.loss(o, t) for w, o, t in zip(self.weights, outputs, targets))
