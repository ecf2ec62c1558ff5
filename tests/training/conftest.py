"""Fixtures of the training tests: a tiny digits split and a linear probe on the shipped model."""

from __future__ import annotations

import pytest

#: The linear probe on the shipped digits model (32 px): one tap, one timestep.
LINEAR_DIGITS = {"taps": ["mid_block"], "timesteps": [50], "head": {"type": "linear", "pool": 2}}


def linear_classifier(labels, seed: int = 0):
    """A freshly initialised (seeded) linear probe on ``diffperception:default``."""
    import torch

    from diffperception.modeling import load_preset
    from diffperception.training import classifier_from_config

    torch.manual_seed(seed)
    return classifier_from_config(load_preset("digits-default"), labels=labels,
                                  head=LINEAR_DIGITS["head"], taps=LINEAR_DIGITS["taps"],
                                  timesteps=LINEAR_DIGITS["timesteps"])


@pytest.fixture(scope="session")
def digits_small():
    """``(train, test)``: 4 and 2 digits per class, drawn with seed 0."""
    from diffperception.training import load_split

    return load_split("digits", "train", shots=4), load_split("digits", "test", shots=2)
