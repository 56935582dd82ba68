"""Fixtures of every test: a small synthetic COVID-19-20 download, per-test nnU-Net folders; the tests under
tests/workflow/ are marked `slow` (their trained fixtures are in tests/workflow/conftest.py). Constants and helpers
are in tests/helpers.py."""
import os
from pathlib import Path

import pytest

# one data-augmentation process per generator: the tests run on 2 cores (read when nnU-Net is imported)
os.environ.setdefault("nnUNet_n_proc_DA", "1")

from covidseg.data.phantoms import write_download
from tests.helpers import TINY

WORKFLOW_TESTS = Path(__file__).parent / "workflow"


def pytest_collection_modifyitems(items):
    """Everything under tests/workflow/ trains or runs the workflow's commands: `make test-fast` leaves it out."""
    for item in items:
        if WORKFLOW_TESTS in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)


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
