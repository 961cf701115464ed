"""What the pipeline's stages pass along (``tinyprune.api.STAGES``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tinyprune.train import Progress

TIMING_REPEATS = 10


@dataclass
class RunState:
    """What the stages pass along. Each stage reads what earlier stages set and adds its own."""

    source: object  # tinyprune.api.ModelSource
    target: object
    tmp: Path  # the staging folder; published to ``out`` when every stage succeeded
    progress: Progress
    data_path: Path | None = None
    builtin_data: bool = False
    loaded: object = None
    splits: object = None
    example: object = None
    model: object = None  # the current float model
    source_model: object = None  # the loaded model, before pruning
    pruned: object = None  # PruneResult
    layers: list = field(default_factory=list)
    deep: object = None  # Deep Compression archive result (--archive)
    sharing: object = None  # the deployable weight-sharing plan (tinyprune.deepcompress.deploy.Plan)
    finetuned: object = None  # the fine-tuned float model, before any weight sharing
    int8: dict = field(default_factory=dict)  # int8 flatbuffer and what verifying it produced
    records: list = field(default_factory=list)
    artifacts: list = field(default_factory=list)  # files written, in stage order

    def write(self, name: str, content: bytes | str) -> None:
        """Write an artifact into the staging folder and declare it."""
        path = self.tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        self.declare(name)

    def declare(self, *names: str) -> None:
        self.artifacts.extend(n for n in names if n not in self.artifacts)




def measure(model, state: RunState, **kw) -> dict:
    from tinyprune.measure.core import measure_stage

    return measure_stage(model, state.target, repeats=TIMING_REPEATS, **kw)
