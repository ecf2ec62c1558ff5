"""Configuration dataclasses: one per section of ``config.json``.

A task model's ``config.json`` is the arguments of its constructor (the convention of diffusers'
``ConfigMixin`` and huggingface_hub's ``PyTorchModelHubMixin``): JSON-only values, so a config
round-trips exactly through ``to_dict`` / ``from_dict``. ``validate()`` is the one place where
impossible values are rejected, with a message naming the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BackboneConfig",
    "NoiseConfig",
    "PromptConfig",
    "FeaturesConfig",
    "PreprocessConfig",
    "HeadConfig",
    "TaskConfig",
    "CONFIG_FORMAT_VERSION",
]

# Bumped when config.json changes incompatibly; a config from a newer format is refused, an
# older one is migrated on load. 2: state-dict keys under ``backbone.`` / ``head.``, typed head.
CONFIG_FORMAT_VERSION = 2

DTYPES = ("float32", "float16", "bfloat16")
MEMORY_FORMATS = ("contiguous", "channels_last")
NOISE_KINDS = ("fixed", "random", "none", "ddim_inversion")
POSTERIORS = ("mean", "sample")
# How the E noise draws of an ensemble are made (features/noise.py: noise_draws).
NOISE_SAMPLINGS = ("independent", "antithetic", "sobol")
PROMPT_KINDS = ("null", "fixed", "per_image", "learnable", "caption", "shuffled")
RESIZE_MODES = ("bicubic", "bilinear", "nearest")
CROP_MODES = ("center", "none")


def _fail(section: str, key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"config['{section}']['{key}'] = {value!r} is invalid: {allowed}.")


def _from_dict(cls, section: str, data: dict[str, Any] | None):
    """Builds dataclass ``cls`` from ``data``, rejecting unknown and missing keys."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"config['{section}'] must be a JSON object, got {type(data).__name__}.")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"config['{section}'] has unknown key(s) {unknown}; allowed keys are {sorted(names)}."
        )
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = sorted(required - set(data))
    if missing:
        raise ValueError(f"config['{section}'] is missing required key(s) {missing}.")
    return cls(**data)


@dataclass
class BackboneConfig:
    """Which diffusion model, at which revision, in which dtype.

    Attributes:
        repo_id: Hub repository id or local folder in diffusers layout.
        family: A registered backbone family (``diffperception.backbones.list_families()``):
            ``"sd"`` (``UNet2DConditionModel``), ``"pixel"`` (text-free ``UNet2DModel``), ``"dit"``
            (``PixArtTransformer2DModel``, ``SD3Transformer2DModel``). Checked
            against the registry when the backbone is built.
        revision: Branch, tag or commit sha; saved models record the resolved commit sha.
        dtype: Weight and activation dtype.
        variant: Weight file variant (``"fp16"`` reads ``*.fp16.safetensors``), or None.
        memory_format: Layout of the 4-D (convolution) weights and hence of the activations:
            ``"contiguous"`` (NCHW, default) or ``"channels_last"`` (NHWC; oneDNN's fast path for
            bf16 on CPUs with AVX512-BF16 / AMX, and cuDNN's for fp16 / bf16 on GPUs).
    """

    repo_id: str
    family: str = "sd"
    revision: str | None = None
    dtype: str = "float32"
    variant: str | None = None
    memory_format: str = "contiguous"

    def validate(self) -> None:
        if not isinstance(self.repo_id, str) or not self.repo_id:
            _fail("backbone", "repo_id", self.repo_id, "a Hub repo id or a local folder path")
        if not isinstance(self.family, str) or not self.family:
            _fail("backbone", "family", self.family, "the name of a registered backbone family")
        if self.dtype not in DTYPES:
            _fail("backbone", "dtype", self.dtype, f"one of {DTYPES}")
        if self.memory_format not in MEMORY_FORMATS:
            _fail("backbone", "memory_format", self.memory_format, f"one of {MEMORY_FORMATS}")


