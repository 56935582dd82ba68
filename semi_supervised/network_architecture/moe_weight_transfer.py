"""Turn a fully supervised Generic_UNet state dict into a Generic_UNet_MoE one.

Shared parts (encoder, decoder convolutions) are copied one to one; every expert is initialised from the
baseline's upsampling layers and segmentation heads; the gate keeps its fresh (zero) initialisation.

Experts that start identical receive identical gradients for identical routing, and every loss term is minimised
by identical experts, so copies stay copies (measured: their lesion predictions agreed at Dice 0.96-0.975 after
training). Experts 1..E-1 therefore start partly afresh, as in Drop-Upcycling (Nakamura et al., ICLR 2025): in each
of their weight tensors a random `reinit` share of the channels along dim 1 (the output channels of a transposed
convolution, the input channels of a 1x1 head) is drawn again from a normal distribution with the copied tensor's
mean and standard deviation; the rest gets Gaussian noise of `perturbation` times the tensor's standard deviation.
Each expert draws its own channels (seed `seed`). Expert 0 stays an exact copy, so forcing the gate to it
reproduces the baseline exactly.
"""
import re
from typing import Dict, List, Optional, Tuple

import torch

from nnunet.network_architecture.generic_UNet_MoE import Generic_UNet_MoE

EXPERT_KEY = re.compile(r"^experts\.(\d+)\.(.*)$")


def baseline_key_for(moe_key: str) -> Optional[str]:
    """The Generic_UNet state-dict key a Generic_UNet_MoE key is copied from; None for the gate."""
    if moe_key.startswith("gate."):
        return None
    match = EXPERT_KEY.match(moe_key)
    return match.group(2) if match else moe_key


def reinitialise_channels(value: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """`value` with a random `share` of its dim-1 channels drawn from N(mean, std) of the whole tensor."""
    channels = value.shape[1]
    count = int(round(share * channels))
    if count == 0:
        return value
    chosen = torch.randperm(channels, generator=generator)[:count]
    fresh = torch.randn((value.shape[0], count, *value.shape[2:]), generator=generator) * value.std() + value.mean()
    value = value.clone()
    value[:, chosen] = fresh
    return value


def transfer_state_dict(baseline_state: Dict[str, torch.Tensor], moe: Generic_UNet_MoE, perturbation: float = 1e-3,
                        seed: int = 0, reinit: float = 0.0) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Return (the MoE state dict, the MoE keys copied from the baseline)."""
    generator = torch.Generator().manual_seed(seed)
    state = {k: v.clone() for k, v in moe.state_dict().items()}
    copied, problems = [], []
    for key, current in state.items():
        source = baseline_key_for(key)
        if source is None:
            continue
        if source not in baseline_state:
            problems.append(f"{key}: no {source} in the baseline")
            continue
        value = baseline_state[source].detach().to("cpu", torch.float32).clone()
        if value.shape != current.shape:
            problems.append(f"{key}: shape {tuple(current.shape)} but baseline {source} has {tuple(value.shape)}")
            continue
        match = EXPERT_KEY.match(key)
        if match and int(match.group(1)) > 0 and value.dim() > 1:
            if perturbation > 0:
                value += torch.randn(value.shape, generator=generator) * perturbation * value.std()
            value = reinitialise_channels(value, reinit, generator)
        state[key] = value.to(current.dtype)
        copied.append(key)
    used = {baseline_key_for(k) for k in copied}
    unused = [k for k in baseline_state if k not in used]
    if problems or unused:
        unplaced = [f"baseline tensor {k} has no place in the MoE" for k in unused[:10]]
        raise ValueError("the baseline does not match the MoE network: " + "; ".join(problems[:10] + unplaced))
    return state, copied


@torch.no_grad()
def forced_expert_differences(baseline: torch.nn.Module, moe: Generic_UNet_MoE, x: torch.Tensor) -> List[float]:
    """Max |softmax difference| between the baseline and the MoE with the gate forced to each expert."""
    baseline_ds, moe_ds = baseline.do_ds, moe.do_ds
    baseline.eval(), moe.eval()
    baseline.do_ds, moe.do_ds = False, False
    try:
        reference = torch.softmax(baseline(x).float(), 1)
        differences = []
        for expert in range(moe.num_experts):
            moe.forced_expert = expert
            differences.append(float((torch.softmax(moe(x).float(), 1) - reference).abs().max()))
        return differences
    finally:
        moe.forced_expert = None
        baseline.do_ds, moe.do_ds = baseline_ds, moe_ds
