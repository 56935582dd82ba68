"""covidseg.core.methods: the methods make experiment compares, and their order."""
import pytest

from covidseg.core.methods import METHODS, resolve


def test_required_methods_come_first_and_once():
    assert [m.name for m in resolve(["moe"])] == ["fullres", "moe"]
    assert [m.name for m in resolve(["moe", "control", "fullres"])] == ["fullres", "moe", "control"]


def test_the_moe_and_its_control_get_the_same_budget_from_the_same_model():
    moe, control = METHODS["moe"], METHODS["control"]
    assert moe.finetunes and control.finetunes and not METHODS["fullres"].finetunes
    assert moe.requires == control.requires == ("fullres",)


def test_an_unknown_method_is_named():
    with pytest.raises(ValueError, match="unknown method.*nope.*known: fullres, control, moe"):
        resolve(["moe", "nope"])
