"""What patches/ gives the pinned nnU-Net: each test here fails on the unpatched 1.6.6 tree (the patch headers
name them). Tests about the CPU path hide CUDA, so they check the same thing with or without a GPU."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet.training.network_training.network_trainer import NetworkTrainer
from nnunet.utilities.to_torch import to_cuda
from tests.helpers import tiny_plan, write_payload_checkpoint, write_payload_pickle


@pytest.fixture
def no_cuda(monkeypatch):
    """This process sees no GPU, as on a CPU-only machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def tiny_cpu_unet(dim: int):
    from nnunet.network_architecture.unet_factory import generic_unet
    net = generic_unet(**tiny_plan(dim, num_pool=2), deep_supervision=False)
    net.inference_apply_nonlin = lambda x: torch.softmax(x, 1)
    return net.eval()


# ------------------------------------------------------------------ 0001 CPU fallback

@pytest.mark.parametrize("dim", [2, 3])
def test_get_device_reports_cpu(dim):
    assert tiny_cpu_unet(dim).get_device() == "cpu"


@pytest.mark.parametrize("dim,patch", [(2, (16, 16)), (3, (8, 16, 16))])
def test_sliding_window_prediction_runs_on_the_cpu(dim, patch):
    """A network on the CPU predicts there, whether or not a GPU exists."""
    net = tiny_cpu_unet(dim)
    image = np.random.RandomState(0).randn(1, 10, 24, 20).astype(np.float32)
    seg, softmax = net.predict_3D(image, do_mirroring=True, mirror_axes=tuple(range(dim)), use_sliding_window=True,
                                  step_size=0.5, patch_size=patch, use_gaussian=True)
    assert seg.shape == (10, 24, 20)
    assert softmax.shape == (2, 10, 24, 20)
    assert np.allclose(softmax.sum(0), 1, atol=1e-4)


def test_to_cuda_is_a_no_op_without_cuda(no_cuda):
    tensor = torch.ones(2)
    assert to_cuda(tensor) is tensor
    assert to_cuda([tensor], gpu_id="cpu")[0] is tensor


def test_fp16_is_switched_off_without_cuda(no_cuda, tmp_path):
    trainer = NetworkTrainer(deterministic=False, fp16=True)
    trainer.output_folder = str(tmp_path)
    trainer._maybe_init_amp()
    assert trainer.fp16 is False and trainer.amp_grad_scaler is None
    log = next(tmp_path.glob("training_log_*.txt")).read_text()
    assert "mixed precision (fp16) is disabled" in log


# ------------------------------------------------------------------ 0002 torch>=2.6 checkpoint loading

def test_nnunet_loads_its_own_checkpoint_with_numpy_values(tmp_path):
    """nnU-Net's checkpoints hold numpy values (training curves, best epoch); torch>=2.6's weights_only default
    refuses them."""
    checkpoint = tmp_path / "model_latest.model"
    torch.save({"epoch": 3, "state_dict": {"w": torch.ones(2)},
                "plot_stuff": ([np.float64(0.5)], [np.float64(0.4)], [], [np.float64(0.1)]),
                "best_stuff": (np.int64(2), np.float64(0.1), np.float64(0.1), np.float64(0.1))}, checkpoint)
    trainer = NetworkTrainer(deterministic=False, fp16=False)
    trainer.output_folder, trainer.was_initialized = str(tmp_path), True
    loaded = {}
    trainer.load_checkpoint_ram = lambda saved, train=True: loaded.update(saved)
    trainer.load_checkpoint(str(checkpoint), train=False)
    assert loaded["epoch"] == 3 and loaded["best_stuff"][0] == 2


# ------------------------------------------------------------------ 0003 training length from the environment

def test_training_length_comes_from_the_environment(monkeypatch):
    from nnunet.run.run_training import apply_training_length_from_environment
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
    from nnunet.run.run_training import apply_training_length_from_environment
    monkeypatch.setenv("nnUNet_max_num_epochs", value)
    with pytest.raises(ValueError, match="nnUNet_max_num_epochs must be a positive integer"):
        apply_training_length_from_environment(NetworkTrainer(deterministic=False, fp16=False))


# ------------------------------------------------------------------ 0006 --disable_validation_inference

