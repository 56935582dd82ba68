"""Grad-CAM attention maps of a trained nnU-Net model (baseline Generic_UNet or Generic_UNet_MoE) with medcam.

As in the seed workflow, medcam's `inject` wraps the trained network so that its forward pass returns the
attention map of a layer for one class (the workspace asks for the lesion) instead of the logits; here the
wrapped network then goes through nnU-Net's own preprocessing and sliding-window prediction
(Gaussian-weighted stitching, optional mirroring), and the stitched map is resampled back to the original
grid the way nnU-Net resamples a softmax (same resampling, same crop box, same spacing/origin/direction).
medcam's own files are never written or used: they have reversed axes and an identity affine.

Nothing is patched globally: `inject` returns a shallow copy of the network, which is only used while
the maps are computed; the trainer gets its own network back afterwards.

Layers: a Grad-CAM layer must run exactly once per forward pass (medcam keeps the last activation of a
layer); in both networks every block-level layer does. In the MoE the decoder blocks run on the P = B*k
(sample, chosen expert) pairs, so their maps come out per pair; they are summed per sample (each pair's
gradient already carries its gate weight), and the map explains the gate-weighted output.
See default_layer for the default and why.
"""
import copy
import os
from typing import Dict, List, Tuple

import numpy as np
import SimpleITK as sitk
import torch

from nnunet.network_architecture.generic_UNet_MoE import Generic_UNet_MoE
from nnunet.preprocessing.preprocessing import get_do_separate_z, get_lowres_axis, resample_data_or_seg
from nnunet.training.model_restore import load_model_and_checkpoint_files

BACKENDS = ("gcam", "gcampp")


def default_layer(network) -> str:
    """The default Grad-CAM layer: the last decoder block, `conv_blocks_localization.<number of poolings - 1>`.

    It sits at full resolution, right before the segmentation head, so its map outlines what the model
    segments; in the MoE it is shared by all experts, and its gradient comes from the gate-weighted output.
    On the CPU test models the mean attention inside the synthetic lesions is far above that far from them
    at this layer for both networks, while the encoder blocks related to the lesions on some models only.
    """
    return f"conv_blocks_localization.{len(network.conv_blocks_localization) - 1}"


def load_trainer(model_folder: str, fold, checkpoint: str = "model_final_checkpoint"):
    """The trainer of `model_folder` (<trainer>__<plans>) with the network of one fold loaded, in eval mode."""
    fold = fold if fold == "all" else int(fold)
    trainer, params = load_model_and_checkpoint_files(model_folder, folds=[fold], mixed_precision=False,
                                                      checkpoint_name=checkpoint)
    trainer.load_checkpoint_ram(params[0], False)
    # a model trained under torchrun restores as nnU-Net's nnUNetTrainerV2_DDP, whose network is wrapped in
    # DistributedDataParallel: the maps hook the network's own layers
    trainer.network = getattr(trainer.network, "module", trainer.network)
    trainer.network.eval()
    return trainer


def single_call_layers(network, input_shape: Tuple[int, ...]) -> List[str]:
    """Block-level modules that run exactly once per forward pass and give a spatial feature map."""
    calls: Dict[str, int] = {}
    shapes: Dict[str, int] = {}
    handles = []
    for name, module in network.named_modules():
        if name and name.count(".") <= 1:
            def hook(_module, _inputs, output, name=name):
                calls[name] = calls.get(name, 0) + 1
                shapes[name] = output.dim() if isinstance(output, torch.Tensor) else -1
            handles.append(module.register_forward_hook(hook))
    do_ds = network.do_ds
    try:
        network.do_ds = False
        device = next(network.parameters()).device
        with torch.no_grad():
            network(torch.zeros((1, 1) + tuple(input_shape), device=device))
    finally:
        network.do_ds = do_ds
        for handle in handles:
            handle.remove()
    return [n for n, c in calls.items() if c == 1 and shapes[n] == len(input_shape) + 2]


def check_layer(network, layer: str, patch_size) -> None:
    valid = single_call_layers(network, tuple(patch_size))
    if layer not in valid:
        raise ValueError(f"unknown or unusable Grad-CAM layer '{layer}'; valid layers: {', '.join(valid)}")


def class_logit_network(network, label: int):
    """Shallow copy of `network` (same modules and weights) whose forward returns only the logit of class `label`.

    medcam 0.1.22's Grad-CAM++ weighs gradients with the masked logits and fails when the output has more
    channels than one; with a single output channel both backends work, and Grad-CAM backpropagates
    exactly what `label` on the full output would (that class's logits).
    """
    single = copy.copy(network)
    single.forward = lambda x: network.forward(x)[:, label:label + 1]
    return single


