"""`make gradcam`: Grad-CAM attention maps for the lesion class, in each input CT's geometry.

For every CT in INPUT (NIfTI files and DICOM series at any depth, checked as predict's inputs are:
covidseg.data.ct_inputs; a DICOM series in the grid of SimpleITK's series reader) writes into OUTPUT:
    <case>_attention.nii.gz     the map, float in [0, 1], exactly the CT's size, spacing, origin and direction
    <case>_segmentation.nii.gz  the model's segmentation of the same case (same geometry)
    <case>_overlay.png          axial slices through the strongest attention and the largest predicted lesion:
                                CT in a lung window, heat map, predicted contour
and prints a summary line per case (max attention, share of the attention mass inside the predicted lesion).
See nnunet/inference/attention_maps.py (semi_supervised/inference/) for how the maps are made.
"""
import argparse
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt
import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from covidseg.core.challenge import LESION_LABEL
from covidseg.core.errors import WorkflowError, main_guard
from covidseg.core.workspace import add_model_arguments, task_name, trained_model_dir
from covidseg.runs.model_files import check_trained_fold
from covidseg.data.ct_inputs import LUNG_WINDOW, collect_inputs, ensure_writable, refuse_overwrite

OUTPUT_SUFFIXES = ("_attention.nii.gz", "_segmentation.nii.gz", "_overlay.png")
EMPTY_MAP_HINT = ("Grad-CAM++ (gcampp) keeps positive gradients only, and the last decoder block feeds the lesion "
                  "head linearly: if the head reads all its channels with negative weights, nothing is left. "
                  "Use BACKEND=gcam or another LAYER.")


def axial_slices(attention: np.ndarray, segmentation: np.ndarray):
    """(title, z) of the slices to show: strongest attention, largest predicted lesion."""
    slices = [("strongest attention", int(np.unravel_index(np.argmax(attention), attention.shape)[0]))]
    if segmentation.any():
        slices.append(("largest predicted lesion", int(np.argmax(segmentation.sum(axis=(1, 2))))))
    return slices


def plot_overlay(case: str, ct: np.ndarray, attention: np.ndarray, segmentation: np.ndarray, path: Path) -> None:
    slices = axial_slices(attention, segmentation)
    fig, axes = plt.subplots(1, len(slices), figsize=(5.5 * len(slices), 5.8), squeeze=False)
    for ax, (what, z) in zip(axes[0], slices):
        ax.imshow(np.clip(ct[z], *LUNG_WINDOW), cmap="gray")
        heat = ax.imshow(np.ma.masked_less(attention[z], 0.05), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        if segmentation[z].any():
            ax.contour(segmentation[z], levels=[0.5], colors="white", linewidths=1.2)
        ax.set_title(f"{case}\naxial slice {z} ({what})", fontsize=9)
        ax.axis("off")
    fig.colorbar(heat, ax=axes[0].tolist(), fraction=0.03, label="Grad-CAM attention (lesion)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--model", choices=("moe", "fullres"), default="moe")
    add_model_arguments(parser)
    parser.add_argument("--layer", default=None,
                        help="network layer (default: the last decoder block, conv_blocks_localization.<N>)")
    parser.add_argument("--backend", default="gcam", help="gcam (Grad-CAM) or gcampp (Grad-CAM++)")
    parser.add_argument("--disable-tta", action="store_true", help="no mirroring (8x faster in 3D)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)

    from nnunet.inference.attention_maps import BACKENDS

    if args.backend not in BACKENDS:
        raise WorkflowError(f"unknown BACKEND '{args.backend}'; choose one of {', '.join(BACKENDS)}")
    task = task_name(args.task)
    trainer_name = args.moe_trainer if args.model == "moe" else args.trainer
    folder = trained_model_dir("3d_fullres", task, trainer_name, args.plans, args.fold,
                               "make semi" if args.model == "moe" else "make baseline")
    check_trained_fold(folder, f"{trainer_name} fold {args.fold}")
    with tempfile.TemporaryDirectory(prefix="covidseg-inputs-") as staging:  # DICOM series as NIfTI
        inputs = collect_inputs(args.input, Path(staging))
        if not args.force:
            refuse_overwrite([c for c in inputs if any((args.output / (c + s)).exists() for s in OUTPUT_SUFFIXES)],
                             args.output)
        ensure_writable(args.output)
        write_maps(inputs, folder, trainer_name, args)


def write_maps(inputs, folder: Path, trainer_name: str, args) -> None:
    """Grad-CAM map, segmentation and overlay of every input into OUTPUT."""
    from nnunet.inference.attention_maps import (check_layer, default_layer, load_trainer, predict_attention,
                                                 predict_softmax, to_original_grid, write_like_input)
    from nnunet.inference.segmentation_export import save_segmentation_nifti_from_softmax

    trainer = load_trainer(str(folder.parent), args.fold)
    layer = args.layer or default_layer(trainer.network)
    try:
        check_layer(trainer.network, layer, trainer.patch_size)
    except ValueError as e:
        raise WorkflowError(f"LAYER: {e}") from e
    print(f"Grad-CAM ({args.backend}) of {trainer_name} fold {args.fold} at layer {layer}")
    for case, path in tqdm(inputs.items(), desc="attention maps", unit="case", disable=None):
        data, _, properties = trainer.preprocess_patient([str(path)])
        softmax = predict_softmax(trainer, data, do_mirroring=not args.disable_tta)
        segmentation_file = str(args.output / f"{case}_segmentation.nii.gz")
        save_segmentation_nifti_from_softmax(softmax, segmentation_file, properties, order=1, verbose=False)
        attention = np.clip(to_original_grid(predict_attention(trainer, data, layer, args.backend, LESION_LABEL,
                                                               not args.disable_tta), properties)[0], 0, 1)
        write_like_input(attention.astype(np.float32), properties, str(args.output / f"{case}_attention.nii.gz"))
        segmentation = sitk.GetArrayFromImage(sitk.ReadImage(segmentation_file)) == LESION_LABEL
        ct = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        plot_overlay(case, ct, attention, segmentation, args.output / f"{case}_overlay.png")
        inside = float((attention * segmentation).sum() / max(attention.sum(), 1e-8))
        tqdm.write(f"{case}: max attention {attention.max():.3f}, attention mass inside the predicted lesion "
                   f"{100 * inside:.1f}% (lesion {int(segmentation.sum())} voxels)")
        if not attention.any():
            tqdm.write(f"WARNING: {case}: the attention map is zero everywhere. {EMPTY_MAP_HINT}", file=sys.stderr)
    print(f"attention maps, segmentations and overlays of {len(inputs)} case(s) in {args.output}")


if __name__ == "__main__":
    main_guard(main)
