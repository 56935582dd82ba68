"""nnUNetTrainerV2_moe: semi-supervised training of Generic_UNet_MoE on labelled + unlabelled scans.

Each training iteration draws a labelled batch (nnU-Net's loader and augmentation) and, once the
consistency weight is above 0, an unlabelled batch of the same patch size and augmentation from the
task's preprocessed unlabelled pool (the weak view). The loss is

    supervised    = MOE_SUPERVISED_LOSS=gate_weighted (default): nnU-Net's DC+CE with deep supervision over the
                    (sample, chosen expert) pairs, each weighted by its gate weight (moe_losses.gate_weighted_dice_ce):
                    the control's loss while the experts are identical, and the gate learns which expert segments
                    a sample best; mean_and_combined: the mean over the chosen experts of DC+CE plus the DC+CE of
                    the gate-weighted combination (models before 2026-12; twice the control's gradient)
    consistency   = CONSISTENCY=weak_strong: each chosen expert's confident pseudo-labels on the weak view train
                    the other chosen expert(s) on a strongly perturbed view of the same patches, routed to the
                    same experts (intensity perturbations, CutMix, channel dropout on the skips and bottleneck);
                    CONSISTENCY=cps: cross pseudo-supervision between the chosen experts on the weak view
                    (nnunet/training/loss_functions/consistency.py has the exact formulas)
    load balance  = E * sum_i f_i * P_i over the whole step (labelled and unlabelled samples): f_i the expert usage
                    averaged over steps (decay MOE_BALANCE_DECAY), P_i the step's mean gate probability
    total         = supervised + lambda(epoch) * consistency + alpha * load balance

lambda(epoch) is 0 for the warm-up epochs, then ramps to lambda_max with exp(-5 (1 - t)^2).

Diagnostics per epoch (moe_log.json, the log, moe_progress.png, make report):
    expert_lesion_dice        Dice between the chosen experts' lesion predictions on the unlabelled weak view
                              (1: the experts are copies; two separately trained nnU-Nets agree at about 0.90)
    disagreement              fraction of unlabelled voxels where the chosen experts' argmax differ (all voxels)
    confident_fraction        fraction of unlabelled voxels passing the confidence threshold (mostly background)
    confident_fraction_lesion the same over the voxels pseudo-labelled lesion
    gate_entropy              entropy (nats) of the noise-free gate: log E when it cannot tell the experts apart
    gate_entropy_noisy        entropy of the gate with its training noise (what routes in training)
    gate_signal_to_noise      std over the epoch's samples of the noise-free scores / the noise std
    route_site_mi             mutual information (bits) between the noise-free top-1 expert and the scanner site
                              of the unlabelled cases seen in the epoch (needs sites in split.json; plug-in
                              estimate, biased up by about 4 / (2 N ln 2) bits for 3 experts x 3 sites)
    consistency_grad_share    |grad of lambda x consistency| / |grad of supervised| over the shared parameters,
    consistency_grad_cosine   and the cosine between the two gradients, means over the epoch's first
                              GRADIENT_PROBES unlabelled iterations (two extra backward passes each)
    usage                     fraction of the routing per expert

The MoE continues the baseline's weights, so its initial learning rate is FINETUNE_LR (nnunet.training.
learning_rate.finetune_lr), the same as its same-budget control nnUNetTrainerV2_finetune's.

Settings (nnunet/training/settings.py; read from the environment when the trainer is created for training, stored
by name in the checkpoint's .pkl and settings.json so that -val and prediction rebuild the same network and loss):
    "finetune": FinetuneSettings (FINETUNE_LR), "moe": MoESettings (MOE_NUM_EXPERTS 3, MOE_TOP_K 2,
    MOE_BALANCE_ALPHA 0.01, MOE_BALANCE_DECAY 0.9, MOE_GATE_FEATURES stem, MOE_GATE_NOISE 0.05,
    MOE_SUPERVISED_LOSS gate_weighted), "consistency": ConsistencySettings (CONSISTENCY_THRESHOLD 0.95,
    CONSISTENCY_LAMBDA_MAX 2.0, CONSISTENCY_WARMUP_EPOCHS 50, CONSISTENCY_RAMPUP_EPOCHS 200, PERTURBATION strengths,
    e.g. "noise_std=0.1 cutmix=0.5"); the kind of consistency is the trainer's (CONSISTENCY_KIND: weak_strong here,
    cps in nnUNetTrainerV2_moe_cps).
Read at every network construction (also for prediction): MOE_INFERENCE_TOP_K (the training k).
The Makefile sets them from EXPERTS, TOP_K, BALANCE_ALPHA, BALANCE_DECAY, GATE_FEATURES, GATE_NOISE,
SUPERVISED_LOSS, CONFIDENCE_THRESHOLD, LAMBDA_MAX, WARMUP_EPOCHS, RAMPUP_EPOCHS, PERTURBATION and INFERENCE_TOP_K.
"""
import json
import os
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch.cuda.amp import autocast

