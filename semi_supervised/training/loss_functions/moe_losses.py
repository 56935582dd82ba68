"""Losses of the semi-supervised mixture of experts (nnUNetTrainerV2_moe).

- gate_weighted_dice_ce (the supervised term): nnU-Net's Dice + cross-entropy over the (sample, chosen expert)
  pairs, each pair counted with its gate weight: true/false positives and negatives of a pair are weighted before
  the batch Dice sums them, and the cross-entropy is the gate-weighted mean over pairs. The gate weights of a sample
  sum to 1, so while the experts are identical the loss, and its gradient, are exactly those of the control's
  nnU-Net on the same batch (the earlier "mean per-expert loss + combined output" was twice that). The gate's
  gradient is the difference between its experts' losses on a sample: it learns to send a sample to the expert
  that segments it best (Jacobs et al. 1991's competitive mixture), which lets experts specialise.
- load_balancing_loss: Switch-Transformer style E * sum_i f_i * P_i, where f_i is the fraction of
  routing assignments that went to expert i and P_i the mean gate probability of expert i. It is 1
  when usage is uniform and grows up to E when one expert takes everything.
- gate_entropy: how undecided the gate is (a diagnostic).
- cross_pseudo_supervision_loss (CONSISTENCY=cps): consistency between two experts on unlabelled data: each expert's
  cross-entropy against the other's argmax (the pseudo-label carries no gradient). Zero gradient
  direction when both agree and are confident; averaged over all pairs of chosen experts.
- consistency_weight: lambda(t), 0 during warm-up, then the sigmoid ramp-up exp(-5 (1 - t)^2) to
  lambda_max over `rampup_epochs` (Laine & Aila 2017), then lambda_max.
"""
import math
from itertools import combinations
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from nnunet.training.loss_functions.dice_loss import get_tp_fp_fn_tn
from nnunet.utilities.nd_softmax import softmax_helper


SMOOTH = 1e-5  # nnUNetTrainerV2's soft Dice