def per_sample_maps(network, layer: str, maps: torch.Tensor) -> torch.Tensor:
    """Maps of an MoE decoder layer come per (sample, chosen expert) pair: sum them per sample."""
    if isinstance(network, Generic_UNet_MoE) and network.runs_on_pairs(layer):
        return network.last_routing.by_sample(maps).sum(1)
    return maps


def attention_network(network, layer: str, backend: str, label: int):
    """medcam-injected shallow copy of `network` whose forward returns the attention map of class `label`
    (B, 1, ...)."""
    from medcam import medcam
    if backend not in BACKENDS:
        raise ValueError(f"unknown Grad-CAM backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    injected = medcam.inject(class_logit_network(network, label), backend=backend, layer=layer, label=0, replace=True)
    injected.inference_apply_nonlin = lambda x: x  # nnU-Net would softmax the 1-channel map otherwise
    # medcam min-max normalises every map it makes, here every sliding-window tile on its own, which would
    # stretch a lesion-free tile to full brightness. Its backend instance of this copy (and only that
    # instance) keeps the raw ReLU'd Grad-CAM values instead; predict_attention normalises the whole volume.
    injected.medcam_dict['model_backend']._normalize_per_channel = lambda attention_map: attention_map
    per_sample = copy.copy(injected)
    per_sample.forward = lambda x: per_sample_maps(network, layer, injected.forward(x))
    return per_sample


def predict_softmax(trainer, data: np.ndarray, do_mirroring: bool) -> np.ndarray:
    """nnU-Net's sliding-window prediction of preprocessed data; returns (C, ...) in the original axis order."""
    _, softmax = trainer.predict_preprocessed_data_return_seg_and_softmax(
        data, do_mirroring=do_mirroring, mirror_axes=trainer.data_aug_params['mirror_axes'], use_sliding_window=True,
        step_size=0.5, use_gaussian=True, all_in_gpu=False, verbose=False, mixed_precision=False)
    return softmax.transpose([0] + [i + 1 for i in trainer.plans['transpose_backward']])


def predict_attention(trainer, data: np.ndarray, layer: str, backend: str, label: int,
                      do_mirroring: bool) -> np.ndarray:
    """The stitched attention map (1, ...) of preprocessed data, in the original axis order, scaled to [0, 1]
    by its maximum over the whole volume."""
    network, do_ds = trainer.network, trainer.network.do_ds
    network.do_ds = False  # the copies call this network's forward: full-resolution output only
    trainer.network = attention_network(network, layer, backend, label)
    try:
        stitched = predict_softmax(trainer, data, do_mirroring)
    finally:
        trainer.network, network.do_ds = network, do_ds
    attention = np.maximum(stitched[:1], 0)
    return attention / max(float(attention.max()), 1e-12)


def to_original_grid(volume: np.ndarray, properties: dict, order: int = 1) -> np.ndarray:
    """(C, ...) in the preprocessed grid -> (C, ...) in the original image grid, like nnU-Net's softmax export."""
    shape_after_cropping = properties['size_after_cropping']
    if tuple(volume.shape[1:]) != tuple(shape_after_cropping):
        if get_do_separate_z(properties['original_spacing']):
            separate_z, axis = True, get_lowres_axis(properties['original_spacing'])
        elif get_do_separate_z(properties['spacing_after_resampling']):
            separate_z, axis = True, get_lowres_axis(properties['spacing_after_resampling'])
        else:
            separate_z, axis = False, None
        volume = resample_data_or_seg(volume, shape_after_cropping, is_seg=False, axis=axis, order=order,
                                      do_separate_z=separate_z, cval=0, order_z=0)
    full = np.zeros((volume.shape[0],) + tuple(properties['original_size_of_raw_data']), dtype=np.float32)
    (z0, _), (y0, _), (x0, _) = properties['crop_bbox']
    full[:, z0:z0 + volume.shape[1], y0:y0 + volume.shape[2], x0:x0 + volume.shape[3]] = volume
    return full


def write_like_input(array: np.ndarray, properties: dict, path: str) -> None:
    """Write a (z, y, x) array with the input image's spacing, origin and direction (nnU-Net's properties)."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(properties['itk_spacing'])
    image.SetOrigin(properties['itk_origin'])
    image.SetDirection(properties['itk_direction'])
    tmp = path + ".part.nii.gz"
    sitk.WriteImage(image, tmp)
    os.replace(tmp, path)