from nnunet.network_architecture.generic_UNet_MoE import GateDecision, MoEOutput
from nnunet.network_architecture.unet_factory import generic_unet_moe
from nnunet.training.data_augmentation.strong_perturbations import feature_dropout, strong_view
from nnunet.training.dataloading.unlabeled_loader import stop_generator, unlabeled_generator, unlabeled_sites
from nnunet.training.loss_functions.consistency import (ConsistencySettings, PseudoLabels, confident_fraction,
                                                        confident_fraction_lesion, disagreement, lesion_dice,
                                                        pseudo_labels, weak_to_strong_loss)
from nnunet.training.loss_functions.moe_losses import (consistency_weight, expert_usage, gate_entropy,
                                                       gate_weighted_dice_ce, load_balancing_loss,
                                                       mutual_information_bits, pairwise_consistency_loss,
                                                       signal_to_noise)
from nnunet.training.network_training.nnUNetTrainerV2 import nnUNetTrainerV2
from nnunet.training.network_training.nnUNetTrainerV2_finetune import FinetuneSettingsMixin
from nnunet.training.network_training.semi_supervised_steps import next_batches, optimizer_step
from nnunet.training.settings import MoESettings, group_from, inference_top_k_from_environment
from nnunet.utilities.moe_progress import plot_moe_progress
from nnunet.utilities.nd_softmax import softmax_helper

GRADIENT_PROBES = 3  # unlabelled iterations per epoch whose gradient share and cosine are measured


class MoELosses(NamedTuple):
    total: torch.Tensor
    supervised: torch.Tensor
    weighted_consistency: torch.Tensor  # lambda x consistency
    balance: torch.Tensor


class UnlabeledTerm(NamedTuple):
    consistency: torch.Tensor
    router: GateDecision          # the experts that routed the batch, with the gate's probabilities (with gradient)
    weak: GateDecision            # the gate's decision on the weak view (no gradient; its noise-free scores)
    disagreement: float
    confident_fraction: float
    confident_fraction_lesion: Optional[float]
    expert_lesion_dice: Optional[float]


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
        targets = [pseudo_labels(s) for s in slots]
        return UnlabeledTerm(pairwise_consistency_loss(slots), output.gate, output.gate, disagreement(slots),
                             confident_fraction(targets, threshold), confident_fraction_lesion(targets, threshold),
                             lesion_dice(slots))
    with torch.no_grad():
        teacher = forward(weak)
    weak_slots = [slot[0] for slot in teacher.slots]
    targets = [pseudo_labels(s) for s in weak_slots]
    strong, mix = strong_view(weak, settings.perturbation)
    with feature_dropout(network, settings.perturbation.feature_dropout):
        student = forward(strong, decision=teacher.gate)  # the experts the weak view chose
    mixed_targets = [PseudoLabels(mix.apply(t.labels), mix.apply(t.confidence)) for t in targets]
    loss = weak_to_strong_loss([slot[0] for slot in student.slots], mixed_targets, threshold)
    router = student.router._replace(indices=teacher.gate.indices)  # routed as the weak view; probs with gradient
    return UnlabeledTerm(loss, router, teacher.gate, disagreement(weak_slots), confident_fraction(targets, threshold),
                         confident_fraction_lesion(targets, threshold), lesion_dice(weak_slots))


MEANS = ("supervised", "consistency", "balance", "lambda", "expert_lesion_dice", "disagreement", "confident_fraction",
         "confident_fraction_lesion")
