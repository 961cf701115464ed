"""Safe loading of the four model formats.

A full pickle is unpickled with ``weights_only=True`` and an allow-list made of the
``torch.nn`` module classes, so a file that needs any other global (its own classes, or a
payload such as ``os.system``) is refused before any of its code runs. ``--trust-code``
is the explicit opt-in for trusted files.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyprune.errors import ConfigError, UnsafeCode, UnsafePickle, UnsupportedModel

FORMATS = ("pickled-module", "state-dict", "torchscript", "exported-program")
READ_SECONDS = 30  # an untrusted archive is checked and loaded within this, or refused (exit 2)


@dataclass
class LoadedModel:
    """What was read from disk, before it is turned into an ``nn.Module`` (see ``lift``)."""

    obj: Any  # nn.Module, torch.jit.ScriptModule or torch.export.ExportedProgram
    format: str
    path: Path

    def callable(self):
        """Something to run a trial forward pass with (to check data against the model)."""
        if self.format == "exported-program":
            from tinyprune.lift import unpinned

            return unpinned(self.obj.module())  # the data's batch sizes, not the export's
        return self.obj


def _nn_allow_list() -> list[type]:
    import torch.nn as nn

    return [c for c in vars(nn).values() if inspect.isclass(c) and issubclass(c, nn.Module)]


def _zip_names(path: Path) -> list[str] | None:
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except Exception:  # BadZipFile, and NotImplementedError, ValueError... for tampered headers
        return None


def _kind(path: Path, names: list[str] | None) -> str:
    if names is None:
        return "pickle"  # legacy (non-zip) torch.save, or not a model at all
    if any(n.endswith("/archive_format") for n in names):  # torch.export.save (.pt2)
        return "exported-program"
    if any("/code/" in n for n in names):  # torch.jit.save keeps the TorchScript source
        return "torchscript"
    if any(n.endswith("data.pkl") for n in names):
        return "pickle"
    return "unknown"


@contextlib.contextmanager
def _cwd_importable():
    """The current folder on sys.path, as ``python script.py`` has it for the script's folder: a
    user's ``mynet.py`` beside the model imports without PYTHONPATH (the console script's own
    folder is on sys.path instead)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _module_from_file(file: str, spec: str):
    path = Path(file).expanduser()
    if not path.is_file():
        raise ConfigError(f"--arch {spec}: no file {path}")
    name = re.sub(r"\W", "_", path.stem)
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # its own imports of modules beside it
    sys.modules[name] = module  # its classes pickle and copy by this name
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ConfigError(f"--arch {spec}: running {path} failed ({type(exc).__name__}: {_first_line(exc)})") from None
    finally:
        sys.path.remove(folder)
    return module


