"""The settings tree of the workspace's trainers: one frozen dataclass per concern, one reader of the environment.

    FinetuneSettings      the initial learning rate of a run that continues the baseline (control, MoE, self-training,
                          mean teacher)
    MoESettings           the mixture of experts (number of experts, top-k, load-balancing weight)
    PerturbationSettings  the strong view of the weak-to-strong consistency
    ConsistencySettings   the unlabelled term (kind, confidence threshold, lambda schedule, its perturbations), shared
                          by the MoE and the mean teacher
    EMASettings           the mean teacher's exponential moving average
    SelfTrainSettings     self-training's rounds and confidence threshold
    WeightTransferSettings  `make weights`' perturbation of experts 1..E-1

Each field is read from one environment variable (the Makefile sets them from its own variables, see docs/reference.md),
whose name says whom it belongs to: MOE_* only for the mixture, CONSISTENCY_* for the unlabelled term that the MoE
and the mean teacher share. Names used before are still read, with a deprecation message, while the new name is
unset. An unset or empty variable leaves the field's default; a bad value is a ValueError naming the variable.

A trainer stores its groups by name (`as_record`) in the checkpoint's .pkl and in the model's settings.json, and
rebuilds them from there (`from_record`), so a restored model never depends on the environment it is loaded in.
"""
import os
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import ClassVar, Dict, Mapping, Optional, Tuple, Type, TypeVar

T = TypeVar("T", bound="SettingsGroup")


@dataclass(frozen=True)
class Variable:
    """An environment variable and the names it had before (still read, with a deprecation message)."""
    name: str
    make_variable: str = ""             # what users set on the make command line, for the messages
    deprecated: Tuple[str, ...] = ()


_warned = set()


