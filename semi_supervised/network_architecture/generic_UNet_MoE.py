"""Generic_UNet_MoE: nnU-Net's Generic_UNet with a mixture of decoder experts.

Shared by all experts: the encoder (conv_blocks_context) and the decoder's convolution blocks
(conv_blocks_localization). Each of the E experts owns its upsampling layers (tu, transposed
convolutions in nnUNetTrainerV2's configuration) and its segmentation heads (seg_outputs, one per
deep-supervision level). A gate reads the bottleneck (global average pooling, then a linear layer),
adds learned noise in training (noisy top-k gating, Shazeer et al. 2017) and picks the top-k experts
per sample; a softmax over the chosen logits gives their weights.

Routing is by expert over the batch: each chosen expert decodes, once, the sub-batch of samples that
chose it; nothing loops over samples.

Output:
- do_ds=True (training, nnU-Net's validation iterations): a MoEOutput with the gate-weighted
  combination of the chosen experts (all deep-supervision levels), each chosen expert's outputs by
  slot (slot j holds, for every sample, the output of its j-th chosen expert) and the gate's decision.
- do_ds=False (inference): one tensor, the gate-weighted combination of the chosen experts' logits at
  full resolution, so nnU-Net's sliding window, mirroring, -val, nnUNet_predict and nnUNet_ensemble
  work unchanged. k at inference is `inference_top_k` (default: the training k).

State-dict names match Generic_UNet's except for the experts: `tu.N.*` and `seg_outputs.N.*` become
`experts.E.tu.N.*` and `experts.E.seg_outputs.N.*`, and the gate adds `gate.*`.
"""
from copy import deepcopy
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nnunet.network_architecture.generic_UNet import Generic_UNet


class GateDecision(NamedTuple):
    indices: torch.Tensor  # (B, k) chosen experts per sample, best first
    weights: torch.Tensor  # (B, k) softmax over the chosen logits
    probs: torch.Tensor    # (B, E) softmax over all logits (for the load-balancing loss)


class MoEOutput(NamedTuple):
    combined: Tuple[torch.Tensor, ...]             # deep-supervision outputs, full resolution first
    slots: List[Tuple[torch.Tensor, ...]]          # per slot j: the j-th chosen expert's outputs
    gate: GateDecision


class NoisyTopKGate(nn.Module):
    """Bottleneck features -> top-k experts per sample. Noise (with a learned scale) only in training."""

    def __init__(self, in_features: int, num_experts: int, noise_epsilon: float = 1e-2):
        super().__init__()
        self.num_experts = num_experts
        self.noise_epsilon = noise_epsilon
        self.w_gate = nn.Linear(in_features, num_experts, bias=False)
        self.w_noise = nn.Linear(in_features, num_experts, bias=False)
        # zero weights: every expert equally likely at the start; the noise breaks ties
        nn.init.zeros_(self.w_gate.weight)
        nn.init.zeros_(self.w_noise.weight)

    def forward(self, features: torch.Tensor, top_k: int, forced_expert: Optional[int] = None) -> GateDecision:
        pooled = features.float().mean(dim=tuple(range(2, features.dim())))
        logits = self.w_gate(pooled)
        if self.training:
            noise_std = F.softplus(self.w_noise(pooled)) + self.noise_epsilon
            logits = logits + torch.randn_like(logits) * noise_std
        probs = torch.softmax(logits, dim=1)
        if forced_expert is not None:
            indices = torch.full((features.shape[0], 1), forced_expert, dtype=torch.long, device=features.device)
            return GateDecision(indices, torch.ones_like(indices, dtype=probs.dtype), probs)
        top_logits, indices = logits.topk(top_k, dim=1)
        return GateDecision(indices, torch.softmax(top_logits, dim=1), probs)


class Expert(nn.Module):
    """One expert: the upsampling layers and segmentation heads of a Generic_UNet decoder."""

    def __init__(self, tu: nn.ModuleList, seg_outputs: nn.ModuleList):
        super().__init__()
        self.tu = tu
        self.seg_outputs = seg_outputs


