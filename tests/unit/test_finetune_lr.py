"""FINETUNE_LR: the initial learning rate shared by the MoE and its same-budget control."""
import pytest

from nnunet.training.learning_rate.finetune_lr import DEFAULT_FINETUNE_LR, finetune_learning_rate


@pytest.mark.parametrize("raw,expected", [(None, DEFAULT_FINETUNE_LR), ("", DEFAULT_FINETUNE_LR), ("0.003", 0.003),
                                          (" 1e-3 ", 1e-3)])
def test_the_rate_comes_from_the_environment(monkeypatch, raw, expected):
    if raw is None:
        monkeypatch.delenv("FINETUNE_LR", raising=False)
    else:
        monkeypatch.setenv("FINETUNE_LR", raw)
    assert finetune_learning_rate() == pytest.approx(expected)


@pytest.mark.parametrize("raw", ["0", "-0.01", "1.5", "fast", "nan"])
def test_a_bad_rate_is_refused_by_name(monkeypatch, raw):
    monkeypatch.setenv("FINETUNE_LR", raw)
    with pytest.raises(ValueError, match="FINETUNE_LR=.*(must be a number in \\(0, 1\\)|is not a valid float)"):
        finetune_learning_rate()