@dataclass
class NoiseConfig:
    """How the clean latent is turned into the noisy input of the trunk.

    Attributes:
        kind: ``"fixed"`` (seeded, identical every call), ``"random"`` (fresh every call),
            ``"none"`` (the clean latent), ``"ddim_inversion"`` (deterministic inversion).
        seed: Seed of the fixed noise.
        ensemble: Number of noise draws averaged (DIFT's ensemble), in one batched forward.
        inversion_steps: DDIM steps from the clean latent to the timestep (``ddim_inversion``).
        posterior: ``z_0`` from the VAE posterior: ``"mean"`` (default) or ``"sample"`` (a
            posterior sample, as DIFT, generic-diffusion-feature and Discffusion take it: seeded
            and fixed for ``kind="fixed"``, fresh every call otherwise).
        sampling: How the ``ensemble`` draws are made: ``"independent"`` (default; i.i.d.
            normal draws, as DIFT), ``"antithetic"`` (pairs ``eps, -eps``; needs an even
            ensemble) or ``"sobol"`` (scrambled Sobol points mapped through the inverse normal
            CDF). The last two are variance reduction: the ensemble mean is closer to the
            infinite-ensemble feature for the same number of draws (``features/noise.py``).
    """

    kind: str = "fixed"
    seed: int = 0
    ensemble: int = 1
    inversion_steps: int = 10
    posterior: str = "mean"
    sampling: str = "independent"

    def validate(self) -> None:
        if self.kind not in NOISE_KINDS:
            _fail("features.noise", "kind", self.kind, f"one of {NOISE_KINDS}")
        if not isinstance(self.seed, int):
            _fail("features.noise", "seed", self.seed, "an integer")
        if not isinstance(self.ensemble, int) or self.ensemble < 1:
            _fail("features.noise", "ensemble", self.ensemble, "an integer >= 1")
        if self.kind in ("none", "ddim_inversion") and self.ensemble != 1:
            _fail("features.noise", "ensemble", self.ensemble,
                  f"noise kind {self.kind!r} is deterministic, so the ensemble must be 1")
        if not isinstance(self.inversion_steps, int) or self.inversion_steps < 1:
            _fail("features.noise", "inversion_steps", self.inversion_steps, "an integer >= 1")
        if self.posterior not in POSTERIORS:
            _fail("features.noise", "posterior", self.posterior, f"one of {POSTERIORS}")
        if self.sampling not in NOISE_SAMPLINGS:
            _fail("features.noise", "sampling", self.sampling, f"one of {NOISE_SAMPLINGS}")
        if self.sampling != "independent" and (self.kind not in ("fixed", "random")
                                               or self.ensemble < 2):
            _fail("features.noise", "sampling", self.sampling,
                  "variance-reduced sampling needs noise kind 'fixed' or 'random' and an "
                  "ensemble >= 2; use sampling='independent'")
        if self.sampling == "antithetic" and self.ensemble % 2:
            _fail("features.noise", "sampling", self.sampling,
                  f"antithetic draws come in pairs (eps, -eps), so the ensemble must be even, "
                  f"not {self.ensemble}")


