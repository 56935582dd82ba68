"""The strong view of an unlabelled batch for weak-to-strong consistency (FixMatch / UniMatch style), on the device.

The weak view is the batch as nnU-Net's augmentation made it; the strong view is the same patches with
- intensity perturbations, each applied to a sample with probability `probability`: Gaussian noise,
  Gaussian blur, gamma, and low-resolution simulation (down-sampled and linearly up-sampled back); brightness
  (multiplicative) and contrast (around the sample's mean) are off by default: nnU-Net's first InstanceNorm undoes a
  per-sample affine change of the intensities (measured: the output did not change), so they perturb nothing;
- CutMix between the samples of the batch: a box of one sample pasted into another; the pseudo-labels (and
  their confidences) are mixed with the same boxes (`CutMix.apply`);
- feature perturbation: channel dropout on the output of every encoder stage, i.e. on the skip connections and
  the bottleneck (`feature_dropout` around the forward pass). Dropout on the bottleneck alone changed nothing
  (Dice 0.998 against the clean output): the skips carry what the decoder needs past it.
None of them moves a voxel: voxel i of the strong view shows voxel i of the weak view (or, inside a CutMix box,
voxel i of the pasted sample), so a pseudo-label made on the weak view is the target of the same voxel of the
strong view.

Random numbers are drawn on the host (torch's CPU generator), so nothing here waits for the device.
"""
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F

from nnunet.training.settings import PERTURBATION, PerturbationSettings  # noqa: F401 (the strong view's settings)

PERTURBATION_ENVIRONMENT = PERTURBATION.name


def _uniform(low: float, high: float, n: int) -> List[float]:
    return (low + (high - low) * torch.rand(n)).tolist()


