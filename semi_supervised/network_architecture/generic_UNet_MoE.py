"""Generic_UNet_MoE: nnU-Net's Generic_UNet with a mixture of decoder experts.

Shared by all experts: the encoder (conv_blocks_context) and the decoder's convolution blocks
(conv_blocks_localization). Each of the E experts owns its upsampling layers (tu, transposed
convolutions in nnUNetTrainerV2's configuration) and its segmentation heads (seg_outputs, one per
deep-supervision level). A gate reads the bottleneck (global average pooling, then a linear layer),
adds learned noise in training (noisy top-k gating, Shazeer et al. 2017) and picks the top-k experts
per sample; a softmax over the chosen logits gives their weights.

Routing stays on the device, and nothing loops over samples or experts: the decoder's batch is the P = B*k
(sample, chosen expert) pairs in sample order. The experts' upsampling layers (transposed convolutions) and heads
(1x1 convolutions) run as one grouped convolution over the pairs, with each pair's weights gathered from the
stacked experts by the gate's indices; each shared decoder block runs once on all pairs. So the forward pass
never waits for the gate's choice on the host (nnU-Net predicts thousands of patches one by one: a host round
trip per patch would stall the GPU), and every shared layer runs once per forward pass, which Grad-CAM relies
on (nnunet/inference/attention_maps.py); `last_routing` keeps the pairs of the last forward pass so that
per-pair activations can be summed per sample.

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
from typing import List, NamedTuple, Optional, Sequence, Tuple

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
    """The (sample, chosen expert) pairs of one forward pass: the decoder's batch, P = B*k pairs in sample order
    (pair b*k + j is sample b's j-th choice). Only shapes are known on the host; which expert each pair uses
    stays on the device."""
    experts: torch.Tensor  # (P,) the expert of each pair
    batch_size: int
    top_k: int

    @staticmethod
    def of(indices: torch.Tensor) -> "Routing":
        """Routing of the gate's (B, k) chosen experts."""
        return Routing(indices.reshape(-1), indices.shape[0], indices.shape[1])

    def gather(self, per_sample: torch.Tensor) -> torch.Tensor:
        """(B, ...) by sample -> (P, ...) by pair."""
        return per_sample if self.top_k == 1 else per_sample.repeat_interleave(self.top_k, dim=0)

    def by_sample(self, pairs: torch.Tensor) -> torch.Tensor:
        """(P, ...) by pair -> (B, k, ...): entry [b, j] belongs to sample b's j-th chosen expert."""
        return pairs.unflatten(0, (self.batch_size, self.top_k))


CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
TRANSPOSED_CONVOLUTIONS = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def routed_layer(layers: Sequence[nn.Module], x: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Apply, to each pair x[p], the layer of its expert experts[p], as one grouped convolution over the pairs.

    `layers`: the same layer of every expert (a convolution, a transposed convolution, or a layer without
    weights such as nn.Upsample, which all experts share). The experts' weights are stacked and gathered per pair
    on the device, and the pairs become the groups of one convolution call: no host synchronisation, whatever the
    routing, and with one pair (nnU-Net's batch of 1 at k=1) it is the baseline's own convolution.
    """
    first = layers[0]
    if not isinstance(first, nn.modules.conv._ConvNd):
        return first(x)
    pairs, dims = x.shape[0], x.dim() - 2
    weight = torch.stack([layer.weight for layer in layers])[experts].flatten(0, 1)  # each pair's expert's weight
    bias = None if first.bias is None else torch.stack([layer.bias for layer in layers])[experts].flatten()
    grouped = x.reshape(1, -1, *x.shape[2:])  # the pairs become the channel groups of one sample
    if first.transposed:
        out = TRANSPOSED_CONVOLUTIONS[dims](grouped, weight, bias, first.stride, first.padding, first.output_padding,
                                            pairs * first.groups, first.dilation)
    else:
        out = CONVOLUTIONS[dims](grouped, weight, bias, first.stride, first.padding, first.dilation,
                                 pairs * first.groups)
    return out.reshape(pairs, -1, *out.shape[2:])


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

        The experts' upsampling layers and heads run as grouped convolutions over the pairs (routed_layer); each
        shared convolution block of the decoder runs once, on all pairs together (nnU-Net's instance norm keeps
        the pairs independent).
        """
        deep_supervision = self._deep_supervision and self.do_ds
        last = len(self.conv_blocks_localization) - 1
        x = routing.gather(bottleneck)
        outputs = []
        for u in range(last + 1):
            upsampled = routed_layer([expert.tu[u] for expert in self.experts], x, routing.experts)
            x = self.conv_blocks_localization[u](torch.cat((upsampled, routing.gather(skips[-(u + 1)])), dim=1))
            if deep_supervision or u == last:
                outputs.append(self.final_nonlin(routed_layer([expert.seg_outputs[u] for expert in self.experts], x,
                                                              routing.experts)))
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
