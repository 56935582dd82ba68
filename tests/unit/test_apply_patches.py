"""patches/ and scripts/apply_patches.sh: documented patches that apply to the pinned nnU-Net, re-apply
idempotently, and fail loudly."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO, run_env

PATCHES = sorted((REPO / "patches").glob("[0-9][0-9][0-9][0-9]-*.patch"))
APPLY = REPO / "scripts" / "apply_patches.sh"


def git_apply(tree: Path, patch: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "--git-dir=/dev/null", "apply", *flags, str(patch)], cwd=tree,
                          capture_output=True, text=True)


@pytest.fixture
def pristine_tree(tmp_path) -> Path:
    """A copy of nnUNet/ with every patch reversed: the pinned 1.6.6 source."""
    tree = tmp_path / "nnUNet"
    shutil.copytree(REPO / "nnUNet" / "nnunet", tree / "nnunet",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for patch in reversed(PATCHES):
        result = git_apply(tree, patch, "--reverse")
        assert result.returncode == 0, f"{patch.name} is not applied to nnUNet/: {result.stderr}"
    return tree


def apply(tree: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(APPLY), str(tree)], capture_output=True, text=True, env=run_env(**env))


TEST_REFERENCE = re.compile(r"(tests/(?:unit|workflow)/test_\w+\.py)::(\w+)")
UPSTREAM_COMMIT = re.compile(r"\b[0-9a-f]{40}\b")


def header(patch: Path) -> str:
    """The commit message of a `git format-patch` file: everything before its diffstat."""
    return patch.read_text().split("\n---\n", 1)[0]


@pytest.mark.parametrize("patch", PATCHES, ids=[p.name[:4] for p in PATCHES])
def test_every_patch_says_why_which_tests_prove_it_and_where_it_comes_from(patch):
    text = header(patch)
    assert "Why:" in text and "Proved by" in text
    references = TEST_REFERENCE.findall(text)
    assert references, "name the tests as tests/<unit|workflow>/test_<module>.py::test_<name>"
    for test_file, test_name in references:
        assert re.search(rf"^def {test_name}\(", (REPO / test_file).read_text(), re.M), \
            f"{patch.name} names {test_file}::{test_name}, which does not exist"
    upstream = re.search(r"^Upstream: (.*)$", text, re.M)
    assert upstream, "say where the change comes from: 'Upstream: <commit>' or 'Upstream: none'"
    if "Backport" in text.splitlines()[3]:  # the Subject line
        assert UPSTREAM_COMMIT.search(upstream.group(1)), f"{patch.name} is a backport: name the upstream commit"


def test_patches_apply_in_order_then_reapply_idempotently(pristine_tree):
    first = apply(pristine_tree)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("patch applied:") == len(PATCHES)
    patched = {p: p.read_bytes() for p in pristine_tree.rglob("*.py")}
    second = apply(pristine_tree)
    assert second.returncode == 0, second.stderr
    assert f"patches: {len(PATCHES)} of {len(PATCHES)} already applied" in second.stdout
    assert {p: p.read_bytes() for p in pristine_tree.rglob("*.py")} == patched
    for patch in PATCHES:  # the result is exactly the tree setup produced
        rel = [line[6:] for line in patch.read_text().splitlines() if line.startswith("+++ b/")]
        for path in rel:
            assert (pristine_tree / path).read_bytes() == (REPO / "nnUNet" / path).read_bytes()


def test_a_patch_that_does_not_apply_stops_with_its_name(pristine_tree, tmp_path):
    broken_dir = tmp_path / "patches"
    broken_dir.mkdir()
    for patch in PATCHES:
        shutil.copy(patch, broken_dir)
    target = pristine_tree / "nnunet" / "utilities" / "to_torch.py"
    target.write_text(target.read_text().replace("def to_cuda(", "def something_else("))
    result = apply(pristine_tree, PATCHES_DIR=broken_dir)
    assert result.returncode != 0
    assert f"{PATCHES[0].name} does not apply" in result.stderr


def test_a_partly_applied_series_is_completed(pristine_tree):
    """A later patch may change the context of an earlier one (0006 edits lines 0005 needs): the series is checked
    as a whole, so a tree with the first patches applied gets exactly the rest."""
    half = len(PATCHES) // 2
    for patch in PATCHES[:half]:
        assert git_apply(pristine_tree, patch).returncode == 0
    result = apply(pristine_tree)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("patch applied:") == len(PATCHES) - half
    assert f"patches: {half} of {len(PATCHES)} already applied" in result.stdout
    for patch in PATCHES:
        for path in [line[6:] for line in patch.read_text().splitlines() if line.startswith("+++ b/")]:
            assert (pristine_tree / path).read_bytes() == (REPO / "nnUNet" / path).read_bytes()
