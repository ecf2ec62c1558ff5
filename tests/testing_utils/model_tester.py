"""The task-model tester (diffusers' ``ModelTesterMixin`` idea): a test class for a task model is
a config (``model_class``, ``get_init_dict``, ``get_dummy_inputs``, ``output_names``) plus this
mixin, which runs the checks every task model must pass:

- save / load round trip through ``AutoDiffusionPerception`` with identical outputs;
- strict loading: a missing backbone tensor, a missing head tensor and an extra tensor are errors
  that name the key;
- push to and pull from the session's LocalHub with the real huggingface_hub client;
- ``specialize()`` parity with the eager model, and ONNX export with parity <= 1e-4 and the
  outputs named as the task says (``logits``, a tap, ...);
- bad input at the public edge: wrong image types and a head argument the head does not take.
"""

from __future__ import annotations

import re
import shutil
import uuid
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file


def output_tensors(out: Any) -> dict[str, torch.Tensor]:
    """The tensors of a task model's output (a dict of taps or a ``ModelOutput``)."""
    return {k: v for k, v in dict(out).items() if isinstance(v, torch.Tensor)}


def assert_same_outputs(a: Any, b: Any, atol: float = 0.0) -> None:
    a, b = output_tensors(a), output_tensors(b)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert (a[key] - b[key]).abs().max().item() <= atol, key


class TaskModelTesterMixin:
    """Mix into a ``class Test<Model>`` that defines the attributes below."""

    #: The task model class under test.
    model_class: type
    #: Output names of the specialised / exported model (``("logits",)`` for classifiers).
    output_names: tuple[str, ...]
    #: ``(H, W)`` the dummy images have (the model's ``preprocess.size``).
    image_size: tuple[int, int] = (64, 64)

    def get_init_dict(self, tiny_repos) -> dict[str, Any]:
        """The ``TaskConfig`` dict of a tiny model (on the session's tiny diffusers folders)."""
        raise NotImplementedError(f"{type(self).__name__} must define get_init_dict")

    def get_dummy_inputs(self) -> dict[str, Any]:
        """Seeded keyword inputs of the model's forward."""
        generator = torch.Generator().manual_seed(0)
        return {"images": torch.rand(2, 3, *self.image_size, generator=generator)}

    # --------------------------------------------------------------------------- fixtures

    @pytest.fixture(scope="class")
    def model(self, tiny_repos):
        torch.manual_seed(0)
        return self.model_class(self.get_init_dict(tiny_repos)).eval()

    @pytest.fixture(scope="class")
    def saved(self, model, tmp_path_factory):
        folder = tmp_path_factory.mktemp("saved") / "model"
        model.save_pretrained(folder)
        return folder

    def _run(self, model, **overrides):
        with torch.no_grad():
            return model(**{**self.get_dummy_inputs(), **overrides})

    # ------------------------------------------------------------------------------ tests

    def test_config_round_trips(self, model):
        from diffperception import TaskConfig

        data = model.saved_config()
        assert TaskConfig.from_dict(data).to_dict() == data
        assert data["architecture"] == self.model_class.__name__

    def test_save_load_round_trip(self, model, saved):
        from diffperception import AutoDiffusionPerception

        loaded = AutoDiffusionPerception.from_pretrained(saved)
        assert type(loaded) is self.model_class
        assert_same_outputs(self._run(model), self._run(loaded))

    @pytest.mark.parametrize("edit", ["missing_backbone", "missing_head", "extra"])
    def test_strict_loading_names_the_bad_key(self, saved, tmp_path, edit):
        from diffperception import AutoDiffusionPerception

        folder = tmp_path / "broken"
        shutil.copytree(saved, folder)
        tensors = load_file(str(folder / "model.safetensors"))
        if edit == "extra":
            key, message = "head.unexpected", "unexpected tensor"
            tensors[key] = torch.zeros(2)
        else:
            prefix = "backbone." if edit == "missing_backbone" else "head."
            key, message = next(k for k in sorted(tensors) if k.startswith(prefix)), "missing tensor"
            del tensors[key]
        save_file(tensors, str(folder / "model.safetensors"))
        with pytest.raises(RuntimeError, match=rf"{message}\(s\): .*{re.escape(key)}"):
            AutoDiffusionPerception.from_pretrained(folder)

    def test_push_and_pull(self, local_hub, model, tmp_path):
        from diffperception import AutoDiffusionPerception

        repo = f"alice/{self.model_class.__name__.lower()}-{uuid.uuid4().hex[:8]}"
        commit = model.push_to_hub(repo, token="hf_alice_token")
        pulled = AutoDiffusionPerception.from_pretrained(repo, revision=commit.oid,
                                                         cache_dir=tmp_path / "cache")
        assert type(pulled) is self.model_class
        assert_same_outputs(self._run(model), self._run(pulled))

    def test_specialize_parity(self, model):
        special = model.specialize(self.image_size)
        images = self.get_dummy_inputs()["images"]
        with torch.no_grad():
            out = special(images)
        assert tuple(out) == self.output_names
        eager = output_tensors(self._run(model))
        for name in self.output_names:
            assert (out[name] - eager[name]).abs().max().item() <= 1e-4 * max(
                1.0, eager[name].abs().max().item()), name

    def test_onnx_export_parity(self, model, tmp_path):
        pytest.importorskip("onnxruntime")
        from diffperception.export import to_onnx

        result = to_onnx(model, tmp_path / "model.onnx", size=self.image_size, batch=1)
        names = [entry["name"] for entry in result.contract["outputs"]]
        assert names == list(self.output_names)
        assert set(result.parity) == set(self.output_names)
        assert all(p["max_rel"] <= 1e-4 for p in result.parity.values())

    def test_bad_images_are_clear_errors(self, model):
        with pytest.raises(TypeError):
            model(images="not an image")
        with pytest.raises(ValueError):
            model(images=torch.rand(2, 5, *self.image_size))

    def test_unknown_head_argument_is_a_clear_error(self, tiny_repos):
        config = self.get_init_dict(tiny_repos)
        config["head"] = {**(config.get("head") or {"type": "identity"}), "no_such_option": 1}
        with pytest.raises(ValueError, match=r"config\['head'\]\['no_such_option'\] = 1 is invalid"):
            self.model_class(config)
