"""nnUNetTrainerV2_meanteacher: nnU-Net's own network with a mean teacher on the unlabelled scans.

The question it answers beside the mixture of experts: is it the experts, or just the unlabelled scans? So it
is the MoE's training with the experts taken out. It continues the 3d_fullres baseline (`-pretrained_weights`,
initial learning rate FINETUNE_LR, the same budget as the MoE and its control); the teacher is an exponential
moving average of the student (EMASettings: decay MT_EMA_DECAY, default 0.99), updated after every optimiser step. Each
iteration draws the same labelled and unlabelled batches as the MoE, and the loss is

    supervised + lambda(epoch) * consistency

with nnU-Net's Dice+CE (deep supervision) as the supervised term and the MoE's weak-to-strong consistency with
the teacher as the source of pseudo-labels: the teacher's softmax on the weak view gives pseudo-labels and
confidences, and the student is trained on the strong view (the same perturbations, CutMix and feature
dropout on the skips and bottleneck, nnunet/training/data_augmentation/strong_perturbations.py) towards the
confident ones (nnunet/training/loss_functions/consistency.py). Its ConsistencySettings (CONSISTENCY_THRESHOLD,
PERTURBATION, CONSISTENCY_LAMBDA_MAX, CONSISTENCY_WARMUP_EPOCHS, CONSISTENCY_RAMPUP_EPOCHS) are the MoE's; the kind
is always weak_strong. Settings by name (checkpoint .pkl, settings.json): "finetune", "consistency", "ema".

The student is the model nnU-Net saves, validates and predicts with; the teacher's weights are saved beside
each checkpoint (`<checkpoint>.teacher`) so that `-c` resumes it (without that file it restarts as a copy of
the student).
"""
import os
from typing import Callable, List, NamedTuple, Optional

import numpy as np
import torch
from torch.cuda.amp import autocast

from nnunet.training.data_augmentation.strong_perturbations import feature_dropout, strong_view
from nnunet.training.dataloading.unlabeled_loader import stop_generator, unlabeled_generator
from nnunet.training.loss_functions.consistency import (ConsistencySettings, PseudoLabels, confident_fraction,
                                                        pseudo_labels, thresholded_cross_entropy)
from nnunet.training.loss_functions.moe_losses import consistency_weight
from nnunet.training.network_training.nnUNetTrainerV2 import nnUNetTrainerV2
from nnunet.training.network_training.nnUNetTrainerV2_finetune import FinetuneSettingsMixin
from nnunet.training.network_training.semi_supervised_steps import next_batches, optimizer_step
from nnunet.training.settings import EMASettings, group_from
from nnunet.utilities.atomic_files import torch_save_atomically
from nnunet.utilities.ema import ema_copy, ema_update
from nnunet.utilities.safe_loading import load_checkpoint_safely

EMA_DECAY_ENVIRONMENT = EMASettings.ENVIRONMENT["decay"].name
DEFAULT_EMA_DECAY = EMASettings().decay


def ema_decay_from_environment() -> float:
    return EMASettings.from_environment().decay


def full_resolution(output) -> torch.Tensor:
    """The full-resolution logits of a Generic_UNet's output (a tuple with deep supervision)."""
    return output[0] if isinstance(output, (tuple, list)) else output


class MeanTeacherTerm(NamedTuple):
    consistency: torch.Tensor
    confident_fraction: float


def mean_teacher_term(student, teacher, weak: torch.Tensor, settings: ConsistencySettings,
                      forward: Optional[Callable] = None) -> MeanTeacherTerm:
    """The teacher's confident pseudo-labels on the weak view train the student on the strong view. forward: what
    runs the student (its DistributedDataParallel under DDP; the feature dropout hooks sit on `student`)."""
    with torch.no_grad():
        target = pseudo_labels(full_resolution(teacher(weak)))
    strong, mix = strong_view(weak, settings.perturbation)
    with feature_dropout(student, settings.perturbation.feature_dropout):
        student_logits = full_resolution((forward or student)(strong))
    mixed = PseudoLabels(mix.apply(target.labels), mix.apply(target.confidence))
    return MeanTeacherTerm(thresholded_cross_entropy(student_logits, mixed, settings.threshold),
                           confident_fraction([target], settings.threshold))


