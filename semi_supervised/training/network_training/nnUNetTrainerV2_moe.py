"""nnUNetTrainerV2_moe: semi-supervised training of Generic_UNet_MoE on labelled + unlabelled scans.

Each training iteration draws a labelled batch (nnU-Net's loader and augmentation) and, once the
consistency weight is above 0, an unlabelled batch of the same patch size and augmentation from the
task's preprocessed unlabelled pool (the weak view). The loss is

    supervised    = mean over the chosen experts (slots) of DC+CE with deep supervision
                    + DC+CE with deep supervision of the gate-weighted combination
                    (the experts learn to segment; the combination's gradient teaches the gate to route)
    consistency   = CONSISTENCY=weak_strong: each chosen expert's confident pseudo-labels on the weak view train
                    the other chosen expert(s) on a strongly perturbed view of the same patches, routed to the
                    same experts (intensity perturbations, CutMix, bottleneck channel dropout);
                    CONSISTENCY=cps: cross pseudo-supervision between the chosen experts on the weak view
                    (nnunet/training/loss_functions/consistency.py has the exact formulas)
    load balance  = E * sum_i f_i * P_i over the labelled batch's routing
    total         = supervised + lambda(epoch) * consistency + alpha * load balance

lambda(epoch) is 0 for the warm-up epochs, then ramps to lambda_max with exp(-5 (1 - t)^2).

Diagnostics per epoch (moe_log.json, the log, moe_progress.png): `disagreement` (fraction of unlabelled voxels
where the chosen experts' argmax differ), `confident_fraction` (fraction passing the confidence threshold),
`consistency_grad_share` (|grad of lambda x consistency| / |grad of supervised| over the shared parameters, from
two extra backward passes on the first iteration of the epoch), `gate_entropy` and the expert usage.

The MoE continues the baseline's weights, so its initial learning rate is FINETUNE_LR (nnunet.training.
learning_rate.finetune_lr), the same as its same-budget control nnUNetTrainerV2_finetune's.

Settings (nnunet/training/settings.py; read from the environment when the trainer is created for training, stored
by name in the checkpoint's .pkl and settings.json so that -val and prediction rebuild the same network and loss):
    "finetune": FinetuneSettings (FINETUNE_LR), "moe": MoESettings (MOE_NUM_EXPERTS 3, MOE_TOP_K 2,
    MOE_BALANCE_ALPHA 0.01), "consistency": ConsistencySettings (CONSISTENCY_THRESHOLD 0.95, CONSISTENCY_LAMBDA_MAX
    2.0, CONSISTENCY_WARMUP_EPOCHS 50, CONSISTENCY_RAMPUP_EPOCHS 200, PERTURBATION strengths, e.g.
    "noise_std=0.1 cutmix=0.5"); the kind of consistency is the trainer's (CONSISTENCY_KIND: weak_strong here,
    cps in nnUNetTrainerV2_moe_cps).
Read at every network construction (also for prediction): MOE_INFERENCE_TOP_K (the training k).
The Makefile sets them from EXPERTS, TOP_K, BALANCE_ALPHA, CONFIDENCE_THRESHOLD, LAMBDA_MAX, WARMUP_EPOCHS,
RAMPUP_EPOCHS, PERTURBATION and INFERENCE_TOP_K.
"""
import json
import os
import time
from typing import Callable, Dict, List, NamedTuple, Optional

import numpy as np
import torch
from torch.cuda.amp import autocast

from nnunet.network_architecture.generic_UNet_MoE import GateDecision, MoEOutput
from nnunet.network_architecture.unet_factory import generic_unet_moe
from nnunet.training.data_augmentation.strong_perturbations import bottleneck_dropout, strong_view
from nnunet.training.dataloading.unlabeled_loader import unlabeled_generator
from nnunet.training.loss_functions.consistency import (ConsistencySettings, PseudoLabels, confident_fraction,
                                                        disagreement, pseudo_labels, weak_to_strong_loss)
from nnunet.training.loss_functions.moe_losses import (consistency_weight, expert_usage, gate_entropy,
                                                       load_balancing_loss, pairwise_consistency_loss)
from nnunet.training.network_training.nnUNetTrainerV2 import nnUNetTrainerV2
from nnunet.training.network_training.nnUNetTrainerV2_finetune import FinetuneSettingsMixin
from nnunet.training.network_training.semi_supervised_steps import next_batches, optimizer_step
from nnunet.training.settings import MoESettings, group_from, inference_top_k_from_environment
from nnunet.utilities.moe_progress import plot_moe_progress
from nnunet.utilities.nd_softmax import softmax_helper


