"""nnUNetTrainerV2_moe: semi-supervised training of Generic_UNet_MoE on labelled + unlabelled scans.

Each training iteration draws a labelled batch (nnU-Net's loader and augmentation) and, once the
consistency weight is above 0, an unlabelled batch of the same patch size and augmentation from the
task's preprocessed unlabelled pool. Both go through the network in one forward pass. The loss is

    supervised    = mean over the chosen experts (slots) of DC+CE with deep supervision
                    + DC+CE with deep supervision of the gate-weighted combination
                    (the experts learn to segment; the combination's gradient teaches the gate to route)
    consistency   = cross pseudo-supervision between the chosen experts on the unlabelled batch
                    (full-resolution output; mean over pairs of chosen experts)
    load balance  = E * sum_i f_i * P_i over all samples of the iteration
    total         = supervised + lambda(epoch) * consistency + alpha * load balance

lambda(epoch) is 0 for the warm-up epochs, then ramps to lambda_max with exp(-5 (1 - t)^2).

The MoE continues the baseline's weights, so its initial learning rate is FINETUNE_LR (nnunet.training.
learning_rate.finetune_lr), the same as its same-budget control nnUNetTrainerV2_finetune's.

Settings (environment variables, read when the trainer is created for training; stored in the
checkpoint's .pkl so that -c, -val and prediction rebuild the same network):
    MOE_NUM_EXPERTS (3), MOE_TOP_K (2), MOE_LAMBDA_MAX (0.3), MOE_WARMUP_EPOCHS (50),
    MOE_RAMPUP_EPOCHS (200), MOE_BALANCE_ALPHA (0.01)
and, read at every network construction (also for prediction): MOE_INFERENCE_TOP_K (the training k).
The Makefile sets them from EXPERTS, TOP_K, LAMBDA_MAX, WARMUP_EPOCHS, RAMPUP_EPOCHS, BALANCE_ALPHA,
INFERENCE_TOP_K.
"""
import json
import os
from dataclasses import asdict, dataclass, fields
from typing import List, NamedTuple, Optional

import numpy as np
import torch
from torch.cuda.amp import autocast

from nnunet.network_architecture.generic_UNet_MoE import MoEOutput
from nnunet.network_architecture.unet_factory import generic_unet_moe
from nnunet.preprocessing.unlabeled_preprocessing import unlabeled_stage_folder
from nnunet.training.data_augmentation.default_data_augmentation import get_moreDA_augmentation
from nnunet.training.dataloading.dataset_loading import DataLoader3D, DataLoader2D, load_dataset, unpack_dataset
from nnunet.training.learning_rate.finetune_lr import finetune_learning_rate
from nnunet.training.loss_functions.moe_losses import (consistency_weight, expert_usage, load_balancing_loss,
                                                       pairwise_consistency_loss)
from nnunet.training.network_training.nnUNetTrainerV2 import nnUNetTrainerV2
from nnunet.utilities.moe_progress import plot_moe_progress
from nnunet.utilities.nd_softmax import softmax_helper
from nnunet.utilities.to_torch import maybe_to_torch, to_cuda


@dataclass
class MoESettings:
    num_experts: int = 3
    top_k: int = 2
    lambda_max: float = 0.3
    warmup_epochs: int = 50
    rampup_epochs: int = 200
    balance_alpha: float = 0.01

    ENVIRONMENT = {"num_experts": "MOE_NUM_EXPERTS", "top_k": "MOE_TOP_K", "lambda_max": "MOE_LAMBDA_MAX",
                   "warmup_epochs": "MOE_WARMUP_EPOCHS", "rampup_epochs": "MOE_RAMPUP_EPOCHS",
                   "balance_alpha": "MOE_BALANCE_ALPHA"}

    @classmethod
    def from_environment(cls) -> "MoESettings":
        values = {}
        for f in fields(cls):
            raw = os.environ.get(cls.ENVIRONMENT[f.name], "")
            if raw != "":
                try:
                    values[f.name] = type(f.default)(raw)
                except ValueError:
                    raise ValueError(f"{cls.ENVIRONMENT[f.name]}={raw!r} is not a valid {type(f.default).__name__}")
        return cls(**values)


