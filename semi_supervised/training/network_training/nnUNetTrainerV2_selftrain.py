"""nnUNetTrainerV2_selftrain: nnU-Net self-training (the offline pseudo-labelling nnU-Net's maintainers recommend,
Noisy Student style) inside one training run with the MoE's budget.

It continues the 3d_fullres baseline (`-pretrained_weights`, initial learning rate FINETUNE_LR) for the epochs it
is given (the MoE's and the control's budget), split into SELFTRAIN_ROUNDS rounds (default 1). Each round:
1. the current network (round 1: the baseline, the teacher) segments the task's preprocessed unlabelled pool with
   nnU-Net's own sliding-window prediction (no mirroring);
2. whole cases whose pseudo-label is not confident are dropped (nnU-Net 1.6.6's loss has no ignore label): a
   case's confidence is the mean max-probability over the voxels the teacher does not call background with
   certainty (lesion probability > 0.05; 1.0 when there are none); cases below SELFTRAIN_THRESHOLD (0.8) are
   dropped;
3. for the first half of the round the student (the same network, nnU-Net's normal strong augmentation) trains on
   the labelled cases plus the kept pseudo-labelled ones; for the second half it is fine-tuned on the labelled
   cases only. The next round's teacher is this round's fine-tuned student.

Pseudo-labels never touch the task's labels: each round writes them into the model folder,
`pseudo_labels/round_<r>/`: `<case>.nii.gz` in the CT's geometry (for inspection), the preprocessed `<case>.npz`
/ `.pkl` the student trains on, and `pseudo_labels.json` (threshold, each case's confidence, kept or dropped;
written last, so a round with it is complete and a resumed run (-c) reuses it). The extra cost beyond the budget is
the prediction of the pool once per round.
"""
import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from nnunet.inference.segmentation_export import save_segmentation_nifti_from_softmax
from nnunet.training.data_augmentation.default_data_augmentation import get_moreDA_augmentation
from nnunet.training.dataloading.dataset_loading import DataLoader2D, DataLoader3D, load_dataset
from nnunet.training.dataloading.unlabeled_loader import stop_generator, unlabeled_cases_folder
from nnunet.training.network_training.nnUNetTrainerV2_finetune import nnUNetTrainerV2_finetune
from nnunet.training.settings import SelfTrainSettings, group_from
from nnunet.utilities.atomic_files import replace_atomically, write_pickle_atomically
from nnunet.utilities.safe_loading import load_pickle_safely

UNCERTAIN_LESION_PROBABILITY = 0.05
CLASS_LOCATION_SAMPLES = 10000  # as nnU-Net's preprocessing, for its foreground oversampling


def case_confidence(softmax: np.ndarray) -> float:
    """Mean max-probability over the voxels that are not certainly background; 1.0 when all are."""
    uncertain = softmax[1:].sum(0) > UNCERTAIN_LESION_PROBABILITY
    if not uncertain.any():
        return 1.0
    return float(softmax.max(0)[uncertain].mean())


def class_locations(seg: np.ndarray, classes: List[int]) -> Dict[int, np.ndarray]:
    """Sampled voxel coordinates per class, as nnU-Net's preprocessing stores them (seed 1234, at least 1%)."""
    rng = np.random.RandomState(1234)
    locations = {}
    for c in classes:
        voxels = np.argwhere(seg == c)
        if len(voxels) == 0:
            locations[c] = []
            continue
        n = max(min(CLASS_LOCATION_SAMPLES, len(voxels)), int(np.ceil(len(voxels) * 0.01)))
        locations[c] = voxels[rng.choice(len(voxels), n, replace=False)]
    return locations


