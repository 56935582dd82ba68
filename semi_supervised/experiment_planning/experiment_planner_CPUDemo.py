"""A 3D planner for CPU-sized runs: the demo and the tests.

It plans exactly like nnU-Net's ExperimentPlanner3D_v21 (target spacing, pooling by spacing, the
3d_lowres decision), but caps the patch size and the number of feature maps so that a training
iteration takes well under a second on a laptop CPU. Because the patch is small relative to the
images, nnU-Net's own rule ("the network must see at least 1/4 of a patient") still creates a
3d_lowres stage, so the demo runs the same two configurations as a real COVID-19-20 run.

Use it with `nnUNet_plan_and_preprocess -pl3d ExperimentPlanner3D_v21_CPUDemo` and train with
`-p nnUNetPlans_CPUDemo`. Not meant for real data.
"""
import numpy as np
from batchgenerators.utilities.file_and_folder_operations import join

from nnunet.experiment_planning.common_utils import get_pool_and_conv_props
from nnunet.experiment_planning.experiment_planner_baseline_3DUNet_v21 import ExperimentPlanner3D_v21


class ExperimentPlanner3D_v21_CPUDemo(ExperimentPlanner3D_v21):
    MAX_PATCH_SIZE = (16, 48, 48)  # voxels, in nnU-Net's transposed axis order (slice axis first)
    BATCH_SIZE = 2
    BASE_NUM_FEATURES = 8

    def __init__(self, folder_with_cropped_data: str, preprocessed_output_folder: str):
        super().__init__(folder_with_cropped_data, preprocessed_output_folder)
        self.data_identifier = "nnUNetData_CPUDemo"
        self.plans_fname = join(self.preprocessed_output_folder, "nnUNetPlans_CPUDemo_plans_3D.pkl")
        self.unet_base_num_features = self.BASE_NUM_FEATURES

    def get_properties_for_stage(self, current_spacing, original_spacing, original_shape, num_cases,
                                 num_modalities, num_classes):
        plan = super().get_properties_for_stage(current_spacing, original_spacing, original_shape, num_cases,
                                                num_modalities, num_classes)
        capped = np.minimum(plan['patch_size'], self.MAX_PATCH_SIZE)
        num_pool, pool_kernels, conv_kernels, patch_size, _ = get_pool_and_conv_props(
            current_spacing, capped, self.unet_featuremap_min_edge_length, self.unet_max_numpool)
        plan.update(patch_size=patch_size, num_pool_per_axis=num_pool, pool_op_kernel_sizes=pool_kernels,
                    conv_kernel_sizes=conv_kernels, batch_size=self.BATCH_SIZE,
                    do_dummy_2D_data_aug=(max(patch_size) / patch_size[0]) > self.anisotropy_threshold)
        return plan