def _import_factory(spec: str):
    mod_name, _, attr = spec.rpartition(":")
    if not mod_name or not attr:
        raise ConfigError(f"--arch must look like package.module:factory or path/to/file.py:factory, got {spec!r}")
    if mod_name.endswith(".py") or "/" in mod_name or "\\" in mod_name:
        module = _module_from_file(mod_name, spec)
    else:
        try:
            with _cwd_importable():
                module = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name and f"{mod_name}.".startswith(f"{exc.name}."):
                raise ConfigError(f"--arch: no module {mod_name!r} in the current folder or on PYTHONPATH; run from "
                                  f"the folder that holds it, or name its file: --arch path/to/"
                                  f"{mod_name.replace('.', '/')}.py:{attr}") from None
            raise ConfigError(f"--arch: importing {mod_name!r} failed: it needs {exc.name!r}, which is not "
                              "installed") from None
        except Exception as exc:
            raise ConfigError(f"--arch: importing {mod_name!r} failed ({type(exc).__name__}: {_first_line(exc)})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"--arch: {mod_name!r} has no callable {attr!r}")
    return factory


def _state_dict_of(obj: Any) -> dict | None:
    import torch

    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
    return None


def _build_from_arch(spec: str, state: dict, path: Path):
    import torch.nn as nn

    factory = _import_factory(spec)
    try:
        model = factory()
    except TypeError as exc:
        raise ConfigError(f"--arch {spec}: the factory must build the model with no arguments ({_first_line(exc)})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--arch {spec} returned {type(model).__name__}, not a torch.nn.Module")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise UnsupportedModel(f"{path.name} does not match --arch {spec}: {_first_line(exc)}") from None
    if result.missing_keys or result.unexpected_keys:
        raise UnsupportedModel(
            f"{path.name} does not match --arch {spec}: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
    return model


def _load_pickle(path: Path, arch: str | None, trust_code: bool) -> LoadedModel:
    import torch
    import torch.nn as nn

    try:
        if trust_code:
            with _cwd_importable():  # the classes of a model saved from a script in this folder
                obj = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals(_nn_allow_list()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.findall(r"GLOBAL ([\w.]+)", str(exc)) or _raw_pickle_globals(path)
        if found:
            raise UnsafePickle(
                f"refusing to unpickle {path.name}: it needs {found[0]}, which is not a torch.nn class "
                "(its code would run); save a state_dict and pass --arch package.module:factory, "
                "or pass --trust-code if you trust this file"
            ) from None
        raise UnsupportedModel(f"{path.name} is not a readable PyTorch file ({_first_line(exc)})") from None
    except ModuleNotFoundError as exc:  # the pickle names its classes' module; the file itself is fine
        missing = exc.name or "?"
        raise UnsupportedModel(
            f"{path.name} needs its classes from the module {missing!r}, which cannot be imported: run from the "
            f"folder that holds {missing.split('.')[0]}.py (or add that folder to PYTHONPATH), or save a state_dict "
            "and pass --arch path/to/file.py:factory") from None
    except AttributeError as exc:  # the module imports but lacks the class (e.g. one defined in __main__)
        found = re.search(r"Can't get attribute '([^']+)' on <module '([^']+)'", str(exc))
        if not found:
            raise UnsupportedModel(f"{path.name} is corrupt or truncated ({_first_line(exc)})") from None
        raise UnsupportedModel(
            f"{path.name} needs the class {found.group(1)} from the module {found.group(2)!r}, which does not define "
            "it" + (" (the class was defined in the script that saved the model: move it into a module file)"
                    if found.group(2) == "__main__" else "") + "; or save a state_dict and pass --arch "
            "path/to/file.py:factory") from None
    except Exception as exc:  # torch raises RuntimeError/EOFError/ValueError for corrupt archives
        raise UnsupportedModel(f"{path.name} is corrupt or truncated ({_first_line(exc)})") from None

    if isinstance(obj, nn.Module):
        return LoadedModel(obj, "pickled-module", path)
    state = _state_dict_of(obj)
    if state is not None:
        if arch is None:
            raise UnsupportedModel(
                f"{path.name} holds a state_dict (weights only): pass --arch package.module:factory "
                "naming a function that builds the model"
            )
        return LoadedModel(_build_from_arch(arch, state, path), "state-dict", path)
    raise UnsupportedModel(f"{path.name} holds a {type(obj).__name__}, not a model or a state_dict")


def _raw_pickle_globals(path: Path) -> list[str]:
    """Globals a plain (non-torch) pickle imports, read statically: nothing is executed."""
    import pickletools

    found, strings = [], []
    try:
        for op, arg, _ in pickletools.genops(path.read_bytes()):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(arg)
            elif op.name == "GLOBAL":
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # not a pickle stream at all: the caller reports the file as unreadable
        pass
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _load_exported(path: Path):
    import torch

    from tinyprune.limits import is_allocation_failure
    from tinyprune.pt2_inspect import read_pt2
    from tinyprune.pt2_names import check_program

    archive = read_pt2(path)  # the checked bytes: torch.export.load can run code from the archive
    try:
        program = torch.export.load(archive)
    except Exception as exc:
        if is_allocation_failure(exc):
            raise  # the memory cap: ``limits.bounded`` reports it
        raise UnsupportedModel(f"{path.name} is not a loadable torch.export program ({_first_line(exc)})") from None
    check_program(program, path.name)  # before ExportedProgram.module() turns the names into code
    return program


def check_model_file(path: str | Path) -> Path:
    """The path, if it names a non-empty file; else UnsupportedModel saying what is wrong."""
    path = Path(path)
    if not path.exists():
        raise UnsupportedModel(f"model file not found: {path}")
    if path.is_dir():
        raise UnsupportedModel(f"{path} is a directory; give a model file")
    if path.stat().st_size == 0:
        raise UnsupportedModel(f"model file {path} is empty")
    return path


def load_model(path: str | Path, *, arch: str | None = None, trust_code: bool = False) -> LoadedModel:
    path = check_model_file(path)

    import torch

    from tinyprune import limits

    with limits.bounded(f"reading {path.name}", READ_SECONDS):
        names = _zip_names(path)
        if names is None and path.read_bytes()[:4] == b"PK\x03\x04":
            raise UnsupportedModel(f"{path.name} is corrupt or truncated (a zip archive without its directory)")
        kind = _kind(path, names)
        if kind == "exported-program":
            return LoadedModel(_load_exported(path), "exported-program", path)
    if kind == "torchscript":
        if not trust_code:
            raise UnsafeCode(f"{path.name} is TorchScript, which runs its own code; pass --trust-code if you trust "
                             "this file, or save the model with torch.export.save (checked before loading)")
        try:
            return LoadedModel(torch.jit.load(path, map_location="cpu"), "torchscript", path)
        except Exception as exc:
            raise UnsupportedModel(f"{path.name} is not a loadable TorchScript file ({_first_line(exc)})") from None
    if kind == "pickle":
        if names is None and path.read_bytes()[:1] not in (b"\x80", b"(", b"}", b"]"):
            raise UnsupportedModel(
                f"{path.name} is not a PyTorch model (expected torch.save, TorchScript or a .pt2 export)"
            )
        return _load_pickle(path, arch, trust_code)
    raise UnsupportedModel(f"{path.name} is a zip archive but not a PyTorch model")
