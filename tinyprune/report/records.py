"""Frozen records: one per pipeline stage, and the report that gathers them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class StageRecord:
    name: str  # original | pruned | finetuned | int8 | int8_lut | weight_pruned | clustered | huffman
    params: int  # stored parameters (what the model holds, zeros included)
    macs: int
    accuracy: float | None  # on the held-out split; None where not measured
    seconds: float  # wall time the stage took
    flash_bytes: int | None = None  # int8 stage: flatbuffer size
    arena_bytes: int | None = None  # int8 stage: smallest TFLM arena that runs the model
    details: dict[str, Any] = field(default_factory=dict)
    nonzero_params: int | None = None  # stored parameters that are not zero; None where not countable
    # the task's metrics (tinyprune.task): accuracy, or r2/mse/mae, or auc/mse; ``accuracy`` above
    # holds the task's score (accuracy, R², ROC AUC or explained variance)
    quality: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Report:
    tool_version: str
    model: dict
    data: dict
    target: dict
    config: dict
    stages: list[StageRecord]
    layers: list[dict]
    artifacts: list[str]
    compression: dict | None = None  # Deep Compression archive (--archive): sizes, ratios, per-layer table
    deployed: dict | None = None  # the artifact that goes on the device, its cost, the accuracy budget
    fit: dict | None = None  # compress --fit: the budgets, every trial, which was chosen
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, d: dict) -> Report:
        """The inverse of ``to_dict`` (``fits_target`` is derived from the rest, not read)."""
        return cls(tool_version=d["tool_version"], model=d["model"], data=d["data"], target=d["target"],
                   config=d["config"], stages=[StageRecord(**s) for s in d["stages"]], layers=d["layers"],
                   artifacts=d["artifacts"], compression=d.get("compression"), deployed=d.get("deployed"),
                   fit=d.get("fit"), schema_version=d.get("schema_version", SCHEMA_VERSION))

    def stage(self, name: str) -> StageRecord:
        return next(s for s in self.stages if s.name == name)

    def costs(self, stage: str | None = None):
        """The deployed costs (``tinyprune.measure.deployed``) of ``stage``, by default the model that
        goes on the device: what the firmware takes, computed once by ``measure``."""
        from tinyprune.measure.deployed import of

        name = stage or (self.deployed["stage"] if self.deployed else "int8")
        return of(self.stage(name).details.get("measure"))

    @property
    def fits(self) -> dict:
        """Whether the deployed model's firmware fits the target (the deployed costs' rule)."""
        c = self.costs()
        return {"flash": c.fits_flash, "ram": c.fits_ram} if c else {"flash": None, "ram": None}

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "tool_version": self.tool_version,
            "model": self.model,
            "data": self.data,
            "target": self.target,
            "config": self.config,
            "stages": [s.to_dict() for s in self.stages],
            "layers": self.layers,
            "fits_target": self.fits,
            "compression": self.compression,
            "deployed": self.deployed,
            "fit": self.fit,
            "artifacts": self.artifacts,
        }
