"""Arm Ethos-U microNPU targets: the int8 model compiled by Vela, and what Vela's performance
model says it costs.

Vela (``ethos-u-vela``, the optional ``vela`` extra) compiles the TFLite model for one NPU
configuration: the operators it supports become one ``ethos-u`` custom operator holding the
command stream and the encoded weights; the rest stay TFLite operators that the host Cortex-M
runs (they are priced by the CPU model, ``tinyprune.measure.deployed``). What is read back:
the compiled flatbuffer (what goes in flash), the SRAM its feature maps use (the tensor arena),
and the NPU cycles in total and per operator, from Vela's summary CSV and its
``--verbose-performance`` table. Vela's cycles are a model of the NPU, not a measurement; no
hardware was available here to check them.
"""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from tinyprune.errors import ConfigError, ExportError

EXTRA = "pip install 'tinyprune[vela]'"
TIMEOUT_S = 600


@dataclass(frozen=True)
class VelaResult:
    model: bytes  # the compiled flatbuffer: what the firmware holds in flash
    accelerator: str
    system_config: str
    memory_mode: str
    npu_clock_hz: float
    npu_cycles: int  # Vela's estimate for one inference, memory accesses included
    sram_bytes: int  # feature maps and scratch: the tensor arena
    flash_bytes: int  # what Vela places in flash (encoded weights, command stream)
    npu_ops: int
    cpu_ops: tuple[str, ...]  # operators left to the host CPU
    layers: tuple[dict, ...] = field(default=(), hash=False)

    def to_dict(self) -> dict:
        return {"accelerator": self.accelerator, "system_config": self.system_config, "memory_mode": self.memory_mode,
                "npu_clock_hz": self.npu_clock_hz, "npu_cycles": self.npu_cycles, "sram_bytes": self.sram_bytes,
                "flash_bytes": self.flash_bytes, "compiled_bytes": len(self.model), "npu_ops": self.npu_ops,
                "cpu_ops": list(self.cpu_ops), "layers": list(self.layers),
                "source": "Vela's performance model (not measured on hardware)"}


def available() -> bool:
    try:
        import ethosu.vela  # noqa: F401
    except ImportError:
        return False
    return True


def require(target) -> None:
    """One line naming the extra when an Ethos-U target is asked for without Vela."""
    if not available():
        raise ConfigError(f"target {target.name} needs Arm's Vela compiler: {EXTRA}")


def compile_model(model_bytes: bytes, target) -> VelaResult:
    """``model_bytes`` compiled by Vela for ``target``'s NPU (cached per model and configuration)."""
    require(target)
    return _compile(hashlib.sha256(model_bytes).hexdigest(), model_bytes, target.npu, target.npu_system_config,
                    target.npu_memory_mode)


@lru_cache(maxsize=32)
def _compile(digest: str, model_bytes: bytes, accelerator: str, system: str, memory: str) -> VelaResult:
    with tempfile.TemporaryDirectory(prefix="tinyprune-vela-") as tmp:
        src = Path(tmp) / "model.tflite"
        src.write_bytes(model_bytes)
        out = Path(tmp) / "out"
        # a child process: Vela prints as it goes and holds the whole graph; it must not take ours down
        cmd = [sys.executable, "-c", "import sys; from ethosu.vela.vela import main; sys.exit(main())", str(src),
               "--accelerator-config", accelerator,
               "--config", _config_file(), "--system-config", system, "--memory-mode", memory,
               "--output-dir", str(out), "--verbose-performance"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ExportError(f"Vela took longer than {TIMEOUT_S} s to compile the model") from None
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise ExportError(f"Vela could not compile the model: {lines[-1] if lines else done.returncode}")
        compiled = (out / "model_vela.tflite").read_bytes()
        summary = next(out.glob("model_summary_*.csv"))
        row = next(csv.DictReader(summary.open()))
    kib = 1024
    flash = (float(row.get("off_chip_flash_memory_used") or 0) + float(row.get("on_chip_flash_memory_used") or 0))
    return VelaResult(model=compiled, accelerator=accelerator, system_config=system, memory_mode=memory,
                      npu_clock_hz=float(row["core_clock"]), npu_cycles=int(float(row["cycles_total"])),
                      sram_bytes=int(round(float(row["sram_memory_used"]) * kib)), flash_bytes=int(round(flash * kib)),
                      npu_ops=_count(done.stdout, "NPU operators"), cpu_ops=tuple(_cpu_ops(compiled)),
                      layers=tuple(_layers(done.stdout)))


@lru_cache(maxsize=1)
def _config_file() -> str:
    from importlib import resources

    return str(resources.files("ethosu") / "config_files" / "Arm" / "vela.ini")


def _count(text: str, label: str) -> int:
    for line in text.splitlines():
        if line.strip().startswith(label):
            return int(line.split("=")[1].split()[0])
    return 0


def _cpu_ops(compiled: bytes) -> list[str]:
    from tinyprune.measure.graph import read_graph

    return [op.op for op in read_graph(compiled).ops if op.op != "ethos-u"]


def _layers(text: str) -> list[dict]:
    """Vela's per-operator table (``--verbose-performance``): original op, NPU op, cycles, MACs."""
    rows, inside = [], False
    for line in text.splitlines():
        if line.startswith("Original Operator"):
            inside = True
            continue
        if not inside or line.startswith("---"):
            continue
        parts = line.split()
        if len(parts) < 16 or parts[2] not in ("NPU", "CPU"):
            if rows:
                break
            continue
        rows.append({"op": parts[0], "npu_op": parts[1], "target": parts[2], "cycles": int(parts[5]),
                     "macs": int(parts[12]), "name": " ".join(parts[15:])})
    return rows
