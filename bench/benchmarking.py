"""What the benchmarks in bench/ share: the COVID-19-20 3d_fullres plan (and its CPU-sized cut), the two networks
built from it, a deep-supervised loss on random labels, and one optimiser step with or without mixed precision."""
from typing import List, Optional, Tuple

import torch
from torch import nn

COVID_PATCH = (28, 256, 256)
COVID_POOLING = [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]
COVID_KERNELS = [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
CPU_SIZED_PATCH = (16, 128, 128)


def benchmark_plan(cpu_sized: bool) -> Tuple[Tuple[int, ...], List[List[int]], List[List[int]]]:
    """(patch, pooling, kernels): the COVID plan, or with --cpu-sized patch 16x128x128 and its last pooling left out."""
    if cpu_sized:
        return CPU_SIZED_PATCH, COVID_POOLING[:5], COVID_KERNELS[:6]
    return COVID_PATCH, COVID_POOLING, COVID_KERNELS


def build(kind: str, pooling, kernels, num_experts: int, top_k: int, inference_top_k: int):
    """Generic_UNet ("baseline") or Generic_UNet_MoE ("moe") with 32 base features, 1 channel in, 2 classes."""
    from nnunet.network_architecture.unet_factory import generic_unet, generic_unet_moe
    plan = dict(num_input_channels=1, base_num_features=32, num_classes=2, pool_op_kernel_sizes=pooling,
                conv_kernel_sizes=kernels)
    if kind == "baseline":
        return generic_unet(**plan)
    return generic_unet_moe(**plan, num_experts=num_experts, top_k=top_k, inference_top_k=inference_top_k)


def deep_supervision_loss(output, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over every output (for the MoE: the combination and every chosen expert's)."""
    outputs = output.combined + tuple(o for slot in output.slots for o in slot) if hasattr(output, "slots") \
        else output
    loss = 0
    for o in outputs:
        t = nn.functional.interpolate(target[:, None].float(), size=o.shape[2:], mode="nearest")[:, 0].long()
        loss = loss + nn.functional.cross_entropy(o.float(), t)
    return loss


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      scaler: Optional["torch.amp.GradScaler"]) -> None:
    """Backward pass and optimiser step, through the grad scaler when mixed precision is on."""
    if scaler:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