class Generic_UNet_MoE(Generic_UNet):
    def __init__(self, *generic_unet_args, num_experts: int = 3, top_k: int = 2,
                 inference_top_k: Optional[int] = None, **generic_unet_kwargs):
        """Takes Generic_UNet's arguments unchanged, plus the mixture's settings (keyword-only)."""
        super().__init__(*generic_unet_args, **generic_unet_kwargs)
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        inference_top_k = top_k if inference_top_k is None else inference_top_k
        if not 1 <= inference_top_k <= num_experts:
            raise ValueError(f"inference_top_k must be in [1, num_experts={num_experts}], got {inference_top_k}")
        self.num_experts, self.top_k, self.inference_top_k = num_experts, top_k, inference_top_k
        self.forced_expert: Optional[int] = None  # set to route every sample to one expert (weight transfer checks)

        experts = [Expert(self.tu, self.seg_outputs)]
        for _ in range(num_experts - 1):
            expert = Expert(deepcopy(self.tu), deepcopy(self.seg_outputs))
            if self.weightInitializer is not None:
                expert.apply(self.weightInitializer)  # independent initialisation when trained from scratch
            experts.append(expert)
        del self.tu, self.seg_outputs
        self.experts = nn.ModuleList(experts)
        self.gate = NoisyTopKGate(self.conv_blocks_context[-1][-1].output_channels, num_experts)

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        skips = []
        for d in range(len(self.conv_blocks_context) - 1):
            x = self.conv_blocks_context[d](x)
            skips.append(x)
            if not self.convolutional_pooling:
                x = self.td[d](x)
        return self.conv_blocks_context[-1](x), skips

    def decode(self, expert: Expert, x: torch.Tensor, skips: List[torch.Tensor]) -> List[torch.Tensor]:
        """One expert's decoder pass; returns its outputs, full resolution first (only that one without ds)."""
        deep_supervision = self._deep_supervision and self.do_ds
        last = len(self.conv_blocks_localization) - 1
        outputs = []
        for u in range(last + 1):
            x = expert.tu[u](x)
            x = torch.cat((x, skips[-(u + 1)]), dim=1)
            x = self.conv_blocks_localization[u](x)
            if deep_supervision or u == last:
                outputs.append(self.final_nonlin(expert.seg_outputs[u](x)))
        if not deep_supervision:
            return outputs
        return [outputs[-1]] + [op(o) for op, o in zip(list(self.upscale_logits_ops)[::-1], outputs[:-1][::-1])]

    def route(self, bottleneck: torch.Tensor, skips: List[torch.Tensor],
              decision: GateDecision) -> List[List[torch.Tensor]]:
        """Run each chosen expert once on the samples that chose it; return outputs by slot and level."""
        batch, k = decision.indices.shape
        slots: List[Optional[List[torch.Tensor]]] = [None] * k
        for expert_id in torch.unique(decision.indices).tolist():
            chosen = decision.indices == expert_id                      # (B, k)
            rows = chosen.any(dim=1).nonzero(as_tuple=True)[0]
            outputs = self.decode(self.experts[expert_id], bottleneck[rows], [s[rows] for s in skips])
            for slot in range(k):
                in_slot = chosen[rows, slot]
                if not in_slot.any():
                    continue
                if slots[slot] is None:
                    slots[slot] = [o.new_zeros((batch,) + o.shape[1:]) for o in outputs]
                slots[slot] = [s.index_copy(0, rows[in_slot], o[in_slot]) for s, o in zip(slots[slot], outputs)]
        return slots

    def forward(self, x: torch.Tensor):
        bottleneck, skips = self.encode(x)
        top_k = self.top_k if self.do_ds else self.inference_top_k
        decision = self.gate(bottleneck, top_k, self.forced_expert)
        slots = self.route(bottleneck, skips, decision)
        combined = []
        for level in range(len(slots[0])):
            weighted = [decision.weights[:, j].to(slots[j][level].dtype).view(-1, *[1] * (slots[j][level].dim() - 1))
                        * slots[j][level] for j in range(len(slots))]
            combined.append(torch.stack(weighted).sum(0))
        if not (self._deep_supervision and self.do_ds):
            return combined[0]
        return MoEOutput(tuple(combined), [tuple(s) for s in slots], decision)
