"""`make weights`: the baseline 3d_fullres checkpoint of a fold -> an MoE-shaped checkpoint for nnUNetTrainerV2_moe.

Prints how many tensors were copied (every MoE tensor except the gate's) and, for each expert, the largest
difference between the MoE's output with the gate forced to that expert and the baseline's output on a
random input (expert 0 is an exact copy; experts 1..E-1 are partly re-initialised, TRANSFER_REINIT, so only expert
0 is held to the tolerance unless TRANSFER_REINIT=0). The result goes where `make semi` passes it to
`nnUNet_train -pretrained_weights`, with what made it: the baseline checkpoint and its sha256, the MoE's settings
by name and the transfer's noise and re-initialised share. An existing
initialisation is kept only while all of these are still what is asked for; otherwise it is refused, naming what
changed (FORCE=1 makes it again).
"""
import argparse
import os
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from covidseg.core.errors import WorkflowError, main_guard, translate_errors
from covidseg.core.workspace import add_model_arguments, moe_init_file, task_name, trained_model_dir
from covidseg.runs.model_files import check_trained_fold

# expert 0 is an exact copy; without re-initialisation experts 1..E-1 are perturbed by 0.1% (see
# moe_weight_transfer) and their softmax outputs move by far less than this
TOLERANCE = 0.05


def initialisation_changes(init: Path, made_of: dict) -> List[str]:
    """What differs between the MoE initialisation `init` and what it would be made of now (the baseline's sha256,
    the MoE's settings, the noise). One written before these were recorded is kept, with a note."""
    from nnunet.utilities.safe_loading import UnsafeFileError, load_checkpoint_safely
    with translate_errors(UnsafeFileError, context="the MoE initialisation was not used"):
        stored = load_checkpoint_safely(str(init))
    if "source_sha256" not in stored:
        print(f"NOTE: {init} was made before initialisations recorded their baseline and settings, so they cannot "
              f"be checked; FORCE=1 makes it again")
        return []
    changes = []
    for key in ("source_sha256", "moe", "perturbation", "reinit"):
        if stored.get(key, 0.0 if key == "reinit" else None) != made_of[key]:
            what = {"source_sha256": f"the baseline checkpoint {made_of['source']} (sha256)", "moe": "the MoE settings",
                    "perturbation": "the transfer noise (TRANSFER_NOISE)",
                    "reinit": "the re-initialised share (TRANSFER_REINIT)"}[key]
            changes.append(f"{what}: {stored.get(key, 'not recorded')} (the initialisation) -> {made_of[key]} (now)")
    return changes


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--perturbation", type=float, default=None,
                        help="noise of experts 1..E-1 (default: MOE_TRANSFER_NOISE, else 0.001)")
    parser.add_argument("--force", action="store_true", help="make the initialisation again")
    parser.add_argument("--retrain-changed", action="store_true",
                        help="make it again when it was made from another baseline or with other settings")
    args = parser.parse_args(argv)

    from nnunet.network_architecture.moe_weight_transfer import forced_expert_differences, transfer_state_dict
    from nnunet.training.model_restore import restore_model
    from nnunet.training.model_restore import recursive_find_python_class
    from nnunet.training.provenance import file_sha256
    from nnunet.training.settings import MoESettings, WeightTransferSettings

    task = task_name(args.task)
    checkpoint = trained_model_dir("3d_fullres", task, args.trainer, args.plans, args.fold,
                                   "make baseline") / "model_final_checkpoint.model"
    check_trained_fold(checkpoint.parent, f"the baseline in {checkpoint.parent}")
    output = moe_init_file(task, args.moe_trainer, args.plans, args.fold)
    with translate_errors(ValueError, context="the MoE settings (EXPERTS, TOP_K, TRANSFER_NOISE, TRANSFER_REINIT; "
                                              "MOE_* variables)"):
        transfer = WeightTransferSettings.from_environment()
        noise = args.perturbation if args.perturbation is not None else transfer.noise
        made_of = {"source": str(checkpoint), "source_sha256": file_sha256(checkpoint),
                   "moe": MoESettings.from_environment().as_record(), "perturbation": noise,
                   "reinit": transfer.reinit}
    if output.exists() and not args.force:
        changes = initialisation_changes(output, made_of)
        if not changes:
            print(f"{output} exists; keeping it: made from this baseline with these settings (FORCE=1 makes it "
                  f"again)")
            return
        if not args.retrain_changed:
            raise WorkflowError(f"{output} was made from another baseline or with other settings than those asked "
                                f"for now:\n" + "\n".join(f"  - {c}" for c in changes)
                                + "\nFORCE=1 makes it again (and 'make semi FORCE=1' then trains the MoE from it)")
        print(f"{output}: made from another baseline or with other settings, making it again")
    moe_class = recursive_find_python_class(
        [os.path.join(os.path.dirname(__import__("nnunet").__file__), "training", "network_training")],
        args.moe_trainer, current_module="nnunet.training.network_training")
    if moe_class is None:
        raise WorkflowError(f"no trainer class {args.moe_trainer} in nnunet.training.network_training")

    baseline = restore_model(str(checkpoint) + ".pkl", str(checkpoint), train=False)
    # trained on several processes, the baseline restores as nnUNetTrainerV2_DDP: other constructor arguments, and
    # its network wrapped in DistributedDataParallel
    baseline_network = getattr(baseline.network, "module", baseline.network)
    with translate_errors(ValueError, context="the MoE settings (EXPERTS, TOP_K, INFERENCE_TOP_K; MOE_* variables)"):
        moe_trainer = moe_class(baseline.plans_file, baseline.fold, baseline.output_folder_base,
                                          baseline.dataset_directory, baseline.batch_dice, baseline.stage,
                                          baseline.unpack_data, baseline.deterministic, baseline.fp16)
        moe_trainer.process_plans(baseline.plans)
        moe_trainer.initialize_network()
    moe = moe_trainer.network

    with translate_errors(ValueError, context=f"{checkpoint} cannot initialise the MoE"):
        state, copied = transfer_state_dict(baseline_network.state_dict(), moe, noise, reinit=transfer.reinit)
    moe.load_state_dict(state)
    gate_tensors = [k for k in state if k.startswith("gate.")]
    print(f"copied {len(copied)} of {len(state)} MoE tensors from {checkpoint} "
          f"(all but the gate's {len(gate_tensors)}; {moe.num_experts} experts, top-{moe.top_k})")

    device = next(moe.parameters()).device
    x = torch.randn((1, baseline.num_input_channels, *baseline.patch_size), generator=torch.Generator().manual_seed(0))
    differences = forced_expert_differences(baseline_network, moe, x.to(device))
    for expert, difference in enumerate(differences):
        print(f"gate forced to expert {expert}: max |softmax(MoE) - softmax(baseline)| = {difference:.2e}"
              + (" (an exact copy)" if expert == 0 else f" (reinit {transfer.reinit:g}, noise {noise:g})"))
    checked = differences if transfer.reinit == 0 else differences[:1]  # re-initialised experts differ on purpose
    if max(checked) > TOLERANCE:
        raise WorkflowError(f"the transferred MoE differs from the baseline by {max(checked):.3f} "
                            f"(> {TOLERANCE}); lower MOE_TRANSFER_NOISE")

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    torch.save({"state_dict": state, **made_of}, tmp)
    os.replace(tmp, output)
    print(f"MoE initialisation written to {output}")


if __name__ == "__main__":
    main_guard(main)
