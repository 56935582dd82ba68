"""Behaviour that patches/ gives the pinned nnU-Net on a CPU-only torch."""
import numpy as np
import pytest
import torch
from torch import nn

from nnunet.network_architecture.generic_UNet import Generic_UNet
from nnunet.network_architecture.initialization import InitWeights_He
from nnunet.run.run_training import apply_training_length_from_environment
from nnunet.training.network_training.network_trainer import NetworkTrainer
from nnunet.utilities.to_torch import to_cuda

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")


def tiny_unet(dim: int) -> Generic_UNet:
    conv, norm, drop = (nn.Conv3d, nn.InstanceNorm3d, nn.Dropout3d) if dim == 3 else \
        (nn.Conv2d, nn.InstanceNorm2d, nn.Dropout2d)
    pool = [[2] * dim] * 2
    kernels = [[3] * dim] * 3
    net = Generic_UNet(1, 4, 2, 2, 2, 2, conv, norm, {"eps": 1e-5, "affine": True}, drop, {"p": 0, "inplace": True},
                       nn.LeakyReLU, {"negative_slope": 1e-2, "inplace": True}, True, False, lambda x: x,
                       InitWeights_He(1e-2), pool, kernels, False, True, True)
    net.inference_apply_nonlin = lambda x: torch.softmax(x, 1)
    net.do_ds = False
    return net.eval()


def test_get_device_reports_cpu():
    assert tiny_unet(3).get_device() == "cpu"


@pytest.mark.parametrize("dim,patch", [(2, (16, 16)), (3, (8, 16, 16))])
def test_sliding_window_prediction_runs_on_the_cpu(dim, patch):
    net = tiny_unet(dim)
    image = np.random.RandomState(0).randn(1, 10, 24, 20).astype(np.float32)
    seg, softmax = net.predict_3D(image, do_mirroring=True, mirror_axes=tuple(range(dim)), use_sliding_window=True,
                                  step_size=0.5, patch_size=patch, use_gaussian=True)
    assert seg.shape == (10, 24, 20)
    assert softmax.shape == (2, 10, 24, 20)
    assert np.allclose(softmax.sum(0), 1, atol=1e-4)


def test_to_cuda_is_a_no_op_without_cuda():
    tensor = torch.ones(2)
    assert to_cuda(tensor) is tensor
    assert to_cuda([tensor], gpu_id="cpu")[0] is tensor


def test_fp16_is_switched_off_without_cuda(tmp_path):
    trainer = NetworkTrainer(deterministic=False, fp16=True)
    trainer.output_folder = str(tmp_path)
    trainer._maybe_init_amp()
    assert trainer.fp16 is False and trainer.amp_grad_scaler is None
    log = next(tmp_path.glob("training_log_*.txt")).read_text()
    assert "mixed precision (fp16) is disabled" in log


def test_training_length_comes_from_the_environment(monkeypatch):
    trainer = NetworkTrainer(deterministic=False, fp16=False)
    defaults = (trainer.max_num_epochs, trainer.num_batches_per_epoch, trainer.num_val_batches_per_epoch)
    monkeypatch.setenv("nnUNet_max_num_epochs", "3")
    monkeypatch.setenv("nnUNet_num_batches_per_epoch", "7")
    monkeypatch.setenv("nnUNet_num_val_batches_per_epoch", "")
    apply_training_length_from_environment(trainer)
    assert (trainer.max_num_epochs, trainer.num_batches_per_epoch) == (3, 7)
    assert trainer.num_val_batches_per_epoch == defaults[2]


@pytest.mark.parametrize("value", ["0", "-2", "ten", "1.5"])
def test_a_bad_training_length_is_refused(monkeypatch, value):
    monkeypatch.setenv("nnUNet_max_num_epochs", value)
    with pytest.raises(ValueError, match="nnUNet_max_num_epochs must be a positive integer"):
        apply_training_length_from_environment(NetworkTrainer(deterministic=False, fp16=False))