def test_nnunet_train_can_skip_the_validation_inference():
    nnunet_train = shutil.which("nnUNet_train", path=str(Path(sys.executable).parent))
    result = subprocess.run([nnunet_train, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--disable_validation_inference" in result.stdout


# ------------------------------------------------------------------ 0007 atomic checkpoints, nnUNet_save_every

def checkpointing_trainer(tmp_path: Path, dim: int):
    """An nnUNetTrainer with just what save_checkpoint needs: a tiny network, its optimizer, plans."""
    from nnunet.training.network_training.nnUNetTrainer import nnUNetTrainer
    trainer = nnUNetTrainer(str(tmp_path / "plans.pkl"), 0, output_folder=str(tmp_path), fp16=False)
    trainer.network = tiny_cpu_unet(dim)
    trainer.optimizer = torch.optim.SGD(trainer.network.parameters(), lr=0.01, momentum=0.99)
    trainer.plans = {"dim": dim}
    return trainer


def crash_half_way(real_write):
    """A writer that puts half of its bytes where the real one would, then fails as a full disk does."""
    import io
    import os

    def write(obj, target, *args, **kwargs):
        buffer = io.BytesIO()
        real_write(obj, buffer, *args, **kwargs)
        half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        if isinstance(target, (str, os.PathLike)):
            with open(target, "wb") as f:
                f.write(half)
        else:
            target.write(half)
        raise OSError(28, "No space left on device")
    return write


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("crashing", ["model", "pkl"])
def test_a_crash_while_saving_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch, dim, crashing):
    import pickle
    trainer = checkpointing_trainer(tmp_path, dim)
    fname = str(tmp_path / "model_latest.model")
    trainer.epoch = 3
    trainer.save_checkpoint(fname)
    before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    with torch.no_grad():
        for p in trainer.network.parameters():
            p.add_(1.0)
    trainer.epoch = 4
    if crashing == "model":
        monkeypatch.setattr(torch, "save", crash_half_way(torch.save))
    else:
        monkeypatch.setattr(pickle, "dump", crash_half_way(pickle.dump))
    with pytest.raises(OSError, match="No space left"):
        trainer.save_checkpoint(fname)
    monkeypatch.undo()

    saved = torch.load(fname, map_location="cpu", weights_only=False)  # loads: never half-written
    if crashing == "model":  # the previous pair, untouched
        assert saved["epoch"] == 4
        assert all(torch.equal(saved["state_dict"][k], v) for k, v in before.items())
    else:  # the new .model is complete; the .pkl (plans and init args, the same every epoch) is the previous one
        assert saved["epoch"] == 5
    with open(fname + ".pkl", "rb") as f:
        assert pickle.load(f)["plans"] == {"dim": dim}
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_checkpoints_are_saved_every_5_epochs_or_as_nnunet_save_every_says(monkeypatch):
    from nnunet.run.run_training import apply_training_length_from_environment
    assert NetworkTrainer(deterministic=False, fp16=False).save_every == 5
    trainer = NetworkTrainer(deterministic=False, fp16=False)
    monkeypatch.setenv("nnUNet_save_every", "1")
    apply_training_length_from_environment(trainer)
    assert trainer.save_every == 1
    monkeypatch.setenv("nnUNet_save_every", "0")
    with pytest.raises(ValueError, match="nnUNet_save_every must be a positive integer"):
        apply_training_length_from_environment(trainer)


# ------------------------------------------------------------------ 0009 trainer settings by name, settings.json

def test_the_checkpoint_pkl_holds_the_trainer_settings_by_name(tmp_path, monkeypatch):
    import pickle
    from nnunet.training.network_training.nnUNetTrainerV2_finetune import nnUNetTrainerV2_finetune
    monkeypatch.setenv("FINETUNE_LR", "0.003")
    trainer = nnUNetTrainerV2_finetune(str(tmp_path / "plans.pkl"), 0, output_folder=str(tmp_path), fp16=False)
    trainer.network = tiny_cpu_unet(3)
    trainer.optimizer = torch.optim.SGD(trainer.network.parameters(), lr=0.01)
    trainer.plans = {"dim": 3}
    trainer.save_checkpoint(str(tmp_path / "model_latest.model"))
    with open(tmp_path / "model_latest.model.pkl", "rb") as f:
        info = pickle.load(f)
    assert info["settings"] == {"finetune": {"initial_lr": 0.003}}
    assert len(info["init"]) == 9  # nnU-Net's positional arguments, nothing by position beyond them


def test_restore_model_gives_the_settings_back_by_name(tmp_path, monkeypatch):
    import pickle
    from nnunet.training.model_restore import restore_model
    from nnunet.training.network_training.nnUNetTrainerV2_finetune import nnUNetTrainerV2_finetune
    monkeypatch.setattr(nnUNetTrainerV2_finetune, "process_plans", lambda self, plans: None)
    info = {"init": (str(tmp_path / "plans.pkl"), 0, str(tmp_path), None, True, None, True, True, False),
            "name": "nnUNetTrainerV2_finetune", "plans": {}, "settings": {"finetune": {"initial_lr": 0.003}}}
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(info))
    monkeypatch.setenv("FINETUNE_LR", "0.02")  # the stored setting wins over the environment
    assert restore_model(str(tmp_path / "model.pkl")).initial_lr == 0.003
    del info["settings"]  # a .pkl written before settings were stored: the trainer reads its environment
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(info))
    assert restore_model(str(tmp_path / "model.pkl")).initial_lr == 0.02


