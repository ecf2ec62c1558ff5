"""The head contract: registry, config checked against the signature, and the linear probe
against a plain PyTorch transcription of the paper's layer list."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffperception.features.taps import FeatureInfo
from diffperception.heads import Head, HeadOutput, build_head, list_heads, register_head


def _info(name: str, channels: int, t: int = 1, layout: str = "map") -> FeatureInfo:
    return FeatureInfo(name=name, module=name, kind="out", layout=layout, channels=channels,
                       stride=16, num_timesteps=t)


INFO = {"b24": _info("b24", 16), "mid": _info("mid", 8, t=2),
        "attn": _info("attn", 4, layout="attention")}


def test_registry_lists_the_shipped_heads():
    assert {"identity", "linear"} <= set(list_heads())
    with pytest.raises(ValueError, match=r"'lineer' is not a registered head\. Did you mean \['linear'\]"):
        build_head({"type": "lineer"}, INFO, num_labels=3)


@pytest.mark.parametrize("config,message", [
    ({"type": "linear", "pool": 2, "poool": 3},
     r"config\['head'\]\['poool'\] = 3 is invalid: the 'linear' head takes \['hidden_sizes', 'pool', 'taps'\]"),
    ({"type": "linear", "pool": 0, "taps": ["b24"]}, r"config\['head'\]\['pool'\] = 0 is invalid"),
    ({"type": "linear", "taps": ["b25"]}, r"\['b25'\] are not taps of the backbone"),
    ({"type": "linear", "taps": ["attn"]}, r"takes \['map'\] taps; \['attn \(attention\)'\]"),
    ({"type": "linear", "num_labels": 4}, r"config\['head'\]\['num_labels'\] = 4 is invalid"),
    ({"pool": 2}, r"'type' key naming a registered head"),
])
def test_bad_head_configs_name_key_value_and_allowed(config, message):
    with pytest.raises(ValueError, match=message):
        build_head(config, INFO, num_labels=3)


def test_a_task_argument_the_model_must_supply():
    with pytest.raises(ValueError, match=r"needs \['num_labels'\] from the task model"):
        build_head({"type": "linear", "taps": ["b24"]}, INFO)


class GDProbe(nn.Module):
    """S001 §4.1 / DSSL --head_type linear --pre_pool_size 2, written out: AdaptiveAvgPool2d(2)
    -> flatten -> Linear(C*2*2, classes), no normalisation."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(channels * 4, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))


def test_linear_head_is_the_gd_probe():
    torch.manual_seed(0)
    head = build_head({"type": "linear", "pool": 2, "taps": ["b24"]}, INFO, num_labels=5)
    ref = GDProbe(16, 5)
    ref.fc.load_state_dict(head.classifier.state_dict())
    x = torch.randn(3, 16, 9, 7)
    labels = torch.tensor([0, 4, 2])
    out = head({"b24": x, "mid": torch.randn(3, 2, 8, 4, 4)}, labels=labels)
    assert isinstance(out, HeadOutput)
    assert torch.allclose(out.logits, ref(x), atol=1e-6)
    assert torch.allclose(out.loss, F.cross_entropy(ref(x), labels), atol=1e-6)
    assert sum(p.numel() for p in head.parameters()) == 16 * 4 * 5 + 5


def test_linear_head_over_taps_and_timesteps_and_as_mlp():
    torch.manual_seed(0)
    head = build_head({"type": "linear", "pool": 1, "taps": ["mid", "b24"], "hidden_sizes": [7]},
                      INFO, num_labels=2)
    mid, b24 = torch.randn(2, 2, 8, 4, 4), torch.randn(2, 16, 4, 4)
    fc1, fc2 = head.classifier[0], head.classifier[2]
    # mid: (B, T, C, h, w) read as T*C channels, then b24; one ReLU hidden layer
    flat = torch.cat([mid.mean((-2, -1)).flatten(1), b24.mean((-2, -1))], dim=1)
    expected = fc2(torch.relu(fc1(flat)))
    assert torch.allclose(head({"mid": mid, "b24": b24}).logits, expected, atol=1e-6)


def test_a_new_head_registers_and_builds_from_feature_info():
    @register_head("test-mean")
    class MeanHead(Head):
        task_arguments = ("num_labels",)

        def __init__(self, feature_info, num_labels: int, tap: str = "b24") -> None:
            super().__init__(feature_info)
            self.fc = nn.Linear(feature_info[tap].channels, num_labels)
            self.tap = tap

        def forward(self, features, labels=None):
            return HeadOutput(logits=self.fc(features[self.tap].mean((-2, -1))))

    head = build_head({"type": "test-mean"}, INFO, num_labels=3, unused=1)
    assert head.fc.in_features == 16 and "test-mean" in list_heads()