def inference_top_k_from_environment() -> Optional[int]:
    raw = os.environ.get("MOE_INFERENCE_TOP_K", "")
    return int(raw) if raw else None


class MoELosses(NamedTuple):
    total: torch.Tensor
    supervised: torch.Tensor
    consistency: torch.Tensor
    balance: torch.Tensor


class nnUNetTrainerV2_moe(nnUNetTrainerV2):
    def __init__(self, plans_file, fold, output_folder=None, dataset_directory=None, batch_dice=True, stage=None,
                 unpack_data=True, deterministic=True, fp16=False, moe_settings: Optional[dict] = None):
        super().__init__(plans_file, fold, output_folder, dataset_directory, batch_dice, stage, unpack_data,
                         deterministic, fp16)
        self.initial_lr = finetune_learning_rate()  # it continues the baseline, like its control (finetune_lr)
        self.moe = MoESettings(**moe_settings) if moe_settings is not None else MoESettings.from_environment()
        # stored in the checkpoint's .pkl: restoring the trainer rebuilds the same mixture
        self.init_args = self.init_args + (asdict(self.moe),)
        self.unlabeled_gen = None
        self.moe_log: List[dict] = []
        self._epoch_stats: List[dict] = []

    # ------------------------------------------------------------------ setup
    def initialize_network(self):
        self.network = generic_unet_moe(
            num_input_channels=self.num_input_channels, base_num_features=self.base_num_features,
            num_classes=self.num_classes, pool_op_kernel_sizes=self.net_num_pool_op_kernel_sizes,
            conv_kernel_sizes=self.net_conv_kernel_sizes, conv_per_stage=self.conv_per_stage,
            num_experts=self.moe.num_experts, top_k=self.moe.top_k, inference_top_k=inference_top_k_from_environment())
        if torch.cuda.is_available():
            self.network.cuda()
        self.network.inference_apply_nonlin = softmax_helper

    def initialize(self, training=True, force_load_plans=False):
        super().initialize(training, force_load_plans)
        self._maybe_init_amp()  # fp16 is settled now (off without CUDA), not only once run_training starts
        if training:
            self.unlabeled_gen = self.get_unlabeled_generator()

    def get_unlabeled_generator(self):
        folder = unlabeled_stage_folder(self.dataset_directory, self.plans['data_identifier'], self.stage)
        if not os.path.isdir(folder) or not any(f.endswith(".npz") for f in os.listdir(folder)):
            raise RuntimeError(
                f"The unlabelled pool is empty: no preprocessed unlabelled cases in {folder}. "
                f"nnUNetTrainerV2_moe needs unlabelled scans: convert with a labelled fraction below 1 "
                f"(make convert LABELED_FRACTION=0.5) or add scans (make convert EXTRA_UNLABELED=<folder of CTs>), "
                f"then run make preprocess FORCE=1.")
        dataset = load_dataset(folder)
        if self.unpack_data:
            unpack_dataset(folder)
        loader_class = DataLoader3D if self.threeD else DataLoader2D
        extra = {"has_prev_stage": False} if self.threeD else {}
        loader = loader_class(dataset, self.basic_generator_patch_size, self.patch_size, self.batch_size,
                              oversample_foreground_percent=0.0, pad_mode="constant", pad_sides=self.pad_all_sides,
                              memmap_mode='r', **extra)
        self.print_to_log_file(f"unlabelled pool: {len(dataset)} cases from {folder}")
        # the second (validation) generator is never started: batchgenerators starts workers on first use
        generator, _ = get_moreDA_augmentation(loader, loader, self.data_aug_params['patch_size_for_spatialtransform'],
                                               self.data_aug_params, deep_supervision_scales=self.deep_supervision_scales,
                                               pin_memory=self.pin_memory)
        return generator

    # ------------------------------------------------------------------ one iteration
    def consistency_lambda(self) -> float:
        return consistency_weight(self.epoch, self.moe.lambda_max, self.moe.warmup_epochs, self.moe.rampup_epochs)

    def compute_losses(self, output: MoEOutput, target, n_labeled: int, consistency_lambda: float) -> MoELosses:
        labeled = lambda outputs: [o[:n_labeled] for o in outputs]  # noqa: E731
        per_expert = torch.stack([self.loss(labeled(slot), target) for slot in output.slots]).mean()
        supervised = per_expert + self.loss(labeled(output.combined), target)
        if output.combined[0].shape[0] > n_labeled:
            consistency = pairwise_consistency_loss([slot[0][n_labeled:] for slot in output.slots])
        else:
            consistency = supervised.new_zeros(())
        balance = load_balancing_loss(output.gate.indices, output.gate.probs, self.moe.num_experts)
        total = supervised + consistency_lambda * consistency + self.moe.balance_alpha * balance
        return MoELosses(total, supervised.detach(), consistency.detach(), balance.detach())

    def run_iteration(self, data_generator, do_backprop=True, run_online_evaluation=False):
        data_dict = next(data_generator)
        data, target = maybe_to_torch(data_dict['data']), maybe_to_torch(data_dict['target'])
        consistency_lambda = self.consistency_lambda() if do_backprop else 0.0
        n_labeled = data.shape[0]
        if consistency_lambda > 0:
            data = torch.cat([data, maybe_to_torch(next(self.unlabeled_gen)['data'])])
        if torch.cuda.is_available():
            data, target = to_cuda(data), to_cuda(target)

        self.optimizer.zero_grad()
        with autocast(enabled=self.fp16):
            output = self.network(data)
            losses = self.compute_losses(output, target, n_labeled, consistency_lambda)
        if do_backprop and self.fp16:
            self.amp_grad_scaler.scale(losses.total).backward()
            self.amp_grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.amp_grad_scaler.step(self.optimizer)
            self.amp_grad_scaler.update()
        elif do_backprop:
            losses.total.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()

        if run_online_evaluation:
            self.run_online_evaluation([o[:n_labeled] for o in output.combined], target)
        if do_backprop:
            self._epoch_stats.append({
                "supervised": losses.supervised.item(), "consistency": losses.consistency.item(),
                "balance": losses.balance.item(), "lambda": consistency_lambda,
                "usage": expert_usage(output.gate.indices, self.moe.num_experts).tolist()})
        return losses.total.detach().cpu().numpy()

    # ------------------------------------------------------------------ logging and checkpoints
    def on_epoch_end(self):
        if self._epoch_stats:
            entry = {key: float(np.mean([s[key] for s in self._epoch_stats]))
                     for key in ("supervised", "consistency", "balance", "lambda")}
            entry["usage"] = np.mean([s["usage"] for s in self._epoch_stats], axis=0).round(4).tolist()
            entry["epoch"] = self.epoch
            self.moe_log.append(entry)
            self._epoch_stats = []
            self.print_to_log_file(
                "moe: supervised %.4f, consistency %.4f, lambda %.4f, balance %.4f, expert usage %s" %
                (entry["supervised"], entry["consistency"], entry["lambda"], entry["balance"], entry["usage"]))
            self.save_moe_log()
            self.plot_moe_progress()
        return super().on_epoch_end()

    def save_moe_log(self):
        path = os.path.join(self.output_folder, "moe_log.json")
        with open(path + ".tmp", "w") as f:
            json.dump(self.moe_log, f, indent=1)
        os.replace(path + ".tmp", path)

    def load_checkpoint_ram(self, checkpoint, train=True):
        super().load_checkpoint_ram(checkpoint, train)
        path = os.path.join(self.output_folder, "moe_log.json")
        if os.path.isfile(path):
            with open(path) as f:
                self.moe_log = [e for e in json.load(f) if e["epoch"] < self.epoch]

    def plot_moe_progress(self):
        """moe_progress.png beside nnU-Net's progress.png."""
        plot_moe_progress(self.moe_log, os.path.join(self.output_folder, "moe_progress.png"))
