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
import sys
from pathlib import Path

MANIFEST_NAME = ".semi_supervised_overlay"


def overlay_files(src: Path) -> list:
    return sorted(p.relative_to(src) for p in src.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def read_manifest(path: Path) -> set:
    if not path.is_file():
        return set()
    return {Path(line) for line in path.read_text().splitlines() if line.strip()}


def sync(src: Path, dst: Path) -> int:
    manifest_path = dst / MANIFEST_NAME
    previous = read_manifest(manifest_path)
    current = overlay_files(src)

    clashes = [rel for rel in current if (dst / rel).exists() and rel not in previous]
    if clashes:
        for rel in clashes:
            print(f"ERROR: overlay file semi_supervised/{rel} would overwrite upstream nnunet/{rel}",
                  file=sys.stderr)
        return 1

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
    if changed:
        print(f"   overlay: {changed} file(s) copied into nnUNet/nnunet/")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path("semi_supervised"))
    parser.add_argument("--dst", type=Path, default=Path("nnUNet/nnunet"))
    args = parser.parse_args()
    if not args.dst.is_dir():
        print(f"ERROR: {args.dst} does not exist: run `make setup` first", file=sys.stderr)
        return 1
    return sync(args.src, args.dst)


if __name__ == "__main__":
    sys.exit(main())
