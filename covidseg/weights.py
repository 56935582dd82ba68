"""`make weights`: the baseline 3d_fullres checkpoint of a fold -> an MoE-shaped checkpoint for nnUNetTrainerV2_moe.

Prints how many tensors were copied (every MoE tensor except the gate's) and, for each expert, the largest
difference between the MoE's output with the gate forced to that expert and the baseline's output on a
random input. The result goes where `make semi` passes it to `nnUNet_train -pretrained_weights`.
"""
import argparse
import os
from typing import Optional, Sequence

import torch

from covidseg.core.errors import WorkflowError, main_guard, translate_errors
from covidseg.core.workspace import add_model_arguments, moe_init_file, task_name, trained_model_dir

# experts 1..E-1 are perturbed by 0.1% (see moe_weight_transfer); their softmax outputs move by far less than this
TOLERANCE = 0.05


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--perturbation", type=float, default=float(os.environ.get("MOE_TRANSFER_NOISE") or 1e-3))
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)

    from nnunet.network_architecture.moe_weight_transfer import forced_expert_differences, transfer_state_dict
    from nnunet.training.model_restore import restore_model
    from nnunet.training.network_training.nnUNetTrainerV2_moe import nnUNetTrainerV2_moe

    task = task_name(args.task)
    checkpoint = trained_model_dir("3d_fullres", task, args.trainer, args.plans, args.fold,
                                   "make baseline") / "model_final_checkpoint.model"
    output = moe_init_file(task, args.moe_trainer, args.plans, args.fold)
    if output.exists() and not args.force:
        print(f"{output} exists; keeping it (FORCE=1 makes it again)")
        return

    baseline = restore_model(str(checkpoint) + ".pkl", str(checkpoint), train=False)
    # trained on several processes, the baseline restores as nnUNetTrainerV2_DDP: other constructor arguments, and
    # its network wrapped in DistributedDataParallel
    baseline_network = getattr(baseline.network, "module", baseline.network)
    with translate_errors(ValueError, context="the MoE settings (EXPERTS, TOP_K, INFERENCE_TOP_K; MOE_* variables)"):
        moe_trainer = nnUNetTrainerV2_moe(baseline.plans_file, baseline.fold, baseline.output_folder_base,
                                          baseline.dataset_directory, baseline.batch_dice, baseline.stage,
                                          baseline.unpack_data, baseline.deterministic, baseline.fp16)
        moe_trainer.process_plans(baseline.plans)
        moe_trainer.initialize_network()
    moe = moe_trainer.network

    with translate_errors(ValueError, context=f"{checkpoint} cannot initialise the MoE"):
        state, copied = transfer_state_dict(baseline_network.state_dict(), moe, args.perturbation)
    moe.load_state_dict(state)
    gate_tensors = [k for k in state if k.startswith("gate.")]
    print(f"copied {len(copied)} of {len(state)} MoE tensors from {checkpoint} "
          f"(all but the gate's {len(gate_tensors)}; {moe.num_experts} experts, top-{moe.top_k})")

    device = next(moe.parameters()).device
    x = torch.randn((1, baseline.num_input_channels, *baseline.patch_size), generator=torch.Generator().manual_seed(0))
    differences = forced_expert_differences(baseline_network, moe, x.to(device))
    for expert, difference in enumerate(differences):
        print(f"gate forced to expert {expert}: max |softmax(MoE) - softmax(baseline)| = {difference:.2e}")
    if max(differences) > TOLERANCE:
        raise WorkflowError(f"the transferred MoE differs from the baseline by {max(differences):.3f} "
                            f"(> {TOLERANCE}); lower MOE_TRANSFER_NOISE")

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    torch.save({"state_dict": state, "moe_settings": moe_trainer.init_args[-1], "source": str(checkpoint),
                "perturbation": args.perturbation}, tmp)
    os.replace(tmp, output)
    print(f"MoE initialisation written to {output}")


if __name__ == "__main__":
    main_guard(main)
