"""Structured pruning: criteria (``tinyprune.prune.protocol``, one module each in ``criteria/``)
and physical channel removal to a MAC target (``structured``). Attributes load lazily, so
importing the protocol to validate flags does not import torch."""

_LAZY = {"prune_to_macs": "structured", "PruneResult": "structured", "prune": "structured",
         "CRITERIA": "protocol", "register": "protocol", "Criterion": "protocol"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        if name == "CRITERIA":
            module.names()  # registers every criterion
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
