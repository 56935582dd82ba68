"""`make synthetic`: write a synthetic COVID-19-20 download (see covidseg.data.phantoms).

    python -m covidseg.synthetic <out> [--n-train 20] [--n-validation 4] [--seed 0] [--xy MIN MAX] [--sites 1] ...
"""
import argparse
from pathlib import Path
from typing import Optional, Sequence

from covidseg.core.errors import WorkflowError, main_guard
from covidseg.data.phantoms import PhantomSettings, write_download


def parse_arguments(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="folder to write the download into (must not exist or be empty)")
    parser.add_argument("--n-train", type=int, default=20)
    parser.add_argument("--n-validation", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--xy", type=int, nargs=2, default=PhantomSettings.xy_range, metavar=("MIN", "MAX"),
                        help="in-plane size range in voxels (real scans: 512)")
    parser.add_argument("--z", type=int, nargs=2, default=PhantomSettings.z_range, metavar=("MIN", "MAX"),
                        help="slice count range (real scans: about 62)")
    parser.add_argument("--spacing-xy", type=float, nargs=2, default=PhantomSettings.spacing_xy_range,
                        metavar=("MIN", "MAX"), help="in-plane spacing range in mm (real scans: about 0.74)")
    parser.add_argument("--sites", type=int, default=1,
                        help="scanner sites (noise, HU calibration, blur, lesion contrast; per-case lesion patterns); "
                             "above 1 the download gets sites.csv. Default 1")
    parser.add_argument("--force", action="store_true", help="write into a non-empty folder")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_arguments(argv)
    if args.output.exists() and any(args.output.iterdir()) and not args.force:
        raise WorkflowError(f"{args.output} is not empty; use FORCE=1 (--force) to write into it anyway")
    if not 1 <= args.sites <= 26:
        raise WorkflowError(f"--sites {args.sites}: expected 1 to 26 sites (SITES)")
    if args.n_train < 1 or args.n_validation < 0:
        raise WorkflowError(f"need at least 1 train case and no negative count (got --n-train {args.n_train}, "
                            f"--n-validation {args.n_validation})")
    for option, (low, high) in (("--xy", args.xy), ("--z", args.z), ("--spacing-xy", args.spacing_xy)):
        if not 0 < low <= high:
            raise WorkflowError(f"{option} {low} {high}: expected 0 < MIN <= MAX")
    settings = PhantomSettings(xy_range=tuple(args.xy), z_range=tuple(args.z), spacing_xy_range=tuple(args.spacing_xy),
                               sites=args.sites)
    train, validation = write_download(args.output, args.n_train, args.n_validation, args.seed, settings)
    print(f"synthetic COVID-19-20 download: {len(train)} train + {len(validation)} validation cases in {args.output}"
          + (f" from {args.sites} sites (sites.csv)" if args.sites > 1 else ""))


if __name__ == "__main__":
    main_guard(main)
