"""What the tests share besides fixtures: phantom sizes, the tiny workflow's names, running a command (in this
process or as `python -m covidseg.<command>`), and tiny Generic_UNet / Generic_UNet_MoE networks in 2D and 3D."""
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from covidseg.core.errors import main_guard
from covidseg.data.phantoms import PhantomSettings

REPO = Path(__file__).resolve().parents[1]

# small phantoms: fast to write, convert and preprocess on a CPU
TINY = PhantomSettings(xy_range=(56, 64), z_range=(18, 22), spacing_xy_range=(4.0, 4.6))
# large enough against the demo planner's patch for nnU-Net to plan a 3d_lowres stage
WORKFLOW_PHANTOMS = PhantomSettings(xy_range=(100, 108), z_range=(32, 36), spacing_xy_range=(2.9, 3.1))
TASK, FOLD, PLANS, TRAINER, MOE_TRAINER = 200, 4, "nnUNetPlans_CPUDemo", "nnUNetTrainerV2", "nnUNetTrainerV2_moe"
TASK_NAME = "Task200_COVID_19_20"
# the baseline's budget (both configurations): long enough for 3d_fullres to find the lesions
FULLRES_EPOCHS, BASELINE_ITERATIONS = 24, 16


# ------------------------------------------------------------------ commands

def exit_status(main: Callable[[Optional[Sequence[str]]], None], *args: str) -> int:
    """Run a command's main in this process as `python -m covidseg.<command>` would; returns its exit status."""
    try:
        main_guard(main, [str(a) for a in args])
    except SystemExit as e:
        return e.code
    return 0


def run_env(**extra) -> dict:
    """Environment for a subprocess: this one, plus extra variables (as strings)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # nnU-Net's commands
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_command(command: str, *args: str, env: dict, expect_ok: bool = True) -> subprocess.CompletedProcess:
    """`python -m covidseg.<command> args...` in a subprocess."""
    result = subprocess.run([sys.executable, "-m", f"covidseg.{command}", *map(str, args)], env=env,
                            capture_output=True, text=True)
    if expect_ok:
        assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


class Workflow:
    """Folders and environment of one tiny run of the workflow."""

    def __init__(self, root: Path):
        self.root = root
        self.env = run_env(nnUNet_raw_data_base=root / "raw", nnUNet_preprocessed=root / "preprocessed",
                           RESULTS_FOLDER=root / "results", nnUNet_max_num_epochs=2, nnUNet_num_batches_per_epoch=3,
                           nnUNet_num_val_batches_per_epoch=1, nnUNet_n_proc_DA=1, nnUNet_def_n_proc=2,
                           CONSISTENCY_WARMUP_EPOCHS=0, CONSISTENCY_RAMPUP_EPOCHS=1)
        self.outputs = {}

    @property
    def raw_task(self) -> Path:
        return self.root / "raw" / "nnUNet_raw_data" / TASK_NAME

    @property
    def preprocessed_task(self) -> Path:
        return self.root / "preprocessed" / TASK_NAME

    def model(self, configuration: str, trainer: str = TRAINER) -> Path:
        """nnU-Net's folder of a trained configuration:
        RESULTS_FOLDER/nnUNet/<config>/<task>/<trainer>__<plans>/fold_F."""
        return self.root / "results" / "nnUNet" / configuration / TASK_NAME / f"{trainer}__{PLANS}" / f"fold_{FOLD}"

    def copy_model(self, configuration: str, results: Path, trainer: str = TRAINER) -> Path:
        """A copy of a trained model (its trainer folder, without predictions) under another RESULTS_FOLDER; the copy's
        fold folder."""
        import shutil
        fold = self.model(configuration, trainer)
        copy = results / fold.relative_to(self.root / "results")
        shutil.copytree(fold.parent, copy.parent, ignore=shutil.ignore_patterns("validation_raw*", "test_predictions",
                                                                                "external_predictions"))
        return copy

    def command(self, name: str, *args: str, expect_ok: bool = True, env_extra: Optional[dict] = None
                ) -> subprocess.CompletedProcess:
        return run_command(name, *args, env=dict(self.env, **(env_extra or {})), expect_ok=expect_ok)

    def workflow_args(self):
        return ["--task", str(TASK), "--fold", str(FOLD), "--plans", PLANS, "--trainer", TRAINER]


# ------------------------------------------------------------------ tiny networks

SHAPES = {2: (32, 32), 3: (8, 32, 32)}


def tiny_plan(dim: int, num_pool: int = 3) -> dict:
    """The network settings of a tiny plan: 1 input channel, 4 base features, 2 classes."""
    pooling = [[1, 2, 2] if dim == 3 and i == 0 else [2] * dim for i in range(num_pool)]
    return dict(num_input_channels=1, base_num_features=4, num_classes=2, pool_op_kernel_sizes=pooling,
                conv_kernel_sizes=[[3] * dim] * (num_pool + 1))


def tiny_unet(dim: int, num_pool: int = 3):
    from nnunet.network_architecture.unet_factory import generic_unet
    torch.manual_seed(0)
    return generic_unet(**tiny_plan(dim, num_pool))


def tiny_moe(dim: int, **moe):
    from nnunet.network_architecture.unet_factory import generic_unet_moe
    torch.manual_seed(1)
    return generic_unet_moe(**tiny_plan(dim), **moe)


def batch(dim: int, n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn((n, 1) + SHAPES[dim], generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ files that run code when loaded

class CodePayload:
    """Pickles to a call of os.system that creates `marker`: what a tampered model file does when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_payload_pickle(path: Path, marker: Path, inside: Optional[dict] = None) -> None:
    """A .pkl that looks like `inside` (a dict of nnU-Net values) and runs a command when unpickled."""
    import pickle
    path.write_bytes(pickle.dumps(dict(inside or {}, payload=CodePayload(marker))))