class MoELosses(NamedTuple):
    total: torch.Tensor
    supervised: torch.Tensor
    weighted_consistency: torch.Tensor  # lambda x consistency
    balance: torch.Tensor


class UnlabeledTerm(NamedTuple):
    consistency: torch.Tensor
    disagreement: float
    confident_fraction: float
    gate_probs: torch.Tensor  # (B, E) of the unlabelled batch


def moe_unlabeled_term(network, weak: torch.Tensor, settings: ConsistencySettings,
                       forward: Optional[Callable] = None) -> UnlabeledTerm:
    """The consistency loss of a Generic_UNet_MoE (in training mode) on an unlabelled, weakly augmented batch, and
    what it saw. weak_strong: the chosen experts' pseudo-labels on the weak view (no gradient) train the other
    chosen experts on the strong view, routed to the same experts; cps: cross pseudo-supervision on the weak view.
    forward: what runs the network (default: the network itself; under DDP its DistributedDataParallel wrapper)."""
    forward = forward or network
    threshold = settings.threshold
    if settings.kind == "cps":
        output = forward(weak)
        slots = [slot[0] for slot in output.slots]
        return UnlabeledTerm(pairwise_consistency_loss(slots), disagreement(slots),
                             confident_fraction([pseudo_labels(s) for s in slots], threshold), output.gate.probs)
    with torch.no_grad():
        teacher = forward(weak)
    weak_slots = [slot[0] for slot in teacher.slots]
    targets = [pseudo_labels(s) for s in weak_slots]
    strong, mix = strong_view(weak, settings.perturbation)
    with bottleneck_dropout(network, settings.perturbation.feature_dropout):
        student = forward(strong, decision=teacher.gate)  # the experts the weak view chose
    mixed_targets = [PseudoLabels(mix.apply(t.labels), mix.apply(t.confidence)) for t in targets]
    loss = weak_to_strong_loss([slot[0] for slot in student.slots], mixed_targets, threshold)
    return UnlabeledTerm(loss, disagreement(weak_slots), confident_fraction(targets, threshold), teacher.gate.probs)


DIAGNOSTICS = ("disagreement", "confident_fraction", "consistency_grad_share", "gate_entropy")


def settings_of_old_checkpoint(settings: Optional[dict], moe_settings: Optional[dict],
                               consistency_settings: Optional[dict]) -> Optional[dict]:
    """Checkpoints written before settings were stored by name held the MoE's and the consistency's settings as
    the last two positional init args; restore_model passes them as moe_settings / consistency_settings."""
    if settings is not None or (moe_settings is None and consistency_settings is None):
        return settings
    old = {"moe": moe_settings or {}}
    if consistency_settings is not None:
        old["consistency"] = consistency_settings
    return old


