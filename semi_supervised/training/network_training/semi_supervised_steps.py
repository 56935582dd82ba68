"""The steps of a training iteration that every semi-supervised trainer here shares (nnUNetTrainerV2_moe,
nnUNetTrainerV2_meanteacher): drawing the labelled and unlabelled batches, and the optimiser step with nnU-Net's
mixed precision and gradient clipping (as nnUNetTrainerV2.run_iteration does it)."""
from typing import List, NamedTuple, Optional, Tuple

import torch

from nnunet.utilities.to_torch import maybe_to_torch, to_cuda

GRADIENT_CLIP = 12  # nnUNetTrainerV2's


class Batches(NamedTuple):
    data: torch.Tensor
    target: torch.Tensor
    unlabeled: Optional[torch.Tensor]
    unlabeled_keys: List[str]  # the unlabelled batch's cases, in its order (empty without one)
    keys: Tuple[str, ...] = ()  # the labelled batch's cases, in its order


def next_batches(trainer, data_generator, with_unlabeled: bool) -> Batches:
    """The labelled batch and, when asked for, an unlabelled one, on the GPU when there is one."""
    data_dict = next(data_generator)
    data, target = maybe_to_torch(data_dict['data']), maybe_to_torch(data_dict['target'])
    unlabeled, keys = None, []
    if with_unlabeled:
        unlabeled_dict = next(trainer.unlabeled_gen)
        unlabeled, keys = maybe_to_torch(unlabeled_dict['data']), [str(k) for k in unlabeled_dict.get('keys', [])]
    if torch.cuda.is_available():
        data, target = to_cuda(data), to_cuda(target)
        unlabeled = to_cuda(unlabeled) if unlabeled is not None else None
    return Batches(data, target, unlabeled, keys, tuple(str(k) for k in data_dict.get('keys', [])))


def optimizer_step(trainer, loss: torch.Tensor) -> None:
    """Backward pass, gradient clipping and SGD step, through the grad scaler when fp16 is on."""
    if trainer.fp16:
        trainer.amp_grad_scaler.scale(loss).backward()
        trainer.amp_grad_scaler.unscale_(trainer.optimizer)
        torch.nn.utils.clip_grad_norm_(trainer.network.parameters(), GRADIENT_CLIP)
        trainer.amp_grad_scaler.step(trainer.optimizer)
        trainer.amp_grad_scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.network.parameters(), GRADIENT_CLIP)
        trainer.optimizer.step()
