"""covidseg.runs.methods: the one registry of the workspace's models, the methods make experiment compares, and
their order."""
import pytest

from covidseg.runs.methods import METHODS, resolve


def test_required_methods_come_first_and_once():
    assert [m.name for m in resolve(["moe"])] == ["fullres", "moe"]
    assert [m.name for m in resolve(["moe", "control", "fullres"])] == ["fullres", "moe", "control"]


def test_the_moe_and_its_control_get_the_same_budget_from_the_same_model():
    moe, control = METHODS["moe"], METHODS["control"]
    assert moe.finetunes and control.finetunes and not METHODS["fullres"].finetunes
    assert moe.requires == control.requires == ("fullres",)


def test_an_unknown_method_is_named():
    with pytest.raises(ValueError, match="unknown method.*nope.*known: fullres, control, selftrain, meanteacher, moe, "
                                         "moe_cps, moe_site"):
        resolve(["moe", "nope"])
    with pytest.raises(ValueError, match="unknown method.*lowres"):  # a model, but not a method of the experiment
        resolve(["lowres"])


def test_every_model_has_one_entry_with_its_own_trainer_folder():
    folders = {(m.configuration, m.trainer) for m in METHODS.values() if not m.is_ensemble}
    assert len(folders) == len([m for m in METHODS.values() if not m.is_ensemble])  # no two share a folder
    assert METHODS["moe_cps"].trainer == "nnUNetTrainerV2_moe_cps" and METHODS["ensemble"].members == ("lowres",
                                                                                                     "fullres")
    assert all(METHODS[r] for m in METHODS.values() for r in m.requires + m.members)


def test_make_arguments_may_name_other_trainers():
    from argparse import Namespace
    args = Namespace(trainer="T", control_trainer="C", moe_trainer="M")
    assert [METHODS[n].trainer_for(args) for n in ("fullres", "lowres", "control", "moe", "moe_cps", "selftrain")] \
        == ["T", "T", "C", "M", "nnUNetTrainerV2_moe_cps", "nnUNetTrainerV2_selftrain"]
