"""Shared fixtures: the built-in digits and small models trained on them (cached per session)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinyprune.config import DataConfig, FinetuneConfig
from tinyprune.data import builtin_digits, prepare
from tinyprune.testing import MODELS
from tinyprune.train import fit


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The suite runs as two xdist workers on two cores (`make test`): a second intra-op thread per
    worker only spins. On tiny models it made small eigendecompositions 2-18x slower under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def analysis_cache(tmp_path_factory):
    """Runs of the suite (and the CLI processes they start) keep analyses in a folder of their own,
    not in the user's ~/.cache."""
    import os

    path = tmp_path_factory.mktemp("analysis-cache")
    old = os.environ.get("TINYPRUNE_CACHE")
    os.environ["TINYPRUNE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("TINYPRUNE_CACHE", None)
    else:
        os.environ["TINYPRUNE_CACHE"] = old


@pytest.fixture(scope="session")
def digits():
    return builtin_digits()


@pytest.fixture(scope="session")
def trained(digits):
    """name -> model trained for a few epochs on the digits (good enough for int8 checks)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            torch.manual_seed(0)
            model = MODELS[name]()
            splits = prepare(digits, model.eval(), DataConfig(), seed=0)
            cache[name] = fit(model, splits.x_train, splits.y_train, FinetuneConfig(epochs=6, lr=3e-3), seed=0)
        return cache[name]

    return get


@pytest.fixture
def digits_npz(tmp_path, digits):
    """The digits as a user would bring them: NHWC images in an .npz with x/y."""
    path = tmp_path / "digits.npz"
    np.savez(path, x=digits.x_train.transpose(0, 2, 3, 1), y=digits.y_train)
    return path
