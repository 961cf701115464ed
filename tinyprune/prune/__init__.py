"""Structured pruning: importance criteria (by name) and physical channel removal."""

from tinyprune.prune.criteria import CRITERIA, Criterion, get_criterion, register
from tinyprune.prune.structured import PruneResult, prune_to_macs

__all__ = ["CRITERIA", "Criterion", "get_criterion", "register", "PruneResult", "prune_to_macs"]
