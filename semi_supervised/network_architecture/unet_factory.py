"""nnU-Net's Generic_UNet and our Generic_UNet_MoE, built from named settings instead of 22 positional arguments.

The fixed choices are nnUNetTrainerV2's (nnUNetTrainerV2.initialize_network): instance norm (eps 1e-5,
affine), no dropout, leaky ReLU (slope 1e-2), feature maps doubled per level, no final non-linearity (the
trainer applies softmax for inference), He initialisation, transposed-convolution upsampling, deep
supervision (switchable), convolutional pooling. Dimensionality (2D or 3D) follows the kernel sizes.
"""
from typing import Optional, Sequence

from torch import nn

from nnunet.network_architecture.generic_UNet import Generic_UNet
from nnunet.network_architecture.generic_UNet_MoE import Generic_UNet_MoE
from nnunet.network_architecture.initialization import InitWeights_He

OPS = {2: (nn.Conv2d, nn.InstanceNorm2d, nn.Dropout2d), 3: (nn.Conv3d, nn.InstanceNorm3d, nn.Dropout3d)}


def _identity(x):
    return x


def _generic_unet_arguments(num_input_channels: int, base_num_features: int, num_classes: int,
                            pool_op_kernel_sizes: Sequence[Sequence[int]], conv_kernel_sizes: Sequence[Sequence[int]],
                            conv_per_stage: int, deep_supervision: bool) -> tuple:
    """Generic_UNet's positional arguments in nnUNetTrainerV2's configuration."""
    dim = len(conv_kernel_sizes[0])
    if dim not in OPS:
        raise ValueError(f"kernel sizes must be 2D or 3D, got {conv_kernel_sizes[0]}")
    if len(conv_kernel_sizes) != len(pool_op_kernel_sizes) + 1:
        raise ValueError(f"{len(pool_op_kernel_sizes)} poolings need {len(pool_op_kernel_sizes) + 1} convolution "
                         f"kernel sizes, got {len(conv_kernel_sizes)}")
    conv_op, norm_op, dropout_op = OPS[dim]
    return (num_input_channels, base_num_features, num_classes, len(pool_op_kernel_sizes), conv_per_stage, 2,
            conv_op, norm_op, {"eps": 1e-5, "affine": True}, dropout_op, {"p": 0, "inplace": True},
            nn.LeakyReLU, {"negative_slope": 1e-2, "inplace": True}, deep_supervision, False, _identity,
            InitWeights_He(1e-2), [list(p) for p in pool_op_kernel_sizes], [list(k) for k in conv_kernel_sizes],
            False, True, True)


def generic_unet(*, num_input_channels: int, base_num_features: int, num_classes: int,
                 pool_op_kernel_sizes: Sequence[Sequence[int]], conv_kernel_sizes: Sequence[Sequence[int]],
                 conv_per_stage: int = 2, deep_supervision: bool = True) -> Generic_UNet:
    """nnU-Net's Generic_UNet exactly as nnUNetTrainerV2 builds it."""
    return Generic_UNet(*_generic_unet_arguments(num_input_channels, base_num_features, num_classes,
                                                 pool_op_kernel_sizes, conv_kernel_sizes, conv_per_stage,
                                                 deep_supervision))


def generic_unet_moe(*, num_input_channels: int, base_num_features: int, num_classes: int,
                     pool_op_kernel_sizes: Sequence[Sequence[int]], conv_kernel_sizes: Sequence[Sequence[int]],
                     conv_per_stage: int = 2, deep_supervision: bool = True, num_experts: int = 3, top_k: int = 2,
                     inference_top_k: Optional[int] = None, gate_features: str = "stem",
                     gate_noise: float = 0.05) -> Generic_UNet_MoE:
    """The same network with a mixture of decoder experts (see generic_UNet_MoE); its shared layers and every
    expert are shaped exactly like generic_unet's, so a baseline's weights transfer one to one."""
    return Generic_UNet_MoE(*_generic_unet_arguments(num_input_channels, base_num_features, num_classes,
                                                     pool_op_kernel_sizes, conv_kernel_sizes, conv_per_stage,
                                                     deep_supervision),
                            num_experts=num_experts, top_k=top_k, inference_top_k=inference_top_k,
                            gate_features=gate_features, gate_noise=gate_noise)