class nnUNetTrainerV2_meanteacher(FinetuneSettingsMixin, nnUNetTrainerV2):
    def __init__(self, plans_file, fold, output_folder=None, dataset_directory=None, batch_dice=True, stage=None,
                 unpack_data=True, deterministic=True, fp16=False, consistency_settings: Optional[dict] = None,
                 ema_decay: Optional[float] = None, settings: Optional[dict] = None):
        """settings: the checkpoint's settings by name (patch 0009); None: from the environment. consistency_settings,
        ema_decay: only from checkpoints written before settings were stored by name."""
        super().__init__(plans_file, fold, output_folder, dataset_directory, batch_dice, stage, unpack_data,
                         deterministic, fp16)
        if settings is None and consistency_settings is not None:
            settings = {"consistency": consistency_settings, "ema": {"decay": ema_decay}}
        self.use_finetune_settings(settings)  # it continues the baseline, like the MoE and the control
        self.consistency = ConsistencySettings.of_trainer("weak_strong", type(self).__name__, settings)
        self.ema = group_from(settings, "ema", EMASettings)
        self.ema_decay = self.ema.decay
        self.teacher: Optional[torch.nn.Module] = None
        self.unlabeled_gen = None
        self._epoch_stats: List[dict] = []

    def method_settings(self) -> dict:
        return {**super().method_settings(), "consistency": self.consistency.as_record(), "ema": self.ema.as_record()}

    def initialize(self, training=True, force_load_plans=False):
        super().initialize(training, force_load_plans)
        self._maybe_init_amp()
        if training:
            self.unlabeled_gen = unlabeled_generator(self)

    def ensure_teacher(self) -> None:
        """The teacher starts as the student once its weights are final (after -pretrained_weights or -c)."""
        if self.teacher is None:
            self.teacher = ema_copy(self.network)

    def run_training(self):
        self.ensure_teacher()
        try:
            return super().run_training()
        finally:
            stop_generator(self.unlabeled_gen)
            self.unlabeled_gen = None

    @property
    def training_forward(self) -> Callable:
        """What runs the student in a training iteration (the DDP variant puts its DistributedDataParallel here)."""
        return self.network

    def all_ranks_mean(self, value: Optional[float]) -> Optional[float]:
        """A logged number's mean over the processes (one process: itself; the DDP variant reduces)."""
        return value

    def epoch_mean(self, values: List[float]) -> float:
        """The mean of this epoch's values over every process's steps (NaN when none measured it)."""
        mean = self.all_ranks_mean(float(np.mean(values)) if values else None)
        return np.nan if mean is None else mean

    def consistency_lambda(self) -> float:
        c = self.consistency
        return consistency_weight(self.epoch, c.lambda_max, c.warmup_epochs, c.rampup_epochs)

    def run_iteration(self, data_generator, do_backprop=True, run_online_evaluation=False):
        consistency_lambda = self.consistency_lambda() if do_backprop else 0.0
        data, target, unlabeled = next_batches(self, data_generator, with_unlabeled=consistency_lambda > 0)[:3]
        if unlabeled is not None:
            self.ensure_teacher()

        self.optimizer.zero_grad()
        with autocast(enabled=self.fp16):
            output = self.training_forward(data)
            supervised = self.loss(output, target)
            term = mean_teacher_term(self.network, self.teacher, unlabeled, self.consistency,
                                     forward=self.training_forward) if unlabeled is not None else None
            total = supervised + consistency_lambda * term.consistency if term else supervised
        if do_backprop:
            optimizer_step(self, total)
            self.ensure_teacher()
            ema_update(self.teacher, self.network, self.ema_decay)
            self._epoch_stats.append({"consistency": term.consistency.item() if term else None,
                                      "confident_fraction": term.confident_fraction if term else None,
                                      "lambda": consistency_lambda})
        if run_online_evaluation:
            self.run_online_evaluation(output, target)
        return total.detach().cpu().numpy()

    def on_epoch_end(self):
        if self._epoch_stats:
            mean = {k: self.epoch_mean([s[k] for s in self._epoch_stats if s[k] is not None])
                    for k in ("consistency", "confident_fraction", "lambda")}
            self.print_to_log_file("mean teacher: consistency %.4f, lambda %.4f, confident_fraction %.4f" %
                                   (mean["consistency"], mean["lambda"], mean["confident_fraction"]))
            self._epoch_stats = []
        return super().on_epoch_end()

    # ------------------------------------------------------------------ the teacher beside each checkpoint
    def save_checkpoint(self, fname, save_optimizer=True):
        super().save_checkpoint(fname, save_optimizer)
        if self.teacher is not None:
            torch_save_atomically(self.teacher.state_dict(), fname + ".teacher")

    def load_checkpoint(self, fname, train=True):
        super().load_checkpoint(fname, train)
        if train and os.path.isfile(fname + ".teacher"):
            self.teacher = ema_copy(self.network)
            self.teacher.load_state_dict(load_checkpoint_safely(fname + ".teacher"))
