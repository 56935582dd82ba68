"""scripts/sync_overlay.py: the overlay lands in nnunet/, stale copies go, upstream files are never overwritten."""
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SYNC = REPO / "scripts" / "sync_overlay.py"
MANIFEST_NAME = ".semi_supervised_overlay"


def sync(src: Path, dst: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SYNC), "--src", str(src), "--dst", str(dst)], capture_output=True,
                          text=True)


@pytest.fixture
def trees(tmp_path):
    src, dst = tmp_path / "semi_supervised", tmp_path / "nnunet"
    (src / "training").mkdir(parents=True)
    (dst / "training").mkdir(parents=True)
    (dst / "training" / "upstream.py").write_text("upstream")
    return src, dst


def test_copies_updates_and_removes_stale_files(trees):
    src, dst = trees
    (src / "training" / "ours.py").write_text("v1")
    (src / "training" / "gone.py").write_text("x")
    first = sync(src, dst)
    assert first.returncode == 0 and "2 file(s) copied" in first.stdout
    assert (dst / "training" / "ours.py").read_text() == "v1"
    (src / "training" / "ours.py").write_text("v2")
    (src / "training" / "gone.py").unlink()
    second = sync(src, dst)
    assert second.returncode == 0 and "removed stale nnunet/training/gone.py" in second.stdout
    assert (dst / "training" / "ours.py").read_text() == "v2"
    assert not (dst / "training" / "gone.py").exists()
    assert (dst / "training" / "upstream.py").read_text() == "upstream"
    assert (dst / MANIFEST_NAME).read_text().split() == ["training/ours.py"]
    assert sync(src, dst).stdout == ""  # nothing changed: nothing copied


def test_refuses_to_overwrite_an_upstream_file(trees):
    src, dst = trees
    (src / "training" / "upstream.py").write_text("ours")
    (src / "training" / "fine.py").write_text("ours")
    result = sync(src, dst)
    assert result.returncode == 1 and result.stderr.startswith("ERROR:") and "Traceback" not in result.stderr
    assert "semi_supervised/training/upstream.py would overwrite upstream nnunet/training/upstream.py" in result.stderr
    assert (dst / "training" / "upstream.py").read_text() == "upstream"
    assert not (dst / "training" / "fine.py").exists()  # nothing was copied


def test_a_missing_nnunet_tree_names_make_setup(tmp_path):
    result = sync(tmp_path, tmp_path / "absent")
    assert result.returncode == 1 and "run 'make setup' first" in result.stderr


def test_installed_nnunet_holds_the_current_overlay():
    """What `make setup` installed is the overlay as it is now (no stale copy runs)."""
    import nnunet
    installed = Path(nnunet.__path__[0])
    files = list((REPO / "semi_supervised").rglob("*.py"))
    assert files
    for path in files:
        rel = path.relative_to(REPO / "semi_supervised")
        assert (installed / rel).read_bytes() == path.read_bytes(), f"stale copy of {rel}: run make setup"


def test_nnunet_lookup_finds_the_overlay_planner():
    """nnUNet_plan_and_preprocess -pl3d finds planners the way this test does."""
    import nnunet
    from nnunet.training.model_restore import recursive_find_python_class
    planner = recursive_find_python_class([str(Path(nnunet.__path__[0]) / "experiment_planning")],
                                          "ExperimentPlanner3D_v21_CPUDemo",
                                          current_module="nnunet.experiment_planning")
    assert planner is not None and planner.MAX_PATCH_SIZE == (16, 48, 48)
