"""The criterion protocol: one extension point for every way of choosing what to remove.

A criterion is a class registered with :func:`register`, built from its own frozen config
dataclass (``Config``; every field has a default). For one run, ``prune_to_macs`` calls

* ``prepare(model, ctx) -> Step | None``: optional work before the MAC loop (train gates,
  remove skip-units, prune by MI preservation). The returned :class:`Step` carries the model,
  the identities of the output channels that remain in the layers it touched, and the
  criterion's own record, which goes verbatim into the pruned stage's details in report.json;
* ``importance(model, ctx, step) -> torch-pruning Importance``: ranks channels for the MAC loop.

Command-line flags follow from the config: field ``gamma`` of criterion ``vib`` is
``--vib-gamma``. Adding a criterion means adding one module to ``tinyprune/prune/criteria/``.
This module imports neither torch nor numpy, so listing criteria and validating flags is instant.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from tinyprune.errors import ConfigError


@dataclass(frozen=True)
class NoOptions:
    """A criterion without options."""


@dataclass
class Context:
    """What a criterion may use. Analysis samples (``x``, ``y``) come from the training split."""

    seed: int
    x: Any  # analysis inputs [N, ...] (numpy)
    y: Any  # their targets [N] (class labels, regression targets, or the input for reconstruction)
    classes: int
    sparsity: float  # fraction of MACs to remove
    x_train: Any = None  # the whole training split, for criteria that train (default: x, y)
    y_train: Any = None
    # retrain(model, label) -> model: a fine-tune with the run's settings (between MSPIC stages)
    retrain: Callable | None = None
    progress: Callable[[int, int, str], None] | None = None
    cache_dir: Any = None  # where measurements of a model on x are stored for reuse (None: not stored)
    # a discrete variable for I(channel; Y) on tasks without classes (tinyprune.task.information_labels)
    labels: Any = None

    @property
    def info_labels(self):
        """What label-MI criteria measure information about: ``labels`` when set, else ``y``."""
        return self.labels if self.labels is not None else self.y

    def train_data(self):
        return (self.x_train, self.y_train) if self.x_train is not None else (self.x, self.y)


@dataclass
class Step:
    """A criterion's pruning before the MAC loop."""

    model: Any
    kept: dict[str, list[int]] = field(default_factory=dict)  # layer -> original ids of remaining outputs
    record: dict = field(default_factory=dict)  # copied into report.json, stages[pruned].details


class Criterion:
    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type] = NoOptions
    global_ranking: ClassVar[bool] = False  # one ranking across layers, or the same ratio per layer
    # task kinds it serves (tinyprune.task); criteria that measure information about class labels
    # serve classify only
    tasks: ClassVar[tuple[str, ...]] = ("classify", "regress", "reconstruct")

    def __init__(self, config=None):
        self.config = config if config is not None else self.Config()

    def prepare(self, model, ctx: Context) -> Step | None:
        return None

    def importance(self, model, ctx: Context, step: Step):
        raise NotImplementedError


CRITERIA: dict[str, type[Criterion]] = {}


def register(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator: make ``cls`` available as ``--criterion cls.name``."""
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"{cls.__name__}.Config must be a dataclass")
    CRITERIA[cls.name] = cls
    return cls


def _load_all() -> None:
    import tinyprune.prune.criteria  # noqa: F401  (registers every module of the package)


def names() -> list[str]:
    _load_all()
    return list(CRITERIA)


def get(name: str) -> type[Criterion]:
    _load_all()
    if name not in CRITERIA:
        raise ConfigError(f"unknown criterion '{name}'; known criteria: {', '.join(sorted(CRITERIA))}")
    return CRITERIA[name]


def check_task(criterion: str, kind: str) -> None:
    """A criterion that cannot serve the task kind is a config error naming the ones that can."""
    if kind not in get(criterion).tasks:
        able = sorted(n for n, c in CRITERIA.items() if kind in c.tasks and not n.startswith("_"))
        raise ConfigError(f"--criterion {criterion} needs class labels (it measures information about them); "
                          f"for --task {kind} use one of {', '.join(able)}")  # mi: about information_labels


def flag(criterion: str, option: str) -> str:
    return f"--{criterion}-{option.replace('_', '-')}"


def option_flags() -> dict[str, tuple[str, str, Any]]:
    """Every criterion option as a command-line flag: flag -> (criterion, field, default)."""
    _load_all()
    out = {}
    for name, cls in CRITERIA.items():
        for f in dataclasses.fields(cls.Config):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out[flag(name, f.name)] = (name, f.name, default)
    return out


def option_flags_of(criterion: str) -> list[str]:
    return [f for f, (c, _, _) in option_flags().items() if c == criterion]


def _coerce(value, default, where: str):
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} takes true or false, got {value!r}")
    if isinstance(default, int):
        try:
            out = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be an integer, got {value!r}") from None
        if out != value and not isinstance(value, str):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return out
    if isinstance(default, float):
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
        if not math.isfinite(out):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return out
    return value


def build_config(criterion: str, options: dict[str, Any] | None = None):
    """The criterion's config from ``{field: value}``; one line naming the problem otherwise."""
    cls = get(criterion)
    options = dict(options or {})
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    unknown = [k for k in options if k not in fields]
    if unknown:
        owners = [c for c, cc in CRITERIA.items() if unknown[0] in {f.name for f in dataclasses.fields(cc.Config)}]
        hint = f" (it belongs to --criterion {', '.join(owners)})" if owners else ""
        known = ", ".join(flag(criterion, f) for f in fields) or "none"
        raise ConfigError(f"{flag(criterion, unknown[0])} is not an option of --criterion {criterion}{hint}; "
                          f"its options: {known}")
    values = {}
    for k, v in options.items():
        f = fields[k]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        values[k] = _coerce(v, default, flag(criterion, k)) if default is not None else v
    try:
        return cls.Config(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--criterion {criterion}: {exc}") from None


def build(criterion: str, config=None) -> Criterion:
    cls = get(criterion)
    return cls(config if config is not None else cls.Config())