# ------------------------------------------------------------------ 0011 safe loading

def test_restore_model_refuses_a_pkl_that_runs_code(tmp_path):
    from nnunet.training.model_restore import restore_model
    marker = tmp_path / "ran"
    pkl = tmp_path / "model_final_checkpoint.model.pkl"
    write_payload_pickle(pkl, marker, {"init": (), "name": "nnUNetTrainerV2", "plans": {}})
    with pytest.raises(Exception) as refused:
        restore_model(str(pkl))
    assert not marker.exists(), "loading the .pkl ran its command"
    assert f"refused to load {pkl}: it asks for the global 'posix.system'" in str(refused.value)


@pytest.mark.parametrize("name", ["os", "load_pickle", "nnUNetTrainer.__init__", 3])
def test_restore_model_loads_only_a_trainer_class_of_nnunet_training(tmp_path, name):
    """The .pkl names the trainer; a name that finds a module or a function under nnunet.training is refused."""
    import pickle
    from nnunet.training.model_restore import restore_model
    pkl = tmp_path / "model.pkl"
    pkl.write_bytes(pickle.dumps({"init": (), "name": name, "plans": {}}))
    with pytest.raises(RuntimeError, match="refusing to load it"):
        restore_model(str(pkl))


def test_load_pretrained_weights_refuses_a_checkpoint_that_runs_code(tmp_path):
    from nnunet.run.load_pretrained_weights import load_pretrained_weights
    marker = tmp_path / "ran"
    checkpoint = tmp_path / "model_final_checkpoint.model"
    write_payload_checkpoint(checkpoint, marker, {"state_dict": tiny_cpu_unet(3).state_dict()})
    with pytest.raises(Exception) as refused:
        load_pretrained_weights(tiny_cpu_unet(3), str(checkpoint))
    assert not marker.exists(), "loading the checkpoint ran its command"
    assert f"refused to load {checkpoint}: it asks for the global 'posix.system'" in str(refused.value)


def zip_with(path: Path, members) -> Path:
    """A zip of (name, bytes, unix mode) members."""
    import zipfile
    with zipfile.ZipFile(path, "w") as archive:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.create_system, info.external_attr = 3, mode << 16
            archive.writestr(info, data)
    return path


MODEL_FILE = ("3d_fullres/Task001_X/nnUNetTrainerV2__nnUNetPlansv2.1/plans.pkl", b"plans", 0o100644)


@pytest.mark.parametrize("bad, why", [
    (("../../outside.txt", b"x", 0o100644), "a '..' path component"),
    (("/tmp/absolute.txt", b"x", 0o100644), "an absolute path"),
    (("3d_fullres/link", b"/etc/passwd", 0o120777), "a symlink"),
    (("3d_fullres/fifo", b"", 0o010644), "not a regular file"),
], ids=["dotdot", "absolute", "symlink", "fifo"])
def test_nnunet_installs_a_model_zip_only_when_every_member_is_safe(tmp_path, monkeypatch, bad, why):
    """nnUNet_install_pretrained_model_from_zip called `unzip -o`, which restores symlinks; now every member is
    checked first and with one unsafe member nothing is extracted."""
    from nnunet.inference.pretrained_models import download_pretrained_model
    results = tmp_path / "results" / "nnUNet"
    monkeypatch.setattr(download_pretrained_model, "network_training_output_dir", str(results))
    unsafe = zip_with(tmp_path / "model.zip", [MODEL_FILE, bad])
    with pytest.raises(ValueError, match=f"refused to extract {unsafe}, nothing was extracted:\n  - .*: {why}"):
        download_pretrained_model.install_model_from_zip_file(str(unsafe))
    assert not results.exists() and not (tmp_path / "outside.txt").exists()
    safe = zip_with(tmp_path / "safe.zip", [MODEL_FILE])
    download_pretrained_model.install_model_from_zip_file(str(safe))
    assert (results / MODEL_FILE[0]).read_bytes() == b"plans"
