"""Microcontroller targets, one validated TOML file each (schema in SCHEMA.md)."""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path

from tinyprune.errors import ConfigError

# keys of the per-target cost model that the device model (targets/device_model.toml) replaced
_RETIRED = ("macs_per_cycle", "macs_per_cycle_reference", "float_macs_per_cycle", "cycles_per_element",
            "cycles_per_element_reference", "op_overhead_cycles", "runtime_flash_bytes", "runtime_ram_bytes")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    reference_board: str
    flash_bytes: int
    ram_bytes: int
    clock_hz: int
    fpu: bool
    # --- what the device model does not cover (see SCHEMA.md)
    kernels: str = ""
    pj_per_cycle: float = 0.0
    pj_per_cycle_low: float = 0.0
    pj_per_cycle_high: float = 0.0
    energy_source: str = ""
    # a RAM region apart from the one that holds the arena (a TCM, a second SRAM bank) where TFLM's
    # alternate decompression memory can put the decoded weights of a LUT model; 0: none
    decompression_ram_bytes: int = 0
    tflm_ops: tuple = ()
    tflm_custom_ops: tuple = ()
    calibration: str = ""
    # an Arm Ethos-U microNPU beside the core (tinyprune.measure.npu): Vela's accelerator
    # configuration, system configuration and memory mode; the host core runs what the NPU cannot
    npu: str = ""
    npu_system_config: str = ""
    npu_memory_mode: str = ""
    host_core: str = ""
    # the known target this one is based on (a user's board file: base = "cortex-m4"), whose core
    # the runtime cost models are looked up by (tinyprune.measure.runtimes)
    base: str = ""
    # the inference engine latency is predicted for (tinyprune.measure.runtimes); "" = the default
    runtime: str = ""
    runtime_choice: str = ""  # how the name the user wrote resolved ("runtime x-cube-ai -> x-cube-ai 9.0")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tflm_ops"] = list(self.tflm_ops)
        d["tflm_custom_ops"] = list(self.tflm_custom_ops)
        for key in ("base", "runtime", "runtime_choice", "npu", "npu_system_config", "npu_memory_mode", "host_core"):
            if not d[key]:
                del d[key]  # a target file of its own (what the schema describes)
        return d

    def supports(self, op: str) -> bool:
        """Whether the target's TFLM build has a kernel for ``op`` (builtin name or custom code)."""
        return op in self.tflm_ops or op in self.tflm_custom_ops


_FIELDS = {
    "name": str,
    "description": str,
    "reference_board": str,
    "flash_bytes": int,
    "ram_bytes": int,
    "clock_hz": int,
    "fpu": bool,
    "kernels": str,
    "pj_per_cycle": float,
    "pj_per_cycle_low": float,
    "pj_per_cycle_high": float,
    "energy_source": str,
    "tflm_ops": "ops",
    "tflm_custom_ops": "ops",
    "calibration": str,
}
# keys a target file may leave out, with the value they then take
_OPTIONAL = {"decompression_ram_bytes": ("count", 0), "npu": (str, ""), "npu_system_config": (str, ""),
             "npu_memory_mode": (str, ""), "host_core": (str, "")}


def _files() -> dict[str, resources.abc.Traversable]:
    folder = resources.files("tinyprune.target_files")
    # device_model.toml beside them holds the device cost model (tinyprune.measure.instructions)
    return {f.name[: -len(".toml")]: f for f in folder.iterdir()
            if f.name.endswith(".toml") and f.name != "device_model.toml"}


