"""Microcontroller targets, one validated TOML file each (schema in SCHEMA.md)."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from importlib import resources

from tinyprune.errors import ConfigError


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    reference_board: str
    flash_bytes: int
    ram_bytes: int
    clock_hz: int
    fpu: bool

    def to_dict(self) -> dict:
        return asdict(self)


_FIELDS = {
    "name": str,
    "description": str,
    "reference_board": str,
    "flash_bytes": int,
    "ram_bytes": int,
    "clock_hz": int,
    "fpu": bool,
}


def _files() -> dict[str, resources.abc.Traversable]:
    folder = resources.files(__name__)
    return {f.name[: -len(".toml")]: f for f in folder.iterdir() if f.name.endswith(".toml")}


def names() -> list[str]:
    return sorted(_files())


def _validate(stem: str, raw: dict) -> Target:
    where = f"target file {stem}.toml"
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; see targets/SCHEMA.md")
    for key, kind in _FIELDS.items():
        if key not in raw:
            raise ConfigError(f"{where}: missing key '{key}'; see targets/SCHEMA.md")
        value = raw[key]
        # bool is a subclass of int: do not let `flash_bytes = true` through.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: '{key}' must be {kind.__name__}, got {value!r}")
        if kind is int and value <= 0:
            raise ConfigError(f"{where}: '{key}' must be > 0, got {value}")
    if raw["name"] != stem:
        raise ConfigError(f"{where}: name '{raw['name']}' does not match the file name")
    return Target(**raw)


def load(name: str) -> Target:
    files = _files()
    if name not in files:
        raise ConfigError(f"unknown target '{name}'; known targets: {', '.join(sorted(files))}")
    try:
        raw = tomllib.loads(files[name].read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"target file {name}.toml is not valid TOML: {exc}") from None
    return _validate(name, raw)
