"""Copy the ``semi_supervised/`` overlay into the pinned nnU-Net tree.

Each file ``semi_supervised/<path>`` is copied to ``nnUNet/nnunet/<path>``, so that nnU-Net's own
class lookup (which walks ``nnunet/training/network_training`` for trainers and
``nnunet/experiment_planning`` for planners) finds the overlay's classes without any patch.

The copies are tracked in a manifest: a file removed from the overlay is removed from nnU-Net on the
next sync (stale copies never run), and an overlay file may never overwrite an upstream nnU-Net file.
Run it as often as you like; it only rewrites files whose content changed.
"""
import argparse
import filecmp
import shutil
from pathlib import Path
from typing import Optional, Sequence

from covidseg.core.errors import ProblemsError, WorkflowError, main_guard

MANIFEST_NAME = ".semi_supervised_overlay"


def overlay_files(src: Path) -> list:
    return sorted(p.relative_to(src) for p in src.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def read_manifest(path: Path) -> set:
    if not path.is_file():
        return set()
    return {Path(line) for line in path.read_text().splitlines() if line.strip()}


def sync(src: Path, dst: Path) -> int:
    """Copy the overlay `src` into `dst`; returns the number of files copied."""
    manifest_path = dst / MANIFEST_NAME
    previous = read_manifest(manifest_path)
    current = overlay_files(src)

    clashes = [rel for rel in current if (dst / rel).exists() and rel not in previous]
    if clashes:
        raise ProblemsError("the overlay clashes with upstream nnU-Net, nothing was copied",
                            [f"{src.name}/{rel} would overwrite upstream {dst.name}/{rel} (rename it)"
                             for rel in clashes])

    for rel in sorted(previous - set(current)):
        stale = dst / rel
        if stale.exists():
            stale.unlink()
            print(f"   overlay: removed stale nnunet/{rel}")
    changed = 0
    for rel in current:
        target = dst / rel
        if target.exists() and filecmp.cmp(src / rel, target, shallow=False):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, target)
        changed += 1
    manifest_path.write_text("".join(f"{rel}\n" for rel in current))
    return changed


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path("semi_supervised"))
    parser.add_argument("--dst", type=Path, default=Path("nnUNet/nnunet"))
    args = parser.parse_args(argv)
    if not args.dst.is_dir():
        raise WorkflowError(f"{args.dst} does not exist: run 'make setup' first (it fills nnUNet/)")
    changed = sync(args.src, args.dst)
    if changed:
        print(f"   overlay: {changed} file(s) copied into {args.dst}/")


if __name__ == "__main__":
    main_guard(main)