DIAGNOSTICS = ("expert_lesion_dice", "disagreement", "confident_fraction", "confident_fraction_lesion",
               "consistency_grad_share", "consistency_grad_cosine", "gate_entropy", "gate_entropy_noisy",
               "gate_signal_to_noise", "route_site_mi")


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
        self.sites: Dict[str, str] = {}
        self.routing_usage: Optional[torch.Tensor] = None  # expert usage averaged over steps (load balancing)
        self.moe_log: List[dict] = []
        self.start_epoch_records()

    def method_settings(self) -> dict:
        return {**super().method_settings(), "moe": self.moe.as_record(),
                "consistency": self.consistency.as_record()}

    # ------------------------------------------------------------------ setup
    def initialize_network(self):
        self.network = generic_unet_moe(
            num_input_channels=self.num_input_channels, base_num_features=self.base_num_features,
            num_classes=self.num_classes, pool_op_kernel_sizes=self.net_num_pool_op_kernel_sizes,
            conv_kernel_sizes=self.net_conv_kernel_sizes, conv_per_stage=self.conv_per_stage,
            num_experts=self.moe.num_experts, top_k=self.moe.top_k, inference_top_k=inference_top_k_from_environment(),
            gate_features=self.moe.gate_features, gate_noise=self.moe.gate_noise)
        if torch.cuda.is_available():
            self.network.cuda()
        self.network.inference_apply_nonlin = softmax_helper

    def initialize(self, training=True, force_load_plans=False):
        super().initialize(training, force_load_plans)
        self._maybe_init_amp()  # fp16 is settled now (off without CUDA), not only once run_training starts
        if training:
            self.unlabeled_gen = unlabeled_generator(self)
            self.sites = unlabeled_sites(self)

    def run_training(self):
        try:
            return super().run_training()
        finally:
            stop_generator(self.unlabeled_gen)
            self.unlabeled_gen = None

    # ------------------------------------------------------------------ one iteration
    def consistency_lambda(self) -> float:
        c = self.consistency
        return consistency_weight(self.epoch, c.lambda_max, c.warmup_epochs, c.rampup_epochs)

    def pair_statistics_gather(self) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """What all-gathers the batch Dice's per-pair sums over ranks: nothing in one process (the DDP variant's)."""
        return None

    def supervised_loss(self, output: MoEOutput, target) -> torch.Tensor:
        if self.moe.supervised_loss == "mean_and_combined":
            per_expert = torch.stack([self.loss(slot, target) for slot in output.slots]).mean()
            return per_expert + self.loss(output.combined, target)
        return gate_weighted_dice_ce(output.slots, target, output.gate.weights, self.ds_loss_weights,
                                     self.batch_dice, self.pair_statistics_gather())

    @property
    def training_forward(self) -> Callable:
        """What runs the network in a training iteration (a DDP variant puts its DistributedDataParallel here)."""
        return self.network

    def route(self, keys: Optional[Sequence[str]]) -> None:
        """Called with the cases of the next forward pass (None after the step): the gate routes them here; the
        site oracle (nnUNetTrainerV2_moe_site) forces each to its site's expert."""

    def step_usage(self, indices: torch.Tensor) -> torch.Tensor:
        """The fraction of this step's routing per expert (the DDP variant: over all ranks)."""
        return expert_usage(indices, self.moe.num_experts)

    def balance_loss(self, routers: Sequence[GateDecision], update: bool = True) -> torch.Tensor:
        """E * sum_i f_i P_i over the step's samples (labelled and unlabelled): f_i the usage averaged over steps
        (MOE_BALANCE_DECAY; updated in training steps only), P_i the step's mean gate probability."""
        usage = self.step_usage(torch.cat([r.indices for r in routers]))
        averaged = usage if self.routing_usage is None else \
            self.moe.balance_decay * self.routing_usage.to(usage.device) + (1 - self.moe.balance_decay) * usage
        if update:
            self.routing_usage = averaged.detach()
        probs = torch.cat([r.probs for r in routers])
        return load_balancing_loss(None, probs, self.moe.num_experts, fraction_routed=averaged.detach())

    def unlabeled_term(self, weak: torch.Tensor) -> UnlabeledTerm:
        return moe_unlabeled_term(self.network, weak, self.consistency, forward=self.training_forward)

    def consistency_gradient_probe(self, losses: MoELosses) -> Dict[str, float]:
        """|d(lambda x consistency)/d shared| / |d supervised/d shared| over the encoder and shared decoder blocks,
        and the cosine between the two gradients (two extra backward passes; both losses scaled alike so that fp16
        gradients do not underflow)."""
        shared = self.network.shared_parameters()
        scale = self.amp_grad_scaler.get_scale() if self.fp16 and self.amp_grad_scaler is not None else 1.0

        def gradient(loss: torch.Tensor) -> torch.Tensor:
            grads = torch.autograd.grad(loss * scale, shared, retain_graph=True, allow_unused=True)
            return torch.cat([(g if g is not None else torch.zeros_like(p)).float().flatten()
                              for g, p in zip(grads, shared)])

        started = time.time()
        consistency, supervised = gradient(losses.weighted_consistency), gradient(losses.supervised)
        norms = consistency.norm(), supervised.norm()
        return {"consistency_grad_share": (norms[0] / norms[1].clamp_min(1e-12)).item(),
                "consistency_grad_cosine": (consistency @ supervised / (norms[0] * norms[1]).clamp_min(1e-24)).item(),
                "grad_share_seconds": time.time() - started}

    def run_iteration(self, data_generator, do_backprop=True, run_online_evaluation=False):
        consistency_lambda = self.consistency_lambda() if do_backprop else 0.0
        batches = next_batches(self, data_generator, with_unlabeled=consistency_lambda > 0)
        data, target, unlabeled = batches.data, batches.target, batches.unlabeled

        self.optimizer.zero_grad()
        with autocast(enabled=self.fp16):
            self.route(batches.keys)
            output = self.training_forward(data)
            supervised = self.supervised_loss(output, target)
            self.route(batches.unlabeled_keys)
            term = self.unlabeled_term(unlabeled) if unlabeled is not None else None
            self.route(None)
            balance = self.balance_loss([output.gate] + ([term.router] if term else []), update=do_backprop)
            weighted_consistency = consistency_lambda * term.consistency if term else supervised.new_zeros(())
            losses = MoELosses(supervised + weighted_consistency + self.moe.balance_alpha * balance,
                               supervised, weighted_consistency, balance)

        if do_backprop and term is not None and len(self._gradient_probes) < GRADIENT_PROBES:
            self._gradient_probes.append(self.consistency_gradient_probe(losses))
        if do_backprop:
            optimizer_step(self, losses.total)

        if run_online_evaluation:
            self.run_online_evaluation(output.combined, target)
        if do_backprop:
            self.record_iteration(losses, output, term, batches.unlabeled_keys, consistency_lambda)
        return losses.total.detach().cpu().numpy()

    # ------------------------------------------------------------------ diagnostics
    def start_epoch_records(self) -> None:
        """Empty the per-iteration records that epoch_entry summarises."""
        self._epoch_stats: List[dict] = []
        self._gate_rows: Dict[str, list] = {"clean": [], "noise": [], "top1": [], "site": []}
        self._gradient_probes: List[Dict[str, float]] = []

    def record_iteration(self, losses: MoELosses, output: MoEOutput, term: Optional[UnlabeledTerm],
                         unlabeled_keys: List[str], consistency_lambda: float) -> None:
        gates = [output.gate] + ([term.weak] if term else [])
        noisy = torch.cat([g.probs.detach() for g in gates])
        clean = torch.cat([g.clean_logits.detach() for g in gates]).float()
        self._gate_rows["clean"].append(clean.cpu())
        self._gate_rows["noise"].append(torch.cat([g.noise_std.detach() for g in gates]).float().cpu())
        if term is not None and self.sites and len(unlabeled_keys) == term.weak.clean_logits.shape[0]:
            for key, top1 in zip(unlabeled_keys, term.weak.clean_logits.argmax(1).tolist()):
                if key in self.sites:
                    self._gate_rows["top1"].append(top1)
                    self._gate_rows["site"].append(self.sites[key])
        self._epoch_stats.append({
            "supervised": losses.supervised.item(), "consistency": term.consistency.item() if term else 0.0,
            "balance": losses.balance.item(), "lambda": consistency_lambda,
            "disagreement": term.disagreement if term else None,
            "confident_fraction": term.confident_fraction if term else None,
            "confident_fraction_lesion": term.confident_fraction_lesion if term else None,
            "expert_lesion_dice": term.expert_lesion_dice if term else None,
            "gate_entropy": gate_entropy(torch.softmax(clean, 1)).item(),
            "gate_entropy_noisy": gate_entropy(noisy).item(),
            "usage": expert_usage(torch.cat([g.indices for g in gates]), self.moe.num_experts).tolist()})

    def epoch_entry(self) -> dict:
        """This epoch's moe_log.json entry: means over its iterations (None where nothing was measured)."""
        def mean(values: Sequence[Optional[float]]) -> Optional[float]:
            values = [v for v in values if v is not None]
            return float(np.mean(values)) if values else None

        entry = {key: mean([s[key] for s in self._epoch_stats]) for key in MEANS + ("gate_entropy",
                                                                                   "gate_entropy_noisy")}
        for key in ("consistency_grad_share", "consistency_grad_cosine", "grad_share_seconds"):
            entry[key] = mean([probe[key] for probe in self._gradient_probes])
        rows = self._gate_rows
        entry["gate_signal_to_noise"] = signal_to_noise(torch.cat(rows["clean"]), torch.cat(rows["noise"])) \
            if rows["clean"] else None
        entry["route_site_mi"] = mutual_information_bits(rows["top1"], rows["site"])
        entry["route_site_samples"] = len(rows["top1"])
        entry["usage"] = np.mean([s["usage"] for s in self._epoch_stats], axis=0).round(4).tolist()
        entry["epoch"] = self.epoch
        return entry

    def on_epoch_end(self):
        if self._epoch_stats:
            entry = self.epoch_entry()
            self.moe_log.append(entry)
            self.start_epoch_records()

            def shown(value) -> str:
                return "-" if value is None else "%.4f" % value

            self.print_to_log_file(
                "moe: supervised %s, consistency %s, lambda %s, balance %s, " % tuple(
                    shown(entry[k]) for k in ("supervised", "consistency", "lambda", "balance"))
                + ", ".join(f"{k} {shown(entry[k])}" for k in DIAGNOSTICS) + f", expert usage {entry['usage']}")
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