class nnUNetTrainerV2_moe(FinetuneSettingsMixin, nnUNetTrainerV2):
    CONSISTENCY_KIND = "weak_strong"

    def __init__(self, plans_file, fold, output_folder=None, dataset_directory=None, batch_dice=True, stage=None,
                 unpack_data=True, deterministic=True, fp16=False, moe_settings: Optional[dict] = None,
                 consistency_settings: Optional[dict] = None, settings: Optional[dict] = None):
        """settings: the checkpoint's settings by name (patch 0009); None: from the environment. moe_settings,
        consistency_settings: only from checkpoints written before settings were stored by name."""
        super().__init__(plans_file, fold, output_folder, dataset_directory, batch_dice, stage, unpack_data,
                         deterministic, fp16)
        settings = settings_of_old_checkpoint(settings, moe_settings, consistency_settings)
        self.use_finetune_settings(settings)  # it continues the baseline, like its control
        self.moe = group_from(settings, "moe", MoESettings)
        self.consistency = ConsistencySettings.of_trainer(self.CONSISTENCY_KIND, type(self).__name__, settings)
        self.unlabeled_gen = None
        self.moe_log: List[dict] = []
        self._epoch_stats: List[dict] = []
        self._grad_share: Optional[Dict[str, float]] = None  # measured on the epoch's first unlabelled iteration

    def method_settings(self) -> dict:
        return {**super().method_settings(), "moe": self.moe.as_record(),
                "consistency": self.consistency.as_record()}

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
            self.unlabeled_gen = unlabeled_generator(self)

    # ------------------------------------------------------------------ one iteration
    def consistency_lambda(self) -> float:
        c = self.consistency
        return consistency_weight(self.epoch, c.lambda_max, c.warmup_epochs, c.rampup_epochs)

    def supervised_loss(self, output: MoEOutput, target) -> torch.Tensor:
        per_expert = torch.stack([self.loss(slot, target) for slot in output.slots]).mean()
        return per_expert + self.loss(output.combined, target)

    @property
    def training_forward(self) -> Callable:
        """What runs the network in a training iteration (a DDP variant puts its DistributedDataParallel here)."""
        return self.network

    def balance_loss(self, gate: GateDecision) -> torch.Tensor:
        return load_balancing_loss(gate.indices, gate.probs, self.moe.num_experts)

    def unlabeled_term(self, weak: torch.Tensor) -> UnlabeledTerm:
        return moe_unlabeled_term(self.network, weak, self.consistency, forward=self.training_forward)

    def consistency_gradient_share(self, losses: MoELosses) -> float:
        """|d(lambda x consistency)/d shared| / |d supervised/d shared| over the encoder and shared decoder blocks
        (two extra backward passes; both losses scaled alike so that fp16 gradients do not underflow)."""
        shared = self.network.shared_parameters()
        scale = self.amp_grad_scaler.get_scale() if self.fp16 and self.amp_grad_scaler is not None else 1.0

        def norm(loss: torch.Tensor) -> torch.Tensor:
            grads = torch.autograd.grad(loss * scale, shared, retain_graph=True, allow_unused=True)
            return torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))

        return (norm(losses.weighted_consistency) / norm(losses.supervised).clamp_min(1e-12)).item()

    def run_iteration(self, data_generator, do_backprop=True, run_online_evaluation=False):
        consistency_lambda = self.consistency_lambda() if do_backprop else 0.0
        data, target, unlabeled = next_batches(self, data_generator, with_unlabeled=consistency_lambda > 0)

        self.optimizer.zero_grad()
        with autocast(enabled=self.fp16):
            output = self.training_forward(data)
            supervised = self.supervised_loss(output, target)
            balance = self.balance_loss(output.gate)
            term = self.unlabeled_term(unlabeled) if unlabeled is not None else None
            weighted_consistency = consistency_lambda * term.consistency if term else supervised.new_zeros(())
            losses = MoELosses(supervised + weighted_consistency + self.moe.balance_alpha * balance,
                               supervised, weighted_consistency, balance)

        measure = do_backprop and term is not None and self._grad_share is None
        if measure:
            started = time.time()
            self._grad_share = {"consistency_grad_share": self.consistency_gradient_share(losses),
                                "grad_share_seconds": time.time() - started}
        if do_backprop:
            optimizer_step(self, losses.total)

        if run_online_evaluation:
            self.run_online_evaluation(output.combined, target)
        if do_backprop:
            probs = output.gate.probs if term is None else torch.cat([output.gate.probs, term.gate_probs])
            self._epoch_stats.append({
                "supervised": losses.supervised.item(),
                "consistency": term.consistency.item() if term else 0.0,
                "balance": losses.balance.item(), "lambda": consistency_lambda,
                "disagreement": term.disagreement if term else None,
                "confident_fraction": term.confident_fraction if term else None,
                "gate_entropy": gate_entropy(probs).item(),
                "usage": expert_usage(output.gate.indices, self.moe.num_experts).tolist()})
        return losses.total.detach().cpu().numpy()

    # ------------------------------------------------------------------ logging and checkpoints
    def epoch_entry(self) -> dict:
        """This epoch's moe_log.json entry: means over its iterations (None where nothing was measured)."""
        def mean(key: str) -> Optional[float]:
            values = [s[key] for s in self._epoch_stats if s[key] is not None]
            return float(np.mean(values)) if values else None

        entry = {key: mean(key) for key in ("supervised", "consistency", "balance", "lambda", "disagreement",
                                            "confident_fraction", "gate_entropy")}
        entry.update(self._grad_share or {"consistency_grad_share": None, "grad_share_seconds": None})
        entry["usage"] = np.mean([s["usage"] for s in self._epoch_stats], axis=0).round(4).tolist()
        entry["epoch"] = self.epoch
        return entry

    def on_epoch_end(self):
        if self._epoch_stats:
            entry = self.epoch_entry()
            self.moe_log.append(entry)
            self._epoch_stats, self._grad_share = [], None
            shown = lambda value: "-" if value is None else "%.4f" % value  # noqa: E731
            self.print_to_log_file(
                "moe: supervised %s, consistency %s, lambda %s, balance %s, disagreement %s, confident_fraction %s, "
                "consistency_grad_share %s, gate_entropy %s, expert usage %s" % tuple(
                    [shown(entry[k]) for k in ("supervised", "consistency", "lambda", "balance") + DIAGNOSTICS]
                    + [entry["usage"]]))
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