def write_payload_checkpoint(path: Path, marker: Path, inside: Optional[dict] = None) -> None:
    """A torch checkpoint (.model) with its usual entries and a value that runs a command when unpickled."""
    torch.save(dict(inside or {"epoch": 1, "state_dict": {}}, payload=CodePayload(marker)), path)


# ------------------------------------------------------------------ DICOM series, as scanners export them

def write_dicom_series(folder: Path, image, series_uid: str, series_number: int = 2, modality: str = "CT",
                       image_type: str = "ORIGINAL\\PRIMARY\\AXIAL", extra_tags: Optional[dict] = None,
                       prefix: str = "IM") -> list:
    """One DICOM file per slice of a SimpleITK int16 image (its spacing, origin and direction in the headers),
    written by SimpleITK as in its DicomSeriesFromArray example; the files, in slice order."""
    import SimpleITK as sitk
    from covidseg.data.dicom_series import locale_kept
    folder.mkdir(parents=True, exist_ok=True)
    direction = image.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                   direction[1], direction[4], direction[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for z in range(image.GetDepth()):
        piece = image[:, :, z]
        tags = {"0008|0060": modality, "0008|0008": image_type, "0020|000d": series_uid.rsplit(".", 1)[0] + ".1",
                "0020|000e": series_uid, "0020|0011": str(series_number), "0010|0020": "PATIENT1",
                "0020|0037": orientation, "0018|0050": str(image.GetSpacing()[2]), "0020|0013": str(z + 1),
                "0008|0018": f"{series_uid}.{z + 1}",
                "0020|0032": "\\".join(f"{v:.4f}" for v in image.TransformIndexToPhysicalPoint((0, 0, z)))}
        tags.update(extra_tags or {})
        for tag, value in tags.items():
            piece.SetMetaData(tag, value)
        path = folder / f"{prefix}{z + 1:04d}.dcm"
        writer.SetFileName(str(path))
        with locale_kept():  # GDCM's writer sets the process locale to "C"
            writer.Execute(piece)
        files.append(path)
    return files


def ct_volume(shape=(12, 24, 20), spacing=(0.8, 0.7, 2.5), origin=(-10.0, 20.0, -300.0),
              direction=(1, 0, 0, 0, -1, 0, 0, 0, 1), seed: int = 0):
    """A small int16 CT-like SimpleITK image (z, y, x shape) with non-trivial geometry."""
    import numpy as np
    import SimpleITK as sitk
    voxels = np.random.default_rng(seed).integers(-1000, 400, size=shape).astype(np.int16)
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def leave_process_group() -> None:
    """The end of a spawned test rank: wait for every rank, then destroy the group together. A rank that destroys its
    gloo group while its peer still uses the connection can abort in gloo's teardown ('terminate called without an
    active exception', SIGABRT), seen once in a CI run of the DDP step test."""
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