@dataclass
class PromptConfig:
    """The text conditioning of a text-conditioned U-Net.

    Attributes:
        kind: ``"null"`` (the empty prompt), ``"fixed"`` (one text), ``"per_image"`` (one text
            per image, encoded every call: the text encoder is kept), ``"learnable"`` (a trainable
            text embedding initialised from ``text``), ``"caption"`` (each image's caption from
            an image captioner, Vermouth S000 §3.2), ``"shuffled"`` (each image gets one of
            ``text``, picked from the image's bytes, never from its label: the ablation's
            "random" prompt).
        text: The fixed text, the learnable initialisation, a list of per-image texts, the
            candidate texts of ``shuffled`` or of the ``"noise-prediction"`` captioner.
        captioner: For ``caption``: a transformers image-to-text repo id or folder (None:
            ``Salesforce/blip-image-captioning-base``), or ``"noise-prediction"`` (the diffusion
            model itself picks the candidate text of lowest noise-prediction error). The
            captioner is never saved with a model.
    """

    kind: str = "null"
    text: str | list[str] | None = None
    captioner: str | None = None

    def validate(self) -> None:
        if self.kind not in PROMPT_KINDS:
            _fail("features.prompt", "kind", self.kind, f"one of {PROMPT_KINDS}")
        if self.kind in ("fixed", "learnable") and not isinstance(self.text, str):
            _fail("features.prompt", "text", self.text, f"a string for prompt kind {self.kind!r}")
        texts_ok = isinstance(self.text, list) and self.text and all(
            isinstance(t, str) for t in self.text)
        if self.kind == "shuffled" and not texts_ok:
            _fail("features.prompt", "text", self.text, "a non-empty list of candidate texts for "
                  "prompt kind 'shuffled'")
        if self.kind == "caption" and self.captioner == "noise-prediction" and not texts_ok:
            _fail("features.prompt", "text", self.text, "a non-empty list of candidate captions "
                  "for the 'noise-prediction' captioner")
        if self.captioner is not None and (self.kind != "caption" or not isinstance(
                self.captioner, str) or not self.captioner):
            _fail("features.prompt", "captioner", self.captioner,
                  "null, or a repo id / folder / 'noise-prediction' for prompt kind 'caption'")
        if self.kind == "per_image" and self.text is not None and not (
            isinstance(self.text, list) and all(isinstance(t, str) for t in self.text)
        ):
            _fail("features.prompt", "text", self.text, "a list of strings or null")

    @property
    def is_constant(self) -> bool:
        """True when the text context is the same for every call (no text encoder needed)."""
        return self.kind in ("null", "fixed", "learnable")


@dataclass
class FeaturesConfig:
    """Which activations, at which timesteps, under which noise and prompt."""

    taps: list[str]
    timesteps: list[int] = field(default_factory=lambda: [261])
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeaturesConfig":
        data = dict(data)
        noise = _from_dict(NoiseConfig, "features.noise", data.pop("noise", None))
        prompt = _from_dict(PromptConfig, "features.prompt", data.pop("prompt", None))
        out = _from_dict(cls, "features", data)
        out.noise, out.prompt = noise, prompt
        return out

    def validate(self) -> None:
        if not isinstance(self.taps, list) or not self.taps or not all(
            isinstance(t, str) for t in self.taps
        ):
            _fail("features", "taps", self.taps, "a non-empty list of tap names (see list_taps())")
        if len(set(self.taps)) != len(self.taps):
            _fail("features", "taps", self.taps, "tap names must be unique")
        if not isinstance(self.timesteps, list) or not self.timesteps or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in self.timesteps
        ):
            _fail("features", "timesteps", self.timesteps, "a non-empty list of integers")
        self.noise.validate()
        self.prompt.validate()


@dataclass
class PreprocessConfig:
    """How images become the network's input.

    Attributes:
        size: ``[height, width]`` the image is resized (and cropped) to, or None to keep the
            input size (it must then be a multiple the network accepts).
        resize: Interpolation used for resizing.
        crop: ``"center"`` resizes the shorter side and crops the centre; ``"none"`` resizes
            directly to ``size``.
        range: Value range the network expects; images in ``[0, 1]`` are mapped onto it.
    """

    size: list[int] | None = None
    resize: str = "bicubic"
    crop: str = "center"
    range: list[float] = field(default_factory=lambda: [-1.0, 1.0])

    def validate(self) -> None:
        if self.size is not None and not (
            isinstance(self.size, list) and len(self.size) == 2
            and all(isinstance(s, int) and s > 0 for s in self.size)
        ):
            _fail("preprocess", "size", self.size, "null or [height, width] with positive integers")
        if self.resize not in RESIZE_MODES:
            _fail("preprocess", "resize", self.resize, f"one of {RESIZE_MODES}")
        if self.crop not in CROP_MODES:
            _fail("preprocess", "crop", self.crop, f"one of {CROP_MODES}")
        if not (isinstance(self.range, list) and len(self.range) == 2
                and float(self.range[0]) < float(self.range[1])):
            _fail("preprocess", "range", self.range, "[low, high] with low < high")