def read_variable(variable: Variable, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The variable's value (None when unset or empty); a deprecated name is read when the new one is unset."""
    environ = os.environ if environ is None else environ
    value = environ.get(variable.name, "").strip()
    if value:
        return value
    for old in variable.deprecated:
        old_value = environ.get(old, "").strip()
        if old_value:
            if old not in _warned:
                _warned.add(old)
                how = f" (make {variable.make_variable}=...)" if variable.make_variable else ""
                print(f"DEPRECATED: {old} is read as {variable.name}{how}; set {variable.name} instead",
                      file=sys.stderr)
            return old_value
    return None


def parse_value(text: str, kind: type, variable: str):
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{variable}={text!r} is not a valid {kind.__name__}") from None


class SettingsGroup:
    """Base of the frozen settings dataclasses: ENVIRONMENT maps fields to variables; nested groups read their own."""
    ENVIRONMENT: ClassVar[Dict[str, Variable]] = {}
    RECORD_DEFAULTS: ClassVar[Dict[str, object]] = {}

    @classmethod
    def from_environment(cls: Type[T], environ: Optional[Mapping[str, str]] = None, **fixed) -> T:
        """The defaults, overridden by the variables that are set; `fixed` fields are not read."""
        values = dict(fixed)
        for f in fields(cls):
            if f.name in values:
                continue
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            if isinstance(default, SettingsGroup):
                values[f.name] = type(default).from_environment(environ)
            elif f.name in cls.ENVIRONMENT:
                variable = cls.ENVIRONMENT[f.name]
                raw = read_variable(variable, environ)
                if raw is not None:
                    values[f.name] = parse_value(raw, type(default), variable.name)
        return cls(**values)

    def as_record(self) -> dict:
        """The settings by name, plain JSON / pickle types only."""
        return asdict(self)

    @classmethod
    def from_record(cls: Type[T], record: Mapping) -> T:
        """From as_record's dict; names the group no longer has are ignored, missing ones take RECORD_DEFAULTS' value
        (what a model recorded before the field existed was trained with) or else the default."""
        values = {}
        for f in fields(cls):
            if f.name not in record:
                if f.name in cls.RECORD_DEFAULTS:
                    values[f.name] = cls.RECORD_DEFAULTS[f.name]
                continue
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            value = record[f.name]
            values[f.name] = type(default).from_record(value) if isinstance(default, SettingsGroup) else value
        return cls(**values)


@dataclass(frozen=True)
class FinetuneSettings(SettingsGroup):
    """A run that continues the 3d_fullres baseline follows nnU-Net's poly schedule from this rate (nnU-Net's own
    1e-2 is meant for training from scratch); the MoE and its same-budget control read the same variable."""
    initial_lr: float = 1e-2

    ENVIRONMENT = {"initial_lr": Variable("FINETUNE_LR", "FINETUNE_LR")}

    def __post_init__(self):
        if not 0 < self.initial_lr < 1:
            raise ValueError(f"FINETUNE_LR={self.initial_lr!r}: the initial learning rate must be a number in (0, 1)")


SUPERVISED_LOSSES = ("gate_weighted", "mean_and_combined")


@dataclass(frozen=True)
class MoESettings(SettingsGroup):
    """The mixture: E experts, top-k routing, the gate (what it reads, its initial noise), the supervised loss
    (gate_weighted: Dice+CE over the (sample, expert) pairs weighted by the gate, which equals the control's loss
    while the experts are identical; mean_and_combined: the mean per-expert loss plus the combined output's, twice
    the control's gradient, as models before 2026-12 were trained), and the load-balancing weight and the decay of
    the expert usage it balances over time."""
    num_experts: int = 3
    top_k: int = 2
    balance_alpha: float = 0.01
    balance_decay: float = 0.9
    gate_features: str = "stem"
    gate_noise: float = 0.05
    supervised_loss: str = "gate_weighted"

    ENVIRONMENT = {"num_experts": Variable("MOE_NUM_EXPERTS", "EXPERTS"), "top_k": Variable("MOE_TOP_K", "TOP_K"),
                   "balance_alpha": Variable("MOE_BALANCE_ALPHA", "BALANCE_ALPHA"),
                   "balance_decay": Variable("MOE_BALANCE_DECAY", "BALANCE_DECAY"),
                   "gate_features": Variable("MOE_GATE_FEATURES", "GATE_FEATURES"),
                   "gate_noise": Variable("MOE_GATE_NOISE", "GATE_NOISE"),
                   "supervised_loss": Variable("MOE_SUPERVISED_LOSS", "SUPERVISED_LOSS")}
    RECORD_DEFAULTS = {"balance_decay": 0.0, "gate_features": "bottleneck", "supervised_loss": "mean_and_combined"}

    def __post_init__(self):
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"MOE_TOP_K={self.top_k}: top_k must be in [1, num_experts={self.num_experts}], "
                             f"got {self.top_k}")
        if self.gate_features not in ("stem", "bottleneck"):
            raise ValueError(f"MOE_GATE_FEATURES={self.gate_features!r}: expected stem or bottleneck")
        if self.supervised_loss not in SUPERVISED_LOSSES:
            raise ValueError(f"MOE_SUPERVISED_LOSS={self.supervised_loss!r}: expected one of "
                             f"{', '.join(SUPERVISED_LOSSES)}")
        if not 0 <= self.balance_decay < 1 or self.gate_noise < 0 or self.balance_alpha < 0:
            raise ValueError(f"MOE_BALANCE_DECAY={self.balance_decay} must be in [0, 1), MOE_GATE_NOISE="
                             f"{self.gate_noise} and MOE_BALANCE_ALPHA={self.balance_alpha} >= 0")


INFERENCE_TOP_K = Variable("MOE_INFERENCE_TOP_K", "INFERENCE_TOP_K")


