"""Shared fixtures: tiny synthetic datasets (made once per session)."""

from __future__ import annotations

import pytest

from kubedistill.data.synth import make_synth


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """16 train / 8 val images at 64 px: enough to run training steps, not to learn."""
    return make_synth(tmp_path_factory.mktemp("tiny"), train=16, val=8, imgsz=64, seed=0, names=("circle", "square"), min_size=8)


@pytest.fixture(scope="session")
def easy_data(tmp_path_factory):
    """The learning test's set: 2 classes, objects of 12 px and up, at most 3 per image, 96 px."""
    return make_synth(tmp_path_factory.mktemp("easy"), train=160, val=40, imgsz=96, seed=1,
                      names=("circle", "square"), min_size=12, max_objects=3)


TINY_TRAIN = dict(imgsz=64, batch=8, nbs=8, workers=0, optimizer="AdamW", lr0=0.002, warmup_epochs=0.5, verbose=False)
