"""The settings tree (nnunet/training/settings.py): one reader of the environment, owner-named variables with the
old names still read, groups that round-trip by name."""
import pytest

from nnunet.training import settings as s


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for group in (s.FinetuneSettings, s.MoESettings, s.ConsistencySettings, s.EMASettings, s.SelfTrainSettings,
                  s.WeightTransferSettings):
        for variable in group.ENVIRONMENT.values():
            for name in (variable.name, *variable.deprecated):
                monkeypatch.delenv(name, raising=False)
    for name in ("CONSISTENCY", "PERTURBATION", "MOE_INFERENCE_TOP_K"):
        monkeypatch.delenv(name, raising=False)
    s._warned.clear()


def test_unset_or_empty_variables_leave_the_defaults(monkeypatch):
    monkeypatch.setenv("MOE_TOP_K", "")
    assert s.MoESettings.from_environment() == s.MoESettings()
    assert s.ConsistencySettings.from_environment() == s.ConsistencySettings()


def test_the_consistency_reads_its_own_names(monkeypatch):
    monkeypatch.setenv("CONSISTENCY_THRESHOLD", "0.8")
    monkeypatch.setenv("CONSISTENCY_LAMBDA_MAX", "0.5")
    monkeypatch.setenv("CONSISTENCY_WARMUP_EPOCHS", "3")
    monkeypatch.setenv("CONSISTENCY_RAMPUP_EPOCHS", "7")
    monkeypatch.setenv("PERTURBATION", "cutmix=0")
    c = s.ConsistencySettings.from_environment()
    assert (c.threshold, c.lambda_max, c.warmup_epochs, c.rampup_epochs, c.perturbation.cutmix) == (0.8, 0.5, 3, 7, 0)


@pytest.mark.parametrize("old,new,field,value", [("MOE_LAMBDA_MAX", "CONSISTENCY_LAMBDA_MAX", "lambda_max", 0.3),
                                                ("MOE_WARMUP_EPOCHS", "CONSISTENCY_WARMUP_EPOCHS", "warmup_epochs", 4),
                                                ("CONFIDENCE_THRESHOLD", "CONSISTENCY_THRESHOLD", "threshold", 0.7)])
def test_an_old_name_is_still_read_with_a_deprecation_message(monkeypatch, capsys, old, new, field, value):
    monkeypatch.setenv(old, str(value))
    assert getattr(s.ConsistencySettings.from_environment(), field) == value
    assert f"DEPRECATED: {old} is read as {new}" in capsys.readouterr().err
    newer = type(value)(value / 2) if isinstance(value, float) else value + 1
    monkeypatch.setenv(new, str(newer))  # the new name wins
    assert getattr(s.ConsistencySettings.from_environment(), field) == newer


@pytest.mark.parametrize("variable,value,group", [("MOE_TOP_K", "two", s.MoESettings),
                                                  ("CONSISTENCY_THRESHOLD", "1.5", s.ConsistencySettings),
                                                  ("MT_EMA_DECAY", "1.5", s.EMASettings),
                                                  ("SELFTRAIN_ROUNDS", "0", s.SelfTrainSettings),
                                                  ("FINETUNE_LR", "2", s.FinetuneSettings)])
def test_a_bad_value_names_its_variable(monkeypatch, variable, value, group):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=variable):
        group.from_environment()


def test_the_kind_of_consistency_is_the_trainers(monkeypatch):
    assert s.ConsistencySettings.of_trainer("cps", "nnUNetTrainerV2_moe_cps").kind == "cps"
    monkeypatch.setenv("CONSISTENCY", "weak_strong")  # the same as the trainer's: fine
    assert s.ConsistencySettings.of_trainer("weak_strong", "nnUNetTrainerV2_moe").kind == "weak_strong"
    monkeypatch.setenv("CONSISTENCY", "cps")
    with pytest.raises(ValueError, match="CONSISTENCY='cps'.*nnUNetTrainerV2_moe trains weak_strong.*"
                                         "nnUNetTrainerV2_moe_cps trains 'cps'"):
        s.ConsistencySettings.of_trainer("weak_strong", "nnUNetTrainerV2_moe")
    monkeypatch.setenv("CONSISTENCY", "mean")
    with pytest.raises(ValueError, match="CONSISTENCY='mean'"):
        s.ConsistencySettings.of_trainer("weak_strong", "nnUNetTrainerV2_moe")


def test_groups_round_trip_by_name_and_a_record_beats_the_environment(monkeypatch):
    c = s.ConsistencySettings(kind="cps", threshold=0.5, perturbation=s.PerturbationSettings(cutmix=0.0))
    record = {"consistency": c.as_record(), "moe": s.MoESettings(top_k=1).as_record()}
    monkeypatch.setenv("MOE_TOP_K", "3")
    monkeypatch.setenv("CONSISTENCY", "weak_strong")
    assert s.ConsistencySettings.of_trainer("weak_strong", "nnUNetTrainerV2_moe", record) == c
    assert s.group_from(record, "moe", s.MoESettings).top_k == 1
    assert s.group_from(None, "moe", s.MoESettings).top_k == 3
    # a name the group no longer has is ignored; a missing one takes what models recorded before it existed were
    # trained with (RECORD_DEFAULTS), else its default
    assert s.MoESettings.from_record({"top_k": 1, "rampup_epochs": 9}) == s.MoESettings(
        top_k=1, balance_decay=0.0, gate_features="bottleneck", supervised_loss="mean_and_combined")
    assert s.MoESettings.from_record({"top_k": 1}).gate_noise == s.MoESettings().gate_noise
    assert s.WeightTransferSettings.from_record({"noise": 1e-3}).reinit == 0.0