def names() -> list[str]:
    return sorted(_files())


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check(where: str, key: str, kind, value):
    # bool is a subclass of int: do not let `flash_bytes = true` through.
    if kind is float:
        if not _is_number(value) or value <= 0:
            raise ConfigError(f"{where}: '{key}' must be a number > 0, got {value!r}")
        return float(value)
    if kind == "count":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{where}: '{key}' must be an integer >= 0, got {value!r}")
        return value
    if kind == "ops":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where}: '{key}' must be a list of op names, got {value!r}")
        return tuple(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: '{key}' must be {kind.__name__}, got {value!r}")
    if kind is int and value <= 0:
        raise ConfigError(f"{where}: '{key}' must be > 0, got {value}")
    return value


def _check_energy(where: str, values: dict) -> None:
    if not values["pj_per_cycle_low"] <= values["pj_per_cycle"] <= values["pj_per_cycle_high"]:
        raise ConfigError(f"{where}: pj_per_cycle must lie within pj_per_cycle_low..pj_per_cycle_high")


def _validate(stem: str, raw: dict, own_file: bool = False) -> Target:
    where = f"target file {stem}.toml"
    retired = [k for k in _RETIRED if k in raw]
    if retired:
        raise ConfigError(f"{where}: {', '.join(retired)} no longer used: latency, flash and RAM come from the device "
                          "model now; remove the key(s) (see targets/SCHEMA.md)")
    unknown = sorted(set(raw) - set(_FIELDS) - set(_OPTIONAL))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; see targets/SCHEMA.md")
    values = {}
    for key, kind in _FIELDS.items():
        if key not in raw:
            raise ConfigError(f"{where}: missing key '{key}'; see targets/SCHEMA.md")
        values[key] = _check(where, key, kind, raw[key])
    for key, (kind, default) in _OPTIONAL.items():
        values[key] = _check(where, key, kind, raw[key]) if key in raw else default
    if raw["name"] != stem and not own_file:
        raise ConfigError(f"{where}: name '{raw['name']}' does not match the file name")
    _check_energy(where, values)
    if values["npu"] and not (values["npu_system_config"] and values["npu_memory_mode"] and values["host_core"]):
        raise ConfigError(f"{where}: an npu needs npu_system_config, npu_memory_mode and host_core")
    return Target(**values)


def _load_file(path: Path) -> Target:
    """A user's own board: a TOML file with every key of SCHEMA.md, or ``base = "<known target>"``
    and the keys that differ from it (clock_hz, flash_bytes, ram_bytes...)."""
    if not path.is_file():
        raise ConfigError(f"target file {path} not found")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"target file {path.name} is not valid TOML: {str(exc).splitlines()[0]}") from None
    base, runtime = raw.pop("base", None), raw.pop("runtime", "")
    if base is not None:
        files = _files()
        if not isinstance(base, str) or base not in files:
            raise ConfigError(f"target file {path.name}: base must be one of {', '.join(sorted(files))}, got {base!r}")
        raw = {**tomllib.loads(files[base].read_text()), "name": path.stem, **raw}
    raw.setdefault("name", path.stem)
    target = replace(_validate(path.stem, raw, own_file=True), base=base or "")
    return configure(target, runtime=runtime or None)


def configure(target: Target, runtime: str | None = None, clock_mhz: float | None = None) -> Target:
    """``target`` at another clock and/or predicting latency for another runtime (checked: the
    runtime must be known and have a model for the target's core)."""
    if clock_mhz is not None:
        if isinstance(clock_mhz, bool) or not isinstance(clock_mhz, (int, float)) or not clock_mhz > 0:
            raise ConfigError(f"--clock-mhz must be > 0, got {clock_mhz!r}")
        target = replace(target, clock_hz=int(round(clock_mhz * 1e6)))
    if target.npu:  # before any slow work: one line naming the extra when Vela is missing
        from tinyprune.measure.npu import require

        require(target)
    if runtime:
        from tinyprune.measure import runtimes

        name, choice = runtimes.resolve(runtime)
        target = replace(target, runtime=name, runtime_choice=choice)
    return target


def load(name: str) -> Target:
    if name.endswith(".toml") or "/" in name:
        return _load_file(Path(name))
    files = _files()
    if name not in files:
        raise ConfigError(f"unknown target '{name}'; known targets: {', '.join(sorted(files))}")
    try:
        raw = tomllib.loads(files[name].read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"target file {name}.toml is not valid TOML: {exc}") from None
    return _validate(name, raw)
