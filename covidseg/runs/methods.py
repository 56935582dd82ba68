"""Every model the workspace makes, in one registry: a name mapped to its nnU-Net configuration and trainer, the
make target that trains it, the workflow commands that train it in `make experiment`, the methods it starts from.

Every consumer iterates METHODS: the workspace's folders, `make predict MODEL=`, `make evaluate`, `make report`,
`make experiment` and its budgets table. A new method is one entry here (plus its trainer, whose class carries its
settings: nnunet/training/settings.py); a variant with other settings is a trainer subclass with its own folder,
the nnU-Net idiom (nnUNetTrainerV2_moe_cps).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from covidseg.core.workspace import ensemble_dir, model_dir


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    trainer: str                         # the nnU-Net trainer of its model (the default of trainer_option)
    make_target: str                     # what trains it
    configuration: str = "3d_fullres"
    trainer_option: Optional[str] = None  # the model argument that may name another trainer (trainer, control_trainer,
    #                                       moe_trainer: make TRAINER / CONTROL_TRAINER / MOE_TRAINER); None: fixed
    commands: Tuple[str, ...] = ()       # covidseg commands that train it in `make experiment` (empty: not a method
    #                                       of the experiment), in order; each skips what is done
    requires: Tuple[str, ...] = ()       # methods whose models it starts from
    finetunes: bool = False              # trained for the fine-tuning budget (the MoE's), from the fullres weights
    members: Tuple[str, ...] = ()        # an ensemble: the methods whose softmax it averages (no model of its own)

    @property
    def is_ensemble(self) -> bool:
        return bool(self.members)

    @property
    def in_experiment(self) -> bool:
        return bool(self.commands)

    def trainer_for(self, args) -> str:
        """Its trainer under the model arguments (covidseg.core.workspace.add_model_arguments)."""
        return getattr(args, self.trainer_option) if self.trainer_option else self.trainer


METHODS: Dict[str, Method] = {m.name: m for m in (
    Method("lowres", "nnU-Net 3d_lowres, fully supervised on the labelled cases", "nnUNetTrainerV2", "make baseline",
           configuration="3d_lowres", trainer_option="trainer"),
    Method("fullres", "nnU-Net 3d_fullres, fully supervised on the labelled cases", "nnUNetTrainerV2", "make baseline",
           trainer_option="trainer", commands=("baseline",)),
    Method("ensemble", "3d_fullres + 3d_lowres, softmax averaged (nnUNet_ensemble)", "nnUNetTrainerV2",
           "make baseline", trainer_option="trainer", members=("lowres", "fullres")),
    Method("control", "3d_fullres fine-tuned on the labelled cases for the MoE's budget (same-budget control)",
           "nnUNetTrainerV2_finetune", "make control", trainer_option="control_trainer", commands=("control",),
           requires=("fullres",), finetunes=True),
    Method("selftrain", "nnU-Net self-training: the baseline pseudo-labels the unlabelled pool, the student trains on "
           "labelled + confident pseudo-labelled cases, then fine-tunes on the labelled ones (MoE's budget)",
           "nnUNetTrainerV2_selftrain", "make selftrain", commands=("selftrain",), requires=("fullres",),
           finetunes=True),
    Method("meanteacher", "3d_fullres with an EMA teacher's weak-to-strong consistency on the unlabelled cases (the "
           "MoE's loss without experts, MoE's budget)", "nnUNetTrainerV2_meanteacher", "make meanteacher",
           commands=("meanteacher",), requires=("fullres",), finetunes=True),
    Method("moe", "mixture of experts, labelled + unlabelled cases (weak-to-strong consistency), from the 3d_fullres "
           "weights", "nnUNetTrainerV2_moe", "make semi", trainer_option="moe_trainer", commands=("weights", "semi"),
           requires=("fullres",), finetunes=True),
    Method("moe_cps", "the same mixture with cross pseudo-supervision between the experts on one view",
           "nnUNetTrainerV2_moe_cps", "make semi MOE_TRAINER=nnUNetTrainerV2_moe_cps", commands=("weights", "semi"),
           requires=("fullres",), finetunes=True),
    Method("moe_site", "the mixture with an oracle router: each training case goes to its site's expert (sites.csv), "
           "the gate learns to imitate that and routes at inference", "nnUNetTrainerV2_moe_site",
           "make semi ROUTING=site", commands=("weights", "semi"), requires=("fullres",), finetunes=True),
)}

EXPERIMENT_METHODS = tuple(name for name, m in METHODS.items() if m.in_experiment)


def resolve(names) -> Tuple[Method, ...]:
    """The named methods of the experiment and those they require, each once, every method after the ones it
    requires."""
    unknown = [n for n in names if n not in EXPERIMENT_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(EXPERIMENT_METHODS)}")
    ordered = []

    def add(name: str) -> None:
        for required in METHODS[name].requires:
            add(required)
        if METHODS[name] not in ordered:
            ordered.append(METHODS[name])

    for name in names:
        add(name)
    return tuple(ordered)


def method_folder(method, task: str, plans: str, fold, args) -> Path:
    """The fold folder of a method's model (an ensemble's: its ensembled predictions) under the model arguments
    `args` (add_model_arguments: they may name other trainers)."""
    trainer = method.trainer_for(args)
    if method.is_ensemble:
        return ensemble_dir(task, trainer, plans, fold)
    return model_dir(method.configuration, task, trainer, plans, fold)


def model_folders(task: str, plans: str, fold, args) -> Dict[str, Path]:
    """Every model of the method registry (METHODS), name -> its fold folder, in the registry's order (the order
    reports list them)."""
    return {name: method_folder(method, task, plans, fold, args) for name, method in METHODS.items()}
