"""scripts/sync_overlay.py: the overlay lands in nnunet/, stale copies go, upstream files are never overwritten."""
from pathlib import Path

import pytest

from conftest import REPO
from sync_overlay import MANIFEST_NAME, sync


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
    assert sync(src, dst) == 0
    assert (dst / "training" / "ours.py").read_text() == "v1"
    (src / "training" / "ours.py").write_text("v2")
    (src / "training" / "gone.py").unlink()
    assert sync(src, dst) == 0
    assert (dst / "training" / "ours.py").read_text() == "v2"
    assert not (dst / "training" / "gone.py").exists()
    assert (dst / "training" / "upstream.py").read_text() == "upstream"
    assert (dst / MANIFEST_NAME).read_text().split() == ["training/ours.py"]


def test_refuses_to_overwrite_an_upstream_file(trees, capsys):
    src, dst = trees
    (src / "training" / "upstream.py").write_text("ours")
    assert sync(src, dst) == 1
    assert "would overwrite upstream nnunet/training/upstream.py" in capsys.readouterr().err
    assert (dst / "training" / "upstream.py").read_text() == "upstream"


def test_installed_nnunet_holds_the_current_overlay():
    """What `make setup` installed is the overlay as it is now (no stale copy runs)."""
    import nnunet
    installed = Path(nnunet.__path__[0])
    for path in (REPO / "semi_supervised").rglob("*.py"):
        rel = path.relative_to(REPO / "semi_supervised")
        assert (installed / rel).read_bytes() == path.read_bytes(), f"stale copy of {rel}: run make setup"


def test_nnunet_lookup_finds_the_overlay_planner():
    """nnUNet_plan_and_preprocess -pl3d finds planners the way this test does."""
    import nnunet
    from nnunet.training.model_restore import recursive_find_python_class
    planner = recursive_find_python_class([str(Path(nnunet.__path__[0]) / "experiment_planning")],
                                          "ExperimentPlanner3D_v21_CPUDemo", current_module="nnunet.experiment_planning")
    assert planner is not None and planner.MAX_PATCH_SIZE == (16, 48, 48)
