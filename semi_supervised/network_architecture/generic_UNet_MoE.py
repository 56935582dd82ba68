"""Generic_UNet_MoE: nnU-Net's Generic_UNet with a mixture of decoder experts.

Shared by all experts: the encoder (conv_blocks_context) and the decoder's convolution blocks
(conv_blocks_localization). Each of the E experts owns its upsampling layers (tu, transposed
convolutions in nnUNetTrainerV2's configuration) and its segmentation heads (seg_outputs, one per
deep-supervision level). A gate picks the top-k experts per sample (noisy top-k gating, Shazeer et al. 2017); a
softmax over the chosen scores gives their weights.

What the gate reads (`gate_features`):
- "stem" (default): the per-channel mean and log standard deviation of the first convolution's output *before*
  its InstanceNorm, plus the global average of the bottleneck. nnU-Net normalises every stage per instance, so the
  bottleneck's average barely differs between scans (a few percent); the statistics before the first norm keep
  what differs between scanners (calibration, noise, sharpness).
- "bottleneck": the global average of the bottleneck only, the gate of models trained before the stem features
  existed (BottleneckGate: unstandardised, zero initial weights, noise 0.70 at the start).
The features are detached (the gate learns to route; the encoder is not bent to help it) and standardised with
running statistics over the training samples (buffers), so that a small random initialisation of the gate gives
scores that differ between samples from the start; the training noise starts at `gate_noise` (learned after).

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
import math
from copy import deepcopy
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import distributed, nn

from nnunet.network_architecture.generic_UNet import Generic_UNet


class GateDecision(NamedTuple):
    indices: torch.Tensor  # (B, k) chosen experts per sample, best first
    weights: torch.Tensor  # (B, k) softmax over the chosen logits
    probs: torch.Tensor    # (B, E) softmax over all logits (noisy in training; for the load-balancing loss)
    clean_logits: Optional[torch.Tensor] = None  # (B, E) the scores without noise (diagnostics)
    noise_std: Optional[torch.Tensor] = None     # (B, E) the noise's standard deviation (0 outside training)


class MoEOutput(NamedTuple):
    combined: Tuple[torch.Tensor, ...]             # deep-supervision outputs, full resolution first
    slots: List[Tuple[torch.Tensor, ...]]          # per slot j: the j-th chosen expert's outputs
    gate: GateDecision                             # the decision that routed this batch
    router: Optional[GateDecision] = None          # the gate's own decision on this batch (== gate unless given)


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


GATE_FEATURES = ("stem", "bottleneck")


def samples_of_all_ranks(rows: torch.Tensor) -> torch.Tensor:
    """(B, F) rows of this process -> the rows of every rank in rank order (itself where not distributed), so that
    running statistics under DDP are those of the global batch, as in one process."""
    if not (distributed.is_available() and distributed.is_initialized()) or distributed.get_world_size() == 1:
        return rows
    world = distributed.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=rows.device) for _ in range(world)]
    distributed.all_gather(sizes, torch.tensor([rows.shape[0]], device=rows.device))
    padded = rows.new_zeros((int(max(sizes).item()), rows.shape[1]))
    padded[:rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in range(world)]
    distributed.all_gather(gathered, padded)
    return torch.cat([g[:int(n.item())] for g, n in zip(gathered, sizes)])


class RunningStandardizer(nn.Module):
    """(B, F) features -> standardised by running mean and variance over the training samples (buffers).

    The running moments are plain averages over the first 1 / momentum samples, then exponential averages, and are
    only updated in training; outside training (or before any update) the stored moments are used as they are."""

    def __init__(self, num_features: int, momentum: float = 0.01, eps: float = 1e-6):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("mean_square", torch.ones(num_features))

    @torch.no_grad()
    def update(self, features: torch.Tensor) -> None:
        for row in samples_of_all_ranks(features.float()):  # per sample, so the moments do not depend on the batch size
            rate = (1.0 / (self.count + 1)).clamp_min(self.momentum)  # on the device: no host synchronisation
            self.mean.mul_(1 - rate).add_(rate * row)
            self.mean_square.mul_(1 - rate).add_(rate * row * row)
            self.count += 1

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.update(features)
        variance = (self.mean_square - self.mean ** 2).clamp_min(0)
        scale = torch.sqrt(variance + self.eps * (1 + self.mean_square))
        return (features.float() - self.mean) / scale


class NoisyTopKGate(nn.Module):
    """Gate features -> top-k experts per sample. Noise (with a learned scale, `noise` at the start) only in
    training. The scores start small and random (std `init_std` over samples of standardised features), so the
    experts' shares differ per sample from the first step, and the noise does not drown them."""

    def __init__(self, in_features: int, num_experts: int, noise: float = 0.05, init_std: float = 0.1,
                 noise_epsilon: float = 1e-3):
        super().__init__()
        self.num_experts, self.noise, self.noise_epsilon = num_experts, noise, noise_epsilon
        self.standardize = RunningStandardizer(in_features)
        self.w_gate = nn.Linear(in_features, num_experts, bias=False)
        self.w_noise = nn.Linear(in_features, num_experts, bias=False)
        nn.init.normal_(self.w_gate.weight, std=init_std / in_features ** 0.5)
        nn.init.zeros_(self.w_noise.weight)

    def noise_std(self, features: torch.Tensor) -> torch.Tensor:
        """softplus(w_noise f) scaled so that the initial (zero) weights give `noise`."""
        return F.softplus(self.w_noise(features)) * (self.noise / math.log(2)) + self.noise_epsilon

    def forward(self, features: torch.Tensor, top_k: int,
                forced_expert: Optional[Union[int, torch.Tensor]] = None) -> GateDecision:
        """forced_expert: route every sample to this expert, or each sample b to forced_expert[b] ((B,) tensor),
        with weight 1; probs and clean_logits stay the gate's own (e.g. to train it to imitate the forced choice)."""
        features = self.standardize(features.detach())
        clean = self.w_gate(features)
        logits, noise_std = clean, torch.zeros_like(clean)
        if self.training:
            noise_std = self.noise_std(features)
            logits = clean + torch.randn_like(clean) * noise_std
        probs = torch.softmax(logits, dim=1)
        if forced_expert is not None:
            indices = torch.as_tensor(forced_expert, dtype=torch.long, device=features.device)
            indices = indices.expand(features.shape[0]).reshape(-1, 1)
            return GateDecision(indices, torch.ones_like(indices, dtype=probs.dtype), probs, clean, noise_std)
        top_logits, indices = logits.topk(top_k, dim=1)
        return GateDecision(indices, torch.softmax(top_logits, dim=1), probs, clean, noise_std)


