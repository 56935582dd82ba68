"""The steps of a training iteration that every semi-supervised trainer here shares (nnUNetTrainerV2_moe,
nnUNetTrainerV2_meanteacher): drawing the labelled and unlabelled batches, and the optimiser step with nnU-Net's
mixed precision and gradient clipping (as nnUNetTrainerV2.run_iteration does it)."""
from typing import Optional, Tuple

import torch

from nnunet.utilities.to_torch import maybe_to_torch, to_cuda

GRADIENT_CLIP = 12  # nnUNetTrainerV2's


def next_batches(trainer, data_generator, with_unlabeled: bool
                 ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(data, target, unlabelled data or None), on the GPU when there is one."""
    data_dict = next(data_generator)
    data, target = maybe_to_torch(data_dict['data']), maybe_to_torch(data_dict['target'])
    unlabeled = maybe_to_torch(next(trainer.unlabeled_gen)['data']) if with_unlabeled else None
    if torch.cuda.is_available():
        data, target = to_cuda(data), to_cuda(target)
        unlabeled = to_cuda(unlabeled) if unlabeled is not None else None
    return data, target, unlabeled


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
