"""Shared fixtures: a small synthetic COVID-19-20 download and per-test nnU-Net folders."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
sys.path.insert(0, str(SCRIPTS))

from make_synthetic_covid import PhantomSettings, write_download  # noqa: E402

# small phantoms: fast to write, convert and preprocess on a CPU
TINY = PhantomSettings(xy_range=(56, 64), z_range=(18, 22), spacing_xy_range=(4.0, 4.6))


@pytest.fixture(scope="session")
def synthetic_download(tmp_path_factory) -> Path:
    """A read-only synthetic download: 8 train cases, 2 validation cases."""
    root = tmp_path_factory.mktemp("download")
    write_download(root, n_train=8, n_validation=2, seed=1, settings=TINY)
    return root


@pytest.fixture
def nnunet_folders(tmp_path, monkeypatch) -> dict:
    """Point nnU-Net's three environment variables at empty folders of this test."""
    folders = {"nnUNet_raw_data_base": tmp_path / "raw", "nnUNet_preprocessed": tmp_path / "preprocessed",
               "RESULTS_FOLDER": tmp_path / "results"}
    for variable, folder in folders.items():
        folder.mkdir()
        monkeypatch.setenv(variable, str(folder))
    return folders


def run_env(**extra) -> dict:
    """Environment for a subprocess: this one, plus extra variables (as strings)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # nnU-Net's commands
    env.update({k: str(v) for k, v in extra.items()})
    return env
