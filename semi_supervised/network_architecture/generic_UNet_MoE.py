"""Generic_UNet_MoE: nnU-Net's Generic_UNet with a mixture of decoder experts.

Shared by all experts: the encoder (conv_blocks_context) and the decoder's convolution blocks
(conv_blocks_localization). Each of the E experts owns its upsampling layers (tu, transposed
convolutions in nnUNetTrainerV2's configuration) and its segmentation heads (seg_outputs, one per
deep-supervision level). A gate reads the bottleneck (global average pooling, then a linear layer),
adds learned noise in training (noisy top-k gating, Shazeer et al. 2017) and picks the top-k experts
per sample; a softmax over the chosen logits gives their weights.

Routing is by expert over the batch, and nothing loops over samples: the decoder's batch is the P = B*k
(sample, chosen expert) pairs, grouped by expert. Each chosen expert runs its upsampling layers and heads
once on its group; each shared decoder block runs once on all pairs. So every layer runs at most once per
forward pass, which Grad-CAM relies on (nnunet/inference/attention_maps.py); `last_routing` keeps the
pairs of the last forward pass so that per-pair activations can be summed per sample.

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


class Routing(NamedTuple):
    """The (sample, expert) pairs of one forward pass, grouped by expert: the decoder's batch."""
    experts: List[int]     # the chosen experts, one group of pairs each
    sizes: List[int]       # pairs per group
    samples: torch.Tensor  # (P,) the sample of each pair
    order: torch.Tensor    # (P,) permutation that sorts the pairs by sample, then slot
    batch_size: int
    in_batch_order: bool   # the pairs are the samples, in order (k=1 and one expert): nothing to gather

    @staticmethod
    def of(indices: torch.Tensor) -> "Routing":
        """Routing of the gate's (B, k) chosen experts. Built on the host from one copy of `indices`: which
        experts run is decided there anyway, and one synchronisation is cheaper than several small kernels."""
        chosen = indices.tolist()
        pairs = sorted((expert, sample, slot) for sample, row in enumerate(chosen) for slot, expert in enumerate(row))
        experts = sorted({expert for expert, _, _ in pairs})
        sizes = [sum(1 for expert, _, _ in pairs if expert == e) for e in experts]
        samples = [sample for _, sample, _ in pairs]
        order = sorted(range(len(pairs)), key=lambda p: pairs[p][1:])
        device = indices.device
        return Routing(experts, sizes, torch.tensor(samples, device=device), torch.tensor(order, device=device),
                       len(chosen), samples == list(range(len(chosen))))

    def gather(self, per_sample: torch.Tensor) -> torch.Tensor:
        """(B, ...) by sample -> (P, ...) by pair."""
        if self.in_batch_order:
            return per_sample
        if self.batch_size == 1:
            return per_sample.expand(len(self.order), *per_sample.shape[1:])
        return per_sample[self.samples]

    def by_sample(self, pairs: torch.Tensor) -> torch.Tensor:
        """(P, ...) by pair -> (B, k, ...): entry [b, j] belongs to sample b's j-th chosen expert."""
        if not self.in_batch_order:
            pairs = pairs[self.order]
        return pairs.unflatten(0, (self.batch_size, -1))


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
        self.last_routing: Optional[Routing] = None

        experts = [Expert(self.tu, self.seg_outputs)]
        for _ in range(num_experts - 1):
            expert = Expert(deepcopy(self.tu), deepcopy(self.seg_outputs))
            if self.weightInitializer is not None:
                expert.apply(self.weightInitializer)  # independent initialisation when trained from scratch
            experts.append(expert)
        del self.tu, self.seg_outputs
        self.experts = nn.ModuleList(experts)
        self.gate = NoisyTopKGate(self.conv_blocks_context[-1][-1].output_channels, num_experts)

    @staticmethod
    def runs_on_pairs(layer: str) -> bool:
        """Whether a layer's activations come per (sample, chosen expert) pair rather than per sample."""
        return layer.startswith("conv_blocks_localization.")

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        skips = []
        for d in range(len(self.conv_blocks_context) - 1):
            x = self.conv_blocks_context[d](x)
            skips.append(x)
            if not self.convolutional_pooling:
                x = self.td[d](x)
        return self.conv_blocks_context[-1](x), skips

    def decode_pairs(self, routing: Routing, bottleneck: torch.Tensor, skips: List[torch.Tensor]) -> List[torch.Tensor]:
        """Decode every (sample, expert) pair of `routing`; returns the outputs by pair, full resolution first
        (only that one without deep supervision).

        Each expert's upsampling layers and heads run once, on its group of pairs; each shared convolution block
        of the decoder runs once, on all pairs together (nnU-Net's instance norm keeps the pairs independent).
        """
        deep_supervision = self._deep_supervision and self.do_ds
        last = len(self.conv_blocks_localization) - 1
        groups = routing.gather(bottleneck).split(routing.sizes)
        outputs = []
        for u in range(last + 1):
            upsampled = torch.cat([self.experts[e].tu[u](g) for e, g in zip(routing.experts, groups)])
            x = self.conv_blocks_localization[u](torch.cat((upsampled, routing.gather(skips[-(u + 1)])), dim=1))
            groups = x.split(routing.sizes)
            if deep_supervision or u == last:
                outputs.append(torch.cat([self.final_nonlin(self.experts[e].seg_outputs[u](g))
                                          for e, g in zip(routing.experts, groups)]))
        if not deep_supervision:
            return outputs
        return [outputs[-1]] + [op(o) for op, o in zip(list(self.upscale_logits_ops)[::-1], outputs[:-1][::-1])]

    def decode(self, expert: int, bottleneck: torch.Tensor, skips: List[torch.Tensor]) -> List[torch.Tensor]:
        """One expert's decoder outputs for the whole batch (a reference for the routed forward pass)."""
        indices = torch.full((bottleneck.shape[0], 1), expert, dtype=torch.long, device=bottleneck.device)
        return self.decode_pairs(Routing.of(indices), bottleneck, skips)

    def shared_parameters(self) -> List[nn.Parameter]:
        """The parameters every expert uses: the encoder and the decoder's shared convolution blocks."""
        return [p for name, p in self.named_parameters() if not name.startswith(("experts.", "gate."))]

    def forward(self, x: torch.Tensor, decision: Optional[GateDecision] = None):
        """`decision`: route by this gate decision instead of the gate's (the strong view of an unlabelled batch
        goes to the experts its weak view chose)."""
        bottleneck, skips = self.encode(x)
        top_k = self.top_k if self.do_ds else self.inference_top_k
        if decision is None:
            decision = self.gate(bottleneck, top_k, self.forced_expert)
        routing = Routing.of(decision.indices)
        self.last_routing = routing
        by_sample = [routing.by_sample(o) for o in self.decode_pairs(routing, bottleneck, skips)]  # (B, k, C, ...)
        combined = []
        for outputs in by_sample:
            weights = decision.weights.to(outputs.dtype).view(*decision.weights.shape, *[1] * (outputs.dim() - 2))
            combined.append((weights * outputs).sum(1))
        if not (self._deep_supervision and self.do_ds):
            return combined[0]
        slots = [tuple(outputs[:, j] for outputs in by_sample) for j in range(decision.indices.shape[1])]
        return MoEOutput(tuple(combined), slots, decision)