def _chosen(probability: float, n: int) -> List[bool]:
    return (torch.rand(n) < probability).tolist()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of one sample (C, *spatial) over its spatial axes, borders replicated."""
    radius = max(1, int(math.ceil(3 * sigma)))
    grid = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (grid / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    spatial = x.dim() - 1
    conv = F.conv3d if spatial == 3 else F.conv2d
    out = x.unsqueeze(0)
    channels = x.shape[0]
    for axis in range(spatial):
        shape = [1] * spatial
        shape[axis] = kernel.numel()
        weight = kernel.view(1, 1, *shape).expand(channels, 1, *shape)
        pad = [0, 0] * spatial
        pad[2 * (spatial - 1 - axis)] = pad[2 * (spatial - 1 - axis) + 1] = radius
        out = conv(F.pad(out, pad, mode="replicate"), weight, groups=channels)
    return out[0]


def simulate_low_resolution(x: torch.Tensor, factor: float) -> torch.Tensor:
    """One sample (C, *spatial) averaged down by `factor` per axis and linearly up-sampled back (centres aligned)."""
    size = x.shape[1:]
    small = [max(1, int(round(s / factor))) for s in size]
    mode = "trilinear" if len(size) == 3 else "bilinear"
    down = F.interpolate(x.unsqueeze(0), size=small, mode="area")
    return F.interpolate(down, size=size, mode=mode, align_corners=False)[0]


def perturb_intensities(x: torch.Tensor, settings: PerturbationSettings) -> torch.Tensor:
    """The intensity perturbations of the strong view, independently per sample; x: (B, C, *spatial)."""
    n, p = x.shape[0], settings.probability
    samples = []
    noise_std, blur, brightness = _uniform(0, settings.noise_std, n), _uniform(0.5, settings.blur_sigma, n), \
        _uniform(1 - settings.brightness, 1 + settings.brightness, n)
    contrast = _uniform(1 - settings.contrast, 1 + settings.contrast, n)
    gamma = [g if torch.rand(()) < 0.5 else 1 / g for g in _uniform(1, 1 + settings.gamma, n)]
    lowres = _uniform(1, settings.lowres, n)
    chosen = {name: _chosen(p, n) for name in ("noise", "blur", "brightness", "contrast", "gamma", "lowres")}
    for i in range(n):
        s = x[i]
        if chosen["lowres"][i] and settings.lowres > 1:
            s = simulate_low_resolution(s, lowres[i])
        if chosen["blur"][i] and settings.blur_sigma >= 0.5:
            s = gaussian_blur(s, blur[i])
        if chosen["brightness"][i]:
            s = s * brightness[i]
        if chosen["contrast"][i]:
            mean = s.mean()
            s = (s - mean) * contrast[i] + mean
        if chosen["gamma"][i] and settings.gamma > 0:
            low, high = s.min(), s.max()
            scale = (high - low).clamp_min(1e-6)
            s = ((s - low) / scale).clamp(0, 1) ** gamma[i] * scale + low
        if chosen["noise"][i] and settings.noise_std > 0:
            s = s + torch.randn_like(s) * noise_std[i]
        samples.append(s)
    return torch.stack(samples)


@dataclass(frozen=True)
class CutMix:
    """Which sample pastes a box into which: sample i receives the box `boxes[i]` of sample `sources[i]`
    (None: unchanged). `apply` mixes any per-sample tensor (images, pseudo-labels, confidences) the same way."""
    sources: Tuple[Optional[int], ...]
    boxes: Tuple[Optional[Tuple[slice, ...]], ...]

    @staticmethod
    def draw(batch_size: int, spatial_shape: Tuple[int, ...], probability: float) -> "CutMix":
        """Boxes of 20-60% of each axis at random places, each sample pasting from the next (when chosen)."""
        sources, boxes = [], []
        chosen = _chosen(probability, batch_size)
        for i in range(batch_size):
            if batch_size < 2 or not chosen[i]:
                sources.append(None)
                boxes.append(None)
                continue
            sides = [max(1, int(round(s * f))) for s, f in zip(spatial_shape, _uniform(0.2, 0.6, len(spatial_shape)))]
            starts = [int(torch.randint(0, s - side + 1, ()).item()) for s, side in zip(spatial_shape, sides)]
            sources.append((i + 1) % batch_size)
            boxes.append(tuple(slice(a, a + side) for a, side in zip(starts, sides)))
        return CutMix(tuple(sources), tuple(boxes))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, ...spatial) or (B, C, ...spatial); boxes index the trailing spatial axes."""
        if all(s is None for s in self.sources):
            return x
        mixed = x.clone()
        for i, (source, box) in enumerate(zip(self.sources, self.boxes)):
            if source is not None:
                index = (i, Ellipsis) + box
                mixed[index] = x[(source, Ellipsis) + box]
        return mixed


def channel_dropout(features: torch.Tensor, probability: float) -> torch.Tensor:
    """Drop whole channels of (B, C, *spatial) features with `probability`, rescaling the rest (Dropout2d/3d)."""
    if probability <= 0:
        return features
    keep = torch.rand(features.shape[:2] + (1,) * (features.dim() - 2), device=features.device) >= probability
    return features * keep.to(features.dtype) / (1 - probability)


@contextmanager
def feature_dropout(network: torch.nn.Module, probability: float) -> Iterator[None]:
    """Within the block, `network` (a Generic_UNet or Generic_UNet_MoE) applies channel dropout to the output of
    every encoder stage: the skip connections and the bottleneck."""
    if probability <= 0:
        yield
        return
    handles = [stage.register_forward_hook(lambda module, inputs, output: channel_dropout(output, probability))
               for stage in network.conv_blocks_context]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def strong_view(weak: torch.Tensor, settings: PerturbationSettings) -> Tuple[torch.Tensor, CutMix]:
    """The strong view of a weak batch (B, C, *spatial) and the CutMix that was applied to it."""
    mix = CutMix.draw(weak.shape[0], tuple(weak.shape[2:]), settings.cutmix)
    return mix.apply(perturb_intensities(weak, settings)), mix