def pair_dice_ce(outputs: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, batch_dice: bool,
                 gather: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """One deep-supervision level. outputs (P, C, ...) logits by pair, target (P, 1, ...) labels, weights (P,) the
    pairs' gate weights (summing to the number of samples B). gather: all-gathers a (P, C) tensor over ranks (DDP)."""
    tp, fp, fn, _ = get_tp_fp_fn_tn(softmax_helper(outputs), target, tuple(range(2, outputs.dim())), None, False)
    w = weights.to(tp.dtype)[:, None]
    samples = weights.sum()
    if batch_dice:
        tp, fp, fn = ((t * w) for t in (tp, fp, fn))
        if gather is not None:
            tp, fp, fn = (gather(t) for t in (tp, fp, fn))
        tp, fp, fn = tp.sum(0), fp.sum(0), fn.sum(0)
        dice = ((2 * tp + SMOOTH) / (2 * tp + fp + fn + SMOOTH + 1e-8))[1:].mean()
    else:
        per_pair = ((2 * tp + SMOOTH) / (2 * tp + fp + fn + SMOOTH + 1e-8))[:, 1:].mean(1)
        dice = (per_pair * w[:, 0]).sum() / samples
    cross_entropy = F.cross_entropy(outputs.float(), target[:, 0].long(), reduction="none").flatten(1).mean(1)
    return (cross_entropy * weights.float()).sum() / samples - dice


def gate_weighted_dice_ce(slots: Sequence[Sequence[torch.Tensor]], targets: Sequence[torch.Tensor],
                          weights: torch.Tensor, level_weights: Sequence[float], batch_dice: bool = True,
                          gather: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """The MoE's supervised loss. slots[j][l]: slot j's output at deep-supervision level l (B, C, ...);
    targets[l] (B, 1, ...); weights (B, k) the gate's weights of the chosen experts; level_weights nnU-Net's deep
    supervision weights (every level enters the graph, a 0-weighted one times 0, as DDP needs)."""
    k = len(slots)
    pair_weights = weights.reshape(-1)  # pair b*k + j: sample b's j-th chosen expert
    total = 0
    for level, level_weight in enumerate(level_weights):
        outputs = torch.stack([slot[level] for slot in slots], dim=1).flatten(0, 1)
        target = targets[level].repeat_interleave(k, dim=0)
        total = total + float(level_weight) * pair_dice_ce(outputs, target, pair_weights, batch_dice, gather)
    return total


def load_balancing_loss(indices: torch.Tensor, probs: torch.Tensor, num_experts: int,
                        fraction_routed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """indices: (B, k) chosen experts; probs: (B, E) gate probabilities. fraction_routed: the routing fractions to
    use instead of this batch's (under DDP: all ranks', so that the loss is the one of the global batch)."""
    if fraction_routed is None:
        fraction_routed = expert_usage(indices, num_experts)
    mean_probability = probs.float().mean(dim=0)
    return num_experts * torch.sum(fraction_routed * mean_probability)


def expert_usage(indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Fraction of routing assignments per expert (sums to 1)."""
    return torch.bincount(indices.flatten(), minlength=num_experts).float() / indices.numel()


def gate_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the gate's (B, E) probabilities: log E when it cannot tell experts apart, 0 when sure."""
    p = probs.float().clamp_min(1e-12)
    return -(p * p.log()).sum(dim=1).mean()


def signal_to_noise(clean_logits: torch.Tensor, noise_std: torch.Tensor) -> Optional[float]:
    """How much the gate's noise-free scores differ between samples, in units of its training noise: the standard
    deviation over samples of each expert's score, averaged over experts, over the mean noise std. Below 1 the
    routing in training is mostly the noise's. None with fewer than 2 samples."""
    if clean_logits.shape[0] < 2:
        return None
    return float(clean_logits.float().std(dim=0).mean() / noise_std.float().mean().clamp_min(1e-12))


def mutual_information_bits(first: Sequence, second: Sequence) -> Optional[float]:
    """Plug-in mutual information (bits) between two paired discrete sequences (e.g. top-1 expert and site); None
    when empty. With N pairs it is biased upwards by about (|X| - 1)(|Y| - 1) / (2 N ln 2)."""
    if len(first) == 0:
        return None
    joint = {}
    for a, b in zip(first, second):
        joint[(a, b)] = joint.get((a, b), 0) + 1
    n = len(first)
    left, right = {}, {}
    for (a, b), count in joint.items():
        left[a] = left.get(a, 0) + count
        right[b] = right.get(b, 0) + count
    return float(sum(c / n * math.log2(c * n / (left[a] * right[b])) for (a, b), c in joint.items()))


def cross_pseudo_supervision_loss(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Each expert's cross-entropy against the other's hard prediction; logits (B, C, ...)."""
    pseudo_a = logits_a.detach().argmax(dim=1)
    pseudo_b = logits_b.detach().argmax(dim=1)
    return 0.5 * (F.cross_entropy(logits_a.float(), pseudo_b) + F.cross_entropy(logits_b.float(), pseudo_a))


def pairwise_consistency_loss(slot_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean cross pseudo-supervision over all pairs of chosen experts (slots)."""
    pairs = list(combinations(range(len(slot_logits)), 2))
    if not pairs:
        return slot_logits[0].new_zeros(())
    return sum(cross_pseudo_supervision_loss(slot_logits[i], slot_logits[j]) for i, j in pairs) / len(pairs)


def consistency_weight(epoch: int, lambda_max: float, warmup_epochs: int, rampup_epochs: int) -> float:
    if epoch < warmup_epochs:
        return 0.0
    if rampup_epochs <= 0:
        return lambda_max
    t = min(1.0, (epoch - warmup_epochs) / rampup_epochs)
    return lambda_max * math.exp(-5.0 * (1.0 - t) ** 2)
