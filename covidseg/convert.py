"""`make convert`: the COVID-19-20 or MosMed-1110 download -> an nnU-Net v1 raw task (covidseg.data.conversion,
covidseg.data.mosmed).

    python -m covidseg.convert <download> [--source auto|covid19_20|mosmed] [--task-id 200]
                               [--labeled-fraction 0.5] [--test-fraction 0]
                               [--seed 0] [--extra-unlabeled <folder>]
                               [--labeled-site S [--labeled-site-share 0.8]] [--force]

`python scripts/COVID_19_20.py` is the same command (the seed workflow's name for it).
"""
import argparse
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from covidseg.core.errors import WorkflowError, main_guard
from covidseg.data import conversion


def default_output_base() -> Optional[Path]:
    base = os.environ.get("nnUNet_raw_data_base")
    return Path(base) / "nnUNet_raw_data" if base else None


def parse_arguments(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=conversion.__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=conversion.__doc__)
    parser.add_argument("download", type=Path, help="the unpacked COVID-19-20 or MosMed-1110 download folder")
    parser.add_argument("--source", choices=("auto",) + tuple(conversion.SOURCES), default="auto",
                        help="the download's layout; auto: recognised by its files (COVID-19-20's workbook, "
                             "MosMed's dataset_registry.xlsx)")
    parser.add_argument("--output-base", type=Path, default=default_output_base(),
                        help="nnU-Net's raw data folder (default: $nnUNet_raw_data_base/nnUNet_raw_data)")
    parser.add_argument("--task-id", type=int, default=200)
    parser.add_argument("--task-name", default="COVID_19_20")
    parser.add_argument("--labeled-fraction", type=float, default=0.5,
                        help="fraction of the train set that keeps its labels; the rest becomes the unlabelled pool "
                             "(1.0: plain fully supervised task). Default 0.5")
    parser.add_argument("--test-fraction", type=float, default=0.0,
                        help="fraction of the train set held out, with its labels, as the test set (imagesTs/, "
                             "labelsTs/); drawn first, so it does not depend on the labelled fraction. Default 0")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test/labelled/unlabelled split")
    parser.add_argument("--extra-unlabeled", type=Path, default=None,
                        help="a folder of further CT .nii.gz files (e.g. MosMed studies) for the unlabelled pool")
    parser.add_argument("--labeled-site", default=None,
                        help="draw the labelled cases mostly from this site of <download>/sites.csv (the test set and "
                             "the unlabelled pool span all sites)")
    parser.add_argument("--labeled-site-share", type=float, default=0.8,
                        help="with --labeled-site: the share of labelled cases from that site. Default 0.8")
    parser.add_argument("--force", action="store_true", help="replace an existing task folder")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_arguments(argv)
    if not 0 < args.labeled_fraction <= 1:
        raise WorkflowError(f"the labelled fraction must be in (0, 1], got {args.labeled_fraction} "
                            f"(LABELED_FRACTION / --labeled-fraction)")
    if not 0 <= args.test_fraction < 1:
        raise WorkflowError(f"the test fraction must be in [0, 1), got {args.test_fraction} "
                            f"(TEST_FRACTION / --test-fraction)")
    if args.output_base is None:
        raise WorkflowError("set nnUNet_raw_data_base or pass --output-base (the Makefile sets it)")
    task_dir = args.output_base / f"Task{args.task_id:03d}_{args.task_name}"
    if task_dir.exists() and not args.force:
        raise WorkflowError(f"{task_dir} exists; pass --force (make: FORCE=1) to replace it")
    with tempfile.TemporaryDirectory(prefix="covidseg-extra-") as staging:  # EXTRA_UNLABELED's DICOM as NIfTI
        download = conversion.validate(args.download, args.extra_unlabeled, args.labeled_site,
                                       args.labeled_site_share, staging=Path(staging), source=args.source)
        conversion.write_task(download, task_dir, args.labeled_fraction, args.seed, args.force, args.test_fraction)


if __name__ == "__main__":
    main_guard(main)