class BottleneckGate(NoisyTopKGate):
    """The gate of models trained before the stem features (gate_features="bottleneck"): the bottleneck's global
    average, unstandardised, zero initial weights, noise softplus(w_noise f) + 0.01 (0.70 at the start)."""

    def __init__(self, in_features: int, num_experts: int):
        super().__init__(in_features, num_experts, noise_epsilon=1e-2)
        self.standardize = nn.Identity()
        nn.init.zeros_(self.w_gate.weight)

    def noise_std(self, features: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.w_noise(features)) + self.noise_epsilon


def channel_statistics(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B, 2C): each channel's mean and log standard deviation over space."""
    flat = x.detach().float().flatten(2)
    return torch.cat([flat.mean(2), torch.log(flat.std(2) + 1e-6)], dim=1)


class Expert(nn.Module):
    """One expert: the upsampling layers and segmentation heads of a Generic_UNet decoder."""

    def __init__(self, tu: nn.ModuleList, seg_outputs: nn.ModuleList):
        super().__init__()
        self.tu = tu
        self.seg_outputs = seg_outputs


class Generic_UNet_MoE(Generic_UNet):
    def __init__(self, *generic_unet_args, num_experts: int = 3, top_k: int = 2,
                 inference_top_k: Optional[int] = None, gate_features: str = "stem", gate_noise: float = 0.05,
                 **generic_unet_kwargs):
        """Takes Generic_UNet's arguments unchanged, plus the mixture's settings (keyword-only)."""
        super().__init__(*generic_unet_args, **generic_unet_kwargs)
        if gate_features not in GATE_FEATURES:
            raise ValueError(f"gate_features must be one of {', '.join(GATE_FEATURES)}, got {gate_features!r}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        inference_top_k = top_k if inference_top_k is None else inference_top_k
        if not 1 <= inference_top_k <= num_experts:
            raise ValueError(f"inference_top_k must be in [1, num_experts={num_experts}], got {inference_top_k}")
        self.num_experts, self.top_k, self.inference_top_k = num_experts, top_k, inference_top_k
        # set to route every sample to one expert (weight transfer checks), or (B,) experts, one per sample (the
        # site oracle); the gate still runs
        self.forced_expert: Optional[Union[int, torch.Tensor]] = None
        self.last_routing: Optional[Routing] = None

        experts = [Expert(self.tu, self.seg_outputs)]
        for _ in range(num_experts - 1):
            expert = Expert(deepcopy(self.tu), deepcopy(self.seg_outputs))
            if self.weightInitializer is not None:
                expert.apply(self.weightInitializer)  # independent initialisation when trained from scratch
            experts.append(expert)
        del self.tu, self.seg_outputs
        self.experts = nn.ModuleList(experts)
        self.gate_features = gate_features
        self._stem_statistics: Optional[torch.Tensor] = None
        bottleneck_channels = self.conv_blocks_context[-1][-1].output_channels
        if gate_features == "stem":
            stem = self.conv_blocks_context[0].blocks[0].conv  # its output before the first InstanceNorm
            stem.register_forward_hook(self._keep_stem_statistics)
            self.gate = NoisyTopKGate(bottleneck_channels + 2 * stem.out_channels, num_experts, noise=gate_noise)
        else:
            self.gate = BottleneckGate(bottleneck_channels, num_experts)

    def _keep_stem_statistics(self, module, inputs, output) -> None:
        self._stem_statistics = channel_statistics(output)

    def gate_input(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """What the gate reads for this forward pass (see the module's docstring), (B, F), detached."""
        pooled = bottleneck.detach().float().mean(dim=tuple(range(2, bottleneck.dim())))
        if self.gate_features == "bottleneck":
            return pooled
        return torch.cat([self._stem_statistics, pooled], dim=1)

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

    def decide(self, bottleneck: torch.Tensor, top_k: int) -> GateDecision:
        """The gate's decision for the batch whose bottleneck this is (call right after encoding it: the stem
        statistics are the last encoded batch's)."""
        return self.gate(self.gate_input(bottleneck), top_k, self.forced_expert)

    def shared_parameters(self) -> List[nn.Parameter]:
        """The parameters every expert uses: the encoder and the decoder's shared convolution blocks."""
        return [p for name, p in self.named_parameters() if not name.startswith(("experts.", "gate."))]

    def forward(self, x: torch.Tensor, decision: Optional[GateDecision] = None):
        """`decision`: route by this gate decision instead of the gate's (the strong view of an unlabelled batch
        goes to the experts its weak view chose); the gate still runs on `x` (the output's `router`)."""
        bottleneck, skips = self.encode(x)
        top_k = self.top_k if self.do_ds else self.inference_top_k
        router = self.decide(bottleneck, top_k)
        decision = router if decision is None else decision
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
        return MoEOutput(tuple(combined), slots, decision, router)