class nnUNetTrainerV2_selftrain(nnUNetTrainerV2_finetune):
    def __init__(self, plans_file, fold, output_folder=None, dataset_directory=None, batch_dice=True, stage=None,
                 unpack_data=True, deterministic=True, fp16=False, rounds: Optional[int] = None,
                 threshold: Optional[float] = None, settings: Optional[dict] = None):
        """settings: the checkpoint's settings by name (patch 0009); None: from the environment (SELFTRAIN_ROUNDS,
        SELFTRAIN_THRESHOLD, FINETUNE_LR). rounds, threshold: only from checkpoints written before settings were
        stored by name."""
        super().__init__(plans_file, fold, output_folder, dataset_directory, batch_dice, stage, unpack_data,
                         deterministic, fp16, settings=settings)
        if settings is None and rounds is not None:
            settings = {"selftrain": {"rounds": rounds, "threshold": threshold}}
        self.selftrain = group_from(settings, "selftrain", SelfTrainSettings)
        self.rounds, self.threshold = self.selftrain.rounds, self.selftrain.threshold
        self.labeled_dataset: Optional[dict] = None
        self.current_phase: Optional[Tuple[int, bool]] = None

    def method_settings(self) -> dict:
        return {**super().method_settings(), "selftrain": self.selftrain.as_record()}

    # ------------------------------------------------------------------ the schedule
    def phase(self, epoch: int) -> Tuple[int, bool]:
        """(round, with pseudo-labels) of an epoch: each round's first half uses them, its second half does not."""
        length = self.max_num_epochs / self.rounds
        round_ = min(int(epoch // length), self.rounds - 1)
        return round_, (epoch - round_ * length) < length / 2

    def run_training(self):
        self.enter_phase(self.epoch)
        return super().run_training()

    def on_epoch_end(self):
        continue_training = super().on_epoch_end()
        upcoming = self.epoch + 1
        if continue_training and upcoming < self.max_num_epochs and self.phase(upcoming) != self.current_phase:
            self.enter_phase(upcoming)
        return continue_training

    def enter_phase(self, epoch: int) -> None:
        round_, with_pseudo = self.phase(epoch)
        if self.labeled_dataset is None:
            self.labeled_dataset = dict(self.dataset_tr)
        dataset = dict(self.labeled_dataset)
        if with_pseudo:
            dataset.update(self.pseudo_labelled_cases(round_))
        self.dataset_tr = dataset
        self.rebuild_training_generator()
        self.current_phase = (round_, with_pseudo)
        what = "student on labelled + pseudo-labelled cases" if with_pseudo else "fine-tuning on labelled cases"
        self.print_to_log_file(f"self-training round {round_ + 1}/{self.rounds}, from epoch {epoch}: {what} "
                               f"({len(dataset)} cases)")

    def rebuild_training_generator(self) -> None:
        stop_generator(self.tr_gen)
        loader_class = DataLoader3D if self.threeD else DataLoader2D
        extra = {"has_prev_stage": False} if self.threeD else {}
        loader = loader_class(self.dataset_tr, self.basic_generator_patch_size, self.patch_size, self.batch_size,
                              oversample_foreground_percent=self.oversample_foreground_percent, pad_mode="constant",
                              pad_sides=self.pad_all_sides, memmap_mode='r', **extra)
        self.tr_gen, _ = get_moreDA_augmentation(loader, self.dl_val,
                                                 self.data_aug_params['patch_size_for_spatialtransform'],
                                                 self.data_aug_params,
                                                 deep_supervision_scales=self.deep_supervision_scales,
                                                 pin_memory=self.pin_memory)

    # ------------------------------------------------------------------ pseudo-labels
    def pseudo_label_folder(self, round_: int) -> str:
        return os.path.join(self.output_folder, "pseudo_labels", f"round_{round_ + 1}")

    def pseudo_labelled_cases(self, round_: int) -> dict:
        """nnU-Net dataset entries of the kept pseudo-labelled cases of a round (made when not on disk)."""
        folder = self.pseudo_label_folder(round_)
        record_file = os.path.join(folder, "pseudo_labels.json")
        if not os.path.isfile(record_file):
            self.make_pseudo_labels(round_)
        with open(record_file) as f:
            record = json.load(f)
        return {f"pseudo_round{round_ + 1}_{case}": {"data_file": os.path.join(folder, f"{case}.npz"),
                                                     "properties_file": os.path.join(folder, f"{case}.pkl")}
                for case, entry in record["cases"].items() if entry["kept"]}

    def make_pseudo_labels(self, round_: int) -> None:
        pool = load_dataset(unlabeled_cases_folder(self))
        folder = self.pseudo_label_folder(round_)
        os.makedirs(folder, exist_ok=True)
        self.print_to_log_file(f"self-training round {round_ + 1}: pseudo-labelling {len(pool)} unlabelled cases")
        cases = {}
        was_training = self.network.training
        self.network.eval()
        try:
            for case, entry in pool.items():
                cases[case] = self.pseudo_label_case(case, entry, folder)
        finally:
            self.network.train(was_training)
        kept = sum(e["kept"] for e in cases.values())
        self.print_to_log_file(f"self-training round {round_ + 1}: kept {kept} of {len(cases)} cases "
                               f"(confidence >= {self.threshold})")
        tmp = os.path.join(folder, "pseudo_labels.json.tmp")
        with open(tmp, "w") as f:
            json.dump({"round": round_ + 1, "threshold": self.threshold, "teacher": "baseline" if round_ == 0 else
                       f"round {round_} student", "cases": cases}, f, indent=1)
        os.replace(tmp, os.path.join(folder, "pseudo_labels.json"))

    def pseudo_label_case(self, case: str, entry: dict, folder: str) -> dict:
        data = np.load(entry["data_file"])["data"][:-1]  # the pool's last channel is its 'no label' placeholder
        properties = load_pickle_safely(entry["properties_file"])
        seg, softmax = self.predict_preprocessed_data_return_seg_and_softmax(
            data, do_mirroring=False, mirror_axes=self.data_aug_params['mirror_axes'],
            use_sliding_window=True, step_size=0.5, use_gaussian=True, all_in_gpu=False,
            verbose=False, mixed_precision=self.fp16)
        confidence = case_confidence(softmax)
        kept = confidence >= self.threshold
        if kept:
            training_properties = dict(properties, seg_file=None,
                                       class_locations=class_locations(seg, list(range(1, self.num_classes))))
            write_pickle_atomically(training_properties, os.path.join(folder, f"{case}.pkl"))
            replace_atomically(os.path.join(folder, f"{case}.npz"),
                               lambda f: np.savez_compressed(f, data=np.vstack((data, seg[None])).astype(np.float32)))
        export = softmax.transpose([0] + [i + 1 for i in self.transpose_backward])
        save_segmentation_nifti_from_softmax(export, os.path.join(folder, f"{case}.nii.gz"), properties, order=1,
                                             interpolation_order_z=0, verbose=False)
        return {"confidence": round(confidence, 5), "kept": bool(kept),
                "lesion_voxels": int((seg > 0).sum())}