def inference_top_k_from_environment(environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """k at inference (None: the training k). A prediction setting, read at every network construction."""
    raw = read_variable(INFERENCE_TOP_K, environ)
    return None if raw is None else parse_value(raw, int, INFERENCE_TOP_K.name)


@dataclass(frozen=True)
class WeightTransferSettings(SettingsGroup):
    """`make weights`: experts 1..E-1 start as the baseline's decoder with `reinit` of each of their layers' output
    channels drawn afresh (Drop-Upcycling) and the rest times (1 + noise x N(0, 1)); expert 0 is an exact copy."""
    noise: float = 1e-3
    reinit: float = 0.25  # measured on the demo (docs/results.md, "The share of re-initialised channels")

    ENVIRONMENT = {"noise": Variable("MOE_TRANSFER_NOISE", "TRANSFER_NOISE"),
                   "reinit": Variable("MOE_TRANSFER_REINIT", "TRANSFER_REINIT")}
    RECORD_DEFAULTS = {"reinit": 0.0}

    def __post_init__(self):
        if not 0 <= self.reinit <= 1 or self.noise < 0:
            raise ValueError(f"MOE_TRANSFER_REINIT={self.reinit} must be in [0, 1] and MOE_TRANSFER_NOISE="
                             f"{self.noise} >= 0")


PERTURBATION = Variable("PERTURBATION", "PERTURBATION")


@dataclass(frozen=True)
class PerturbationSettings(SettingsGroup):
    """Strengths of the strong view. Intensities are nnU-Net-normalised (CT: z-scores), sizes in voxels."""
    probability: float = 0.8      # chance that each intensity perturbation is applied to a sample
    noise_std: float = 0.1        # additive Gaussian noise, std drawn from [0, noise_std]
    blur_sigma: float = 1.0       # Gaussian blur, sigma drawn from [0.5, blur_sigma] (0: off)
    brightness: float = 0.0       # intensity x U(1 - b, 1 + b) (off: the first InstanceNorm undoes it)
    contrast: float = 0.0         # (x - mean) x U(1 - c, 1 + c) + mean (off: undone like brightness)
    gamma: float = 0.3            # gamma drawn from [1 / (1 + g), 1 + g] on the sample's [min, max] range
    lowres: float = 2.0           # down-sampled by a factor from [1, lowres] per axis, then back (1: off)
    cutmix: float = 0.5           # chance that a sample gets a box from another sample of the batch
    feature_dropout: float = 0.3  # channel dropout probability on the skips and the bottleneck

    @classmethod
    def from_string(cls, text: str) -> "PerturbationSettings":
        """'noise_std=0.2 cutmix=0' (spaces or commas between entries) -> the defaults with those overrides."""
        known = {f.name for f in fields(cls)}
        values = {}
        for entry in text.replace(",", " ").split():
            name, _, value = entry.partition("=")
            if name not in known or not value:
                raise ValueError(f"{PERTURBATION.name}: '{entry}' is not name=value with a name of "
                                 f"{', '.join(sorted(known))}")
            try:
                values[name] = float(value)
            except ValueError:
                raise ValueError(f"{PERTURBATION.name}: '{entry}': {value!r} is not a number") from None
            if values[name] < 0:
                raise ValueError(f"{PERTURBATION.name}: '{entry}': strengths are >= 0")
        for name in ("probability", "cutmix", "feature_dropout"):
            if values.get(name, 0) > 1 or (name == "feature_dropout" and values.get(name, 0) >= 1):
                raise ValueError(f"{PERTURBATION.name}: {name} is a probability, got {values[name]}")
        return replace(cls(), **values)

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None, **fixed) -> "PerturbationSettings":
        return replace(cls.from_string(read_variable(PERTURBATION, environ) or ""), **fixed)


CONSISTENCY_KINDS = ("weak_strong", "cps")
CONSISTENCY_VARIABLE = Variable("CONSISTENCY", "CONSISTENCY")
CONSISTENCY_TRAINERS = {"weak_strong": "nnUNetTrainerV2_moe", "cps": "nnUNetTrainerV2_moe_cps"}


