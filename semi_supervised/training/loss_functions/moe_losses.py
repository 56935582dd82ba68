"""Losses of the semi-supervised mixture of experts (nnUNetTrainerV2_moe).

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
from typing import Optional, Sequence

import torch
import torch.nn.functional as F


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
