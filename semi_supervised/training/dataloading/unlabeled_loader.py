"""The stream of unlabelled batches the semi-supervised trainers draw from (nnUNetTrainerV2_moe, _meanteacher).

Same patch size, batch size and augmentation (nnU-Net's moreDA) as the trainer's labelled batches, from the task's
preprocessed unlabelled pool (`make preprocess`, nnunet/preprocessing/unlabeled_preprocessing.py); no foreground
oversampling, since nothing is known about where the lesions of an unlabelled case are.
"""
import json
import os
from typing import Dict

from nnunet.preprocessing.unlabeled_preprocessing import unlabeled_stage_folder
from nnunet.training.data_augmentation.default_data_augmentation import get_moreDA_augmentation
from nnunet.training.dataloading.dataset_loading import DataLoader2D, DataLoader3D, load_dataset, unpack_dataset


def unlabeled_cases_folder(trainer) -> str:
    return unlabeled_stage_folder(trainer.dataset_directory, trainer.plans['data_identifier'], trainer.stage)


def unlabeled_generator(trainer):
    """An initialised nnUNetTrainerV2's generator of augmented unlabelled batches; a clear error when the pool is
    empty."""
    folder = unlabeled_cases_folder(trainer)
    if not os.path.isdir(folder) or not any(f.endswith(".npz") for f in os.listdir(folder)):
        raise RuntimeError(
            f"The unlabelled pool is empty: no preprocessed unlabelled cases in {folder}. "
            f"{type(trainer).__name__} needs unlabelled scans: convert with a labelled fraction below 1 "
            f"(make convert LABELED_FRACTION=0.5) or add scans (make convert EXTRA_UNLABELED=<folder of CTs>), "
            f"then run make preprocess FORCE=1.")
    dataset = load_dataset(folder)
    if trainer.unpack_data:
        unpack_dataset(folder)
    loader_class = DataLoader3D if trainer.threeD else DataLoader2D
    extra = {"has_prev_stage": False} if trainer.threeD else {}
    loader = loader_class(dataset, trainer.basic_generator_patch_size, trainer.patch_size, trainer.batch_size,
                          oversample_foreground_percent=0.0, pad_mode="constant", pad_sides=trainer.pad_all_sides,
                          memmap_mode='r', **extra)
    trainer.print_to_log_file(f"unlabelled pool: {len(dataset)} cases from {folder}")
    # the second (validation) generator is never started: batchgenerators starts workers on first use
    generator, _ = get_moreDA_augmentation(loader, loader, trainer.data_aug_params['patch_size_for_spatialtransform'],
                                           trainer.data_aug_params,
                                           deep_supervision_scales=trainer.deep_supervision_scales,
                                           pin_memory=trainer.pin_memory)
    return generator


def stop_generator(generator) -> None:
    """End a batchgenerators augmenter's worker processes (a no-op for None or a plain iterator). Left to the
    interpreter's exit, the started workers of the unlabelled stream could deadlock nnUNet_train after training
    had finished (a lock of their queues held at shutdown); the trainers stop it when training ends."""
    if generator is not None and hasattr(generator, "_finish"):
        generator._finish()


def unlabeled_sites(trainer) -> Dict[str, str]:
    """Case id -> scanner site of the task's cases, from the raw task's split.json (`make convert` records the sites
    when the download has a site table, sites.csv); empty when there is none."""
    from nnunet.paths import nnUNet_raw_data
    if nnUNet_raw_data is None:
        return {}
    path = os.path.join(nnUNet_raw_data, os.path.basename(os.path.normpath(trainer.dataset_directory)), "split.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return {str(case): str(site) for case, site in (json.load(f).get("sites") or {}).items() if site is not None}
