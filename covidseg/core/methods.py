"""The methods `make experiment` trains and compares: a name mapped to the nnU-Net trainer of its 3d_fullres model,
the workflow commands that train it, the methods it starts from and its settings, in one place.

A later method (another semi-supervised trainer, an MoE variant with other settings) is one more entry here; the
experiment runner, the evaluation and the results tables take it from METHODS. Each method of a run trains into
its own RESULTS_FOLDER, with the models of the methods it requires linked in, so variants that share a trainer
never share a folder.
"""
from dataclasses import dataclass, field
from typing import Dict, Mapping, Tuple


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    trainer: str                       # the nnU-Net trainer of the method's 3d_fullres model
    commands: Tuple[str, ...]          # covidseg commands that train it, in order; each skips what is done
    requires: Tuple[str, ...] = ()     # methods whose models it starts from
    finetunes: bool = False            # trained for the fine-tuning budget (the MoE's), not the baseline's
    environment: Mapping[str, str] = field(default_factory=dict)  # settings of this method (e.g. MOE_* variables)


METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("fullres", "nnU-Net 3d_fullres, fully supervised on the labelled cases", "nnUNetTrainerV2",
           ("baseline",)),
    Method("control", "3d_fullres fine-tuned on the labelled cases for the MoE's budget (same-budget control)",
           "nnUNetTrainerV2_finetune", ("control",), requires=("fullres",), finetunes=True),
    Method("moe", "mixture of experts, labelled + unlabelled cases (weak-to-strong consistency), from the 3d_fullres "
           "weights", "nnUNetTrainerV2_moe", ("weights", "semi"), requires=("fullres",), finetunes=True,
           environment={"CONSISTENCY": "weak_strong"}),
    Method("selftrain", "nnU-Net self-training: the baseline pseudo-labels the unlabelled pool, the student trains on "
           "labelled + confident pseudo-labelled cases, then fine-tunes on the labelled ones (MoE's budget)",
           "nnUNetTrainerV2_selftrain", ("selftrain",), requires=("fullres",), finetunes=True),
    Method("meanteacher", "3d_fullres with an EMA teacher's weak-to-strong consistency on the unlabelled cases (the "
           "MoE's loss without experts, MoE's budget)", "nnUNetTrainerV2_meanteacher", ("meanteacher",),
           requires=("fullres",), finetunes=True),
    Method("moe_cps", "the same mixture with cross pseudo-supervision between the experts on one view "
           "(CONSISTENCY=cps)",
           "nnUNetTrainerV2_moe", ("weights", "semi"), requires=("fullres",), finetunes=True,
           environment={"CONSISTENCY": "cps"}),
)}


def resolve(names) -> Tuple[Method, ...]:
    """The named methods and those they require, each once, every method after the ones it requires."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    ordered = []

    def add(name: str) -> None:
        for required in METHODS[name].requires:
            add(required)
        if METHODS[name] not in ordered:
            ordered.append(METHODS[name])

    for name in names:
        add(name)
    return tuple(ordered)