@dataclass
class HeadConfig:
    """The task head: ``{"type": <registered head>, **that head's __init__ arguments}``.

    Serialised flat (``{"type": "linear", "pool": 2}``). The arguments are checked against the
    head's signature when it is built (``diffperception.heads.build_head``), with an error naming
    the key, the value and the allowed ones.

    Attributes:
        type: A registered head name (``diffperception.heads.list_heads()``).
        kwargs: The head's keyword arguments (JSON values).
    """

    type: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: "dict[str, Any] | HeadConfig") -> "HeadConfig":
        if isinstance(data, HeadConfig):
            return data
        if not isinstance(data, dict) or "type" not in data:
            raise ValueError(f"config['head'] = {data!r} is invalid: a JSON object with a 'type' "
                             "key naming a registered head (see diffperception.list_heads()).")
        data = dict(data)
        out = cls(type=data.pop("type"), kwargs=data)
        out.validate()
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **self.kwargs}

    def validate(self) -> None:
        if not isinstance(self.type, str) or not self.type:
            _fail("head", "type", self.type, "the name of a registered head (list_heads())")
        try:
            json.dumps(self.kwargs)
        except TypeError:
            _fail("head", "kwargs", self.kwargs, "JSON values only")


@dataclass
class TaskConfig:
    """The whole ``config.json`` of a task model."""

    architecture: str
    backbone: BackboneConfig
    features: FeaturesConfig
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    head: HeadConfig | None = None
    labels: list[str] | None = None
    #: Task-specific settings (JSON values), checked by the task model's ``check_config``
    #: (for example a segmentation model's ``ignore_index``); left out of ``to_dict`` when empty.
    task: dict[str, Any] = field(default_factory=dict)
    diffperception_version: str | None = None
    config_format: int = CONFIG_FORMAT_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TaskConfig":
        """Parses and validates a ``config.json`` dict.

        Raises:
            ValueError: On unknown, missing or impossible keys, or a config from a newer format.
        """
        if not isinstance(data, dict):
            raise ValueError(f"config must be a JSON object, got {type(data).__name__}.")
        data = copy.deepcopy(data)  # the config owns its lists and dicts, not the caller
        fmt = data.get("config_format", CONFIG_FORMAT_VERSION)
        if not isinstance(fmt, int) or fmt > CONFIG_FORMAT_VERSION:
            raise ValueError(
                f"config['config_format'] = {fmt!r} comes from a newer diffperception (written by "
                f"version {data.get('diffperception_version')!r}); this version reads format "
                f"<= {CONFIG_FORMAT_VERSION}. Upgrade with `pip install -U diffperception`."
            )
        backbone = _from_dict(BackboneConfig, "backbone", data.pop("backbone", None))
        if "features" not in data:
            raise ValueError("config is missing required key 'features'.")
        features = FeaturesConfig.from_dict(data.pop("features"))
        preprocess = _from_dict(PreprocessConfig, "preprocess", data.pop("preprocess", None))
        head = data.pop("head", None)
        head = HeadConfig.from_dict(head) if head is not None else None
        out = _from_dict(cls, "", {**data, "backbone": backbone, "features": features,
                                   "preprocess": preprocess, "head": head})
        out.validate()
        return out

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["head"] = self.head.to_dict() if self.head is not None else None
        if data["features"]["prompt"].get("captioner") is None:
            del data["features"]["prompt"]["captioner"]
        if not data["task"]:
            del data["task"]
        return data

    def validate(self) -> None:
        if not isinstance(self.architecture, str) or not self.architecture:
            _fail("", "architecture", self.architecture, "the name of a registered task model")
        self.backbone.validate()
        self.features.validate()
        self.preprocess.validate()
        if self.head is not None:
            if not isinstance(self.head, HeadConfig):
                _fail("", "head", self.head, "a HeadConfig (or its dict) or null")
            self.head.validate()
        if self.labels is not None and not (
            isinstance(self.labels, list) and all(isinstance(x, str) for x in self.labels)
        ):
            _fail("", "labels", self.labels, "a list of strings or null")
        if not isinstance(self.task, dict) or not all(isinstance(k, str) for k in self.task):
            _fail("", "task", self.task, "a JSON object of task settings")
        try:
            json.dumps(self.task)
        except TypeError:
            _fail("", "task", self.task, "JSON values only")