@dataclass(frozen=True)
class ConsistencySettings(SettingsGroup):
    """The unlabelled term: its kind (the trainer's own: nnUNetTrainerV2_moe and the mean teacher weak_strong,
    nnUNetTrainerV2_moe_cps cps), the confidence threshold of the pseudo-labels, lambda(epoch) = 0 for
    warmup_epochs, then up to lambda_max over rampup_epochs."""
    kind: str = "weak_strong"
    threshold: float = 0.95
    lambda_max: float = 2.0
    warmup_epochs: int = 50
    rampup_epochs: int = 200
    perturbation: PerturbationSettings = field(default_factory=PerturbationSettings)

    ENVIRONMENT = {
        "threshold": Variable("CONSISTENCY_THRESHOLD", "CONFIDENCE_THRESHOLD", deprecated=("CONFIDENCE_THRESHOLD",)),
        "lambda_max": Variable("CONSISTENCY_LAMBDA_MAX", "LAMBDA_MAX", deprecated=("MOE_LAMBDA_MAX",)),
        "warmup_epochs": Variable("CONSISTENCY_WARMUP_EPOCHS", "WARMUP_EPOCHS", deprecated=("MOE_WARMUP_EPOCHS",)),
        "rampup_epochs": Variable("CONSISTENCY_RAMPUP_EPOCHS", "RAMPUP_EPOCHS", deprecated=("MOE_RAMPUP_EPOCHS",)),
    }

    def __post_init__(self):
        if self.kind not in CONSISTENCY_KINDS:
            raise ValueError(f"CONSISTENCY={self.kind!r}: expected one of {', '.join(CONSISTENCY_KINDS)}")
        if not 0 <= self.threshold < 1:
            raise ValueError(f"CONSISTENCY_THRESHOLD={self.threshold}: expected a probability in [0, 1)")
        if self.warmup_epochs < 0 or self.rampup_epochs < 0 or self.lambda_max < 0:
            raise ValueError(f"CONSISTENCY_WARMUP_EPOCHS={self.warmup_epochs}, CONSISTENCY_RAMPUP_EPOCHS="
                             f"{self.rampup_epochs} and CONSISTENCY_LAMBDA_MAX={self.lambda_max} must be >= 0")

    @classmethod
    def of_trainer(cls, kind: str, trainer: str, record: Optional[Mapping] = None) -> "ConsistencySettings":
        """A trainer's settings (from its checkpoint's `record` when given): the kind is the trainer's. CONSISTENCY,
        which chose the kind before each kind had its own trainer, is refused when it asks for another one."""
        if record is not None and "consistency" in record:
            return cls.from_record(record["consistency"])
        asked = read_variable(CONSISTENCY_VARIABLE)
        if asked is not None and asked != kind:
            raise ValueError(f"{CONSISTENCY_VARIABLE.name}={asked!r}: {trainer} trains {kind} consistency; the kind "
                             f"is the trainer's: {CONSISTENCY_TRAINERS.get(asked, 'no trainer')} trains {asked!r} "
                             f"(make semi MOE_TRAINER=...; make experiment METHODS=moe_cps)")
        return cls.from_environment(kind=kind)

    def as_dict(self) -> dict:
        return self.as_record()

    @classmethod
    def from_dict(cls, values: Mapping) -> "ConsistencySettings":
        return cls.from_record(values)


@dataclass(frozen=True)
class EMASettings(SettingsGroup):
    """The mean teacher: teacher <- decay x teacher + (1 - decay) x student after every optimiser step."""
    decay: float = 0.99

    ENVIRONMENT = {"decay": Variable("MT_EMA_DECAY", "EMA_DECAY")}

    def __post_init__(self):
        if not 0 <= self.decay < 1:
            raise ValueError(f"MT_EMA_DECAY={self.decay}: expected a decay in [0, 1)")


@dataclass(frozen=True)
class SelfTrainSettings(SettingsGroup):
    rounds: int = 1
    threshold: float = 0.8

    ENVIRONMENT = {"rounds": Variable("SELFTRAIN_ROUNDS", "SELFTRAIN_ROUNDS"),
                   "threshold": Variable("SELFTRAIN_THRESHOLD", "SELFTRAIN_THRESHOLD")}

    def __post_init__(self):
        if self.rounds < 1 or not 0 <= self.threshold <= 1:
            raise ValueError(f"SELFTRAIN_ROUNDS={self.rounds} must be >= 1 and SELFTRAIN_THRESHOLD="
                             f"{self.threshold} in [0, 1]")


def group_from(record: Optional[Mapping], name: str, group: Type[T], **fixed) -> T:
    """A trainer's group: from its stored settings (a checkpoint's .pkl) when given, else from the environment."""
    if record is not None and name in record:
        return group.from_record(record[name])
    return group.from_environment(**fixed)
