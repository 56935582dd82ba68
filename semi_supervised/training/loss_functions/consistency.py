"""Consistency losses on unlabelled scans and the settings that choose them (shared by the semi-supervised trainers).

CONSISTENCY=weak_strong (default): weak-to-strong pseudo-supervision. A teacher's softmax on the weak view
gives per voxel a pseudo-label (argmax) and its confidence (max probability); the student's logits on the strong
view (strong_perturbations.py, same voxels) are trained towards the pseudo-labels of the confident voxels:

    L = sum_v [conf_v >= threshold] * CE(student_v, pseudo_v) / (number of voxels)

(dividing by all voxels, as UniMatch does, so the term shrinks when few voxels are confident). In the MoE the
teachers and students are the chosen experts: every chosen expert's weak-view pseudo-labels train every *other*
chosen expert on the strong view (ordered pairs; with k = 1 the expert teaches itself), so the perturbations
give the term a gradient even while the experts are identical.

CONSISTENCY=cps: the earlier cross pseudo-supervision between the chosen experts on one (weak) view, no
threshold (moe_losses.pairwise_consistency_loss); kept for comparison.

lambda(epoch) weights the term: 0 during CONSISTENCY_WARMUP_EPOCHS, then exp(-5 (1 - t)^2) up to
CONSISTENCY_LAMBDA_MAX over CONSISTENCY_RAMPUP_EPOCHS (moe_losses.consistency_weight). The settings are
ConsistencySettings (nnunet/training/settings.py).
"""
from itertools import combinations, permutations
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from nnunet.training.settings import ConsistencySettings  # noqa: F401 (the term's settings, also imported from here)


class PseudoLabels(NamedTuple):
    labels: torch.Tensor      # (B, *spatial) argmax of the teacher's softmax
    confidence: torch.Tensor  # (B, *spatial) its probability


def pseudo_labels(teacher_logits: torch.Tensor) -> PseudoLabels:
    probabilities = torch.softmax(teacher_logits.detach().float(), dim=1)
    confidence, labels = probabilities.max(dim=1)
    return PseudoLabels(labels, confidence)


def thresholded_cross_entropy(student_logits: torch.Tensor, target: PseudoLabels, threshold: float) -> torch.Tensor:
    """CE towards the confident pseudo-labels, summed over them and divided by all voxels."""
    per_voxel = F.cross_entropy(student_logits.float(), target.labels, reduction="none")
    return (per_voxel * (target.confidence >= threshold).float()).sum() / per_voxel.numel()


def teacher_student_pairs(k: int) -> List[Tuple[int, int]]:
    """Ordered (teacher slot, student slot) pairs of k chosen experts: every other one, or itself when k = 1."""
    return list(permutations(range(k), 2)) or [(0, 0)]


def weak_to_strong_loss(strong_logits: Sequence[torch.Tensor], targets: Sequence[PseudoLabels],
                        threshold: float) -> torch.Tensor:
    """Mean over ordered slot pairs (i, j) of the strong view's slot j trained towards slot i's pseudo-labels.
    `targets` are the weak view's pseudo-labels per slot, already mixed like the strong view (CutMix.apply)."""
    pairs = teacher_student_pairs(len(strong_logits))
    return sum(thresholded_cross_entropy(strong_logits[j], targets[i], threshold) for i, j in pairs) / len(pairs)


def disagreement(slot_logits: Sequence[torch.Tensor]) -> float:
    """Fraction of voxels where the chosen experts' argmax are not all the same (0 with one expert)."""
    labels = [logits.argmax(dim=1) for logits in slot_logits]
    differ = torch.zeros_like(labels[0], dtype=torch.bool)
    for other in labels[1:]:
        differ |= other != labels[0]
    return differ.float().mean().item()


def confident_fraction(targets: Sequence[PseudoLabels], threshold: float) -> float:
    """Fraction of voxels (over all slots) whose pseudo-label passes the threshold (mostly background)."""
    return torch.stack([(t.confidence >= threshold).float().mean() for t in targets]).mean().item()


def confident_fraction_lesion(targets: Sequence[PseudoLabels], threshold: float) -> Optional[float]:
    """Fraction of the voxels pseudo-labelled lesion (label > 0, over all slots) whose confidence passes the
    threshold; None when no voxel is pseudo-labelled lesion."""
    lesion = torch.stack([t.labels > 0 for t in targets])
    count = lesion.sum()
    if count == 0:
        return None
    confident = torch.stack([t.confidence >= threshold for t in targets])
    return ((lesion & confident).sum() / count).item()


def lesion_dice(slot_logits: Sequence[torch.Tensor]) -> Optional[float]:
    """Dice between the chosen experts' lesion predictions (argmax > 0), pooled over the batch and averaged over
    pairs of slots: 1 when the experts predict the same lesions. None with one slot or when no expert predicts
    any lesion."""
    lesions = [logits.argmax(dim=1) > 0 for logits in slot_logits]
    values = []
    for i, j in combinations(range(len(lesions)), 2):
        size = lesions[i].sum() + lesions[j].sum()
        if size > 0:
            values.append((2 * (lesions[i] & lesions[j]).sum() / size).item())
    return sum(values) / len(values) if values else None
