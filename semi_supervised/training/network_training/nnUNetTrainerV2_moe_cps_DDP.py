"""nnUNetTrainerV2_moe_cps on several processes (torchrun): nnUNetTrainerV2_moe_DDP with cross pseudo-supervision.
nnUNet_train picks it under torchrun and trains into nnUNetTrainerV2_moe_cps's folder."""
from nnunet.training.network_training.nnUNetTrainerV2_moe_DDP import nnUNetTrainerV2_moe_DDP
from nnunet.training.network_training.nnUNetTrainerV2_moe_cps import nnUNetTrainerV2_moe_cps


class nnUNetTrainerV2_moe_cps_DDP(nnUNetTrainerV2_moe_DDP):
    CONSISTENCY_KIND = nnUNetTrainerV2_moe_cps.CONSISTENCY_KIND
