"""Tiny Generic_UNet / Generic_UNet_MoE builders for CPU tests, in 2D and 3D."""
import torch
from torch import nn

from nnunet.network_architecture.generic_UNet import Generic_UNet
from nnunet.network_architecture.generic_UNet_MoE import Generic_UNet_MoE
from nnunet.network_architecture.initialization import InitWeights_He

SHAPES = {2: (32, 32), 3: (8, 32, 32)}


def unet_args(dim: int, num_pool: int = 3):
    conv, norm, drop = (nn.Conv3d, nn.InstanceNorm3d, nn.Dropout3d) if dim == 3 else \
        (nn.Conv2d, nn.InstanceNorm2d, nn.Dropout2d)
    pool = [[1, 2, 2] if dim == 3 and i == 0 else [2] * dim for i in range(num_pool)]
    kernels = [[3] * dim] * (num_pool + 1)
    args = (1, 4, 2, num_pool, 2, 2, conv, norm, {"eps": 1e-5, "affine": True}, drop, {"p": 0, "inplace": True},
            nn.LeakyReLU, {"negative_slope": 1e-2, "inplace": True}, True, False, lambda x: x, InitWeights_He(1e-2),
            pool, kernels, False, True, True)
    return args


def tiny_unet(dim: int) -> Generic_UNet:
    torch.manual_seed(0)
    return Generic_UNet(*unet_args(dim))


def tiny_moe(dim: int, **moe) -> Generic_UNet_MoE:
    torch.manual_seed(1)
    return Generic_UNet_MoE(*unet_args(dim), **moe)


def batch(dim: int, n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn((n, 1) + SHAPES[dim], generator=torch.Generator().manual_seed(seed))
