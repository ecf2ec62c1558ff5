"""``DiffusionPerceptionForSemanticCorrespondence``: dense descriptors and keypoint matching.

The backbone with the ``correspondence`` head (taps resized to one grid, concatenated, optionally
GDF's 3x3 conv aggregator). ``match`` finds, for each source keypoint, the target pixel whose
descriptor has the highest cosine similarity, as DIFT's and GDF's evaluators do (METHODS.md
§4.4-4.5):

- ``resolution="image"`` (DIFT ``eval_spair.py``, default): both descriptor maps are bilinearly
  upsampled to their original image sizes; the source descriptor is read at the keypoint's pixel
  and compared with every target pixel; the prediction is already in target pixels.
- ``resolution="input"`` (GDF ``correspondence_utils.py``): upsampled to the network input size
  (GDF's 512 x 512 load size); keypoints are scaled into it, predictions scaled back to the
  original target size.

An optional window soft-argmax refines the arg-max: the similarity-weighted mean position
(softmax with ``temperature``) over a ``(2r+1)^2`` window around it. Ensembles are the backbone's:
noise draws (``ensemble``) are averaged, timesteps and taps are concatenated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from ..config import HeadConfig, TaskConfig
from ..features.preprocess import to_image_tensor
from .base import DiffusionPerceptionModel
from .registry import register_model

__all__ = ["DiffusionPerceptionForSemanticCorrespondence", "SemanticCorrespondenceOutput",
           "CorrespondenceMatches", "match_descriptors", "sample_descriptors",
           "correspondence_loss", "points_to_grid"]

RESOLUTIONS = ("image", "input")
#: GDF's fixed logit scale exp(log(1 / 0.07)) (``task-corres.py``).
GDF_LOGIT_SCALE = 1 / 0.07


@dataclass
class SemanticCorrespondenceOutput(ModelOutput):
    """Output of ``DiffusionPerceptionForSemanticCorrespondence.forward``.

    Attributes:
        loss: Unused by ``forward`` (see ``correspondence_loss``); None.
        embeddings: ``(B, D, h, w)`` dense descriptors on the head's grid.
    """

    loss: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None


@dataclass
class CorrespondenceMatches(ModelOutput):
    """Output of ``match``.

    Attributes:
        points: ``(K, 2)`` predicted target points ``(x, y)`` in target-image pixels (float).
        scores: ``(K,)`` cosine similarity of each match, in [-1, 1].
    """

    points: torch.Tensor | None = None
    scores: torch.Tensor | None = None


def _check_points(points: Any, name: str) -> torch.Tensor:
    points = torch.as_tensor(points, dtype=torch.float32)
    if points.dim() != 2 or points.shape[1] != 2 or not torch.isfinite(points).all():
        raise ValueError(f"{name} must be finite (K, 2) points (x, y) in pixels, got shape "
                         f"{tuple(points.shape)}.")
    return points


def sample_descriptors(descriptors: torch.Tensor, points: torch.Tensor,
                       image_hw: Sequence[int]) -> torch.Tensor:
    """Descriptors at integer pixels of an image, as if the map were upsampled to it.

    Equal to ``F.interpolate(descriptors[None], image_hw, mode="bilinear")[0, :, y, x]`` at the
    rounded, clamped points, without building the upsampled map.

    Args:
        descriptors: ``(D, h, w)``.
        points: ``(K, 2)`` ``(x, y)`` pixels of the ``image_hw`` image.
        image_hw: ``(H, W)`` in pixels.

    Returns:
        ``(K, D)``.
    """
    H, W = int(image_hw[0]), int(image_hw[1])
    x = points[:, 0].round().clamp(0, W - 1)
    y = points[:, 1].round().clamp(0, H - 1)
    grid = torch.stack([(x + 0.5) / W * 2 - 1, (y + 0.5) / H * 2 - 1], dim=-1)  # (K, 2)
    grid = grid.to(descriptors)[None, None]  # (1, 1, K, 2)
    out = F.grid_sample(descriptors[None], grid, mode="bilinear", padding_mode="border",
                        align_corners=False)  # (1, D, 1, K)
    return out[0, :, 0].T  # (K, D)


def _soft_argmax(sims: torch.Tensor, best: torch.Tensor, hw: tuple[int, int], radius: int,
                 temperature: float) -> torch.Tensor:
    """Softmax-weighted ``(x, y)`` over a window around each arg-max; sims ``(K, H*W)``."""
    H, W = hw
    K = sims.shape[0]
    offsets = torch.arange(-radius, radius + 1, device=sims.device)
    by, bx = best // W, best % W
    ys = (by[:, None] + offsets[None]).clamp(0, H - 1)  # (K, 2r+1)
    xs = (bx[:, None] + offsets[None]).clamp(0, W - 1)
    n = len(offsets)
    ys, xs = ys[:, :, None].expand(-1, -1, n), xs[:, None, :].expand(-1, n, -1)  # (K, n, n)
    flat = (ys * W + xs).reshape(K, -1)  # (K, (2r+1)^2)
    weights = torch.softmax(sims.gather(1, flat) / temperature, dim=1)
    return torch.stack([(weights * xs.reshape(K, -1)).sum(1),
                        (weights * ys.reshape(K, -1)).sum(1)], dim=-1).float()


def _similarities(vectors: torch.Tensor, tgt: torch.Tensor, hw: Sequence[int],
                  chunk: int = 1 << 16) -> torch.Tensor:
    """Cosine of ``(K, D)`` unit vectors with every pixel of ``tgt`` ``(D, h, w)`` upsampled
    (bilinear) to ``hw``: ``(K, H*W)``. The upsampled map is built ``chunk`` pixels at a time
    (a 3520-channel map of a 500 x 375 image would take 2.6 GB at once)."""
    H, W = int(hw[0]), int(hw[1])
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    pixels = torch.stack([xs.flatten(), ys.flatten()], dim=-1).float()  # (H*W, 2) as (x, y)
    out = vectors.new_empty(vectors.shape[0], H * W)
    for start in range(0, H * W, chunk):
        feats = sample_descriptors(tgt, pixels[start: start + chunk], (H, W))  # (n, D)
        out[:, start: start + chunk] = vectors @ F.normalize(feats, dim=-1).T
    return out


def match_descriptors(src: torch.Tensor, tgt: torch.Tensor, src_points: torch.Tensor,
                      src_hw: Sequence[int], tgt_hw: Sequence[int], *,
                      resolution: str = "image", input_hw: Sequence[int] | None = None,
                      window: int | None = None, temperature: float = 0.05
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine nearest neighbour of each source point over every target pixel.

    Args:
        src: ``(D, h, w)`` source descriptors; ``tgt``: ``(D, h', w')`` target descriptors.
        src_points: ``(K, 2)`` ``(x, y)`` in source-image pixels.
        src_hw, tgt_hw: Original ``(H, W)`` of the two images in pixels.
        resolution: ``"image"`` (DIFT) or ``"input"`` (GDF; needs ``input_hw``).
        input_hw: The network input ``(H, W)`` (``"input"`` only).
        window: Soft-argmax radius in pixels of the matching resolution (None: plain arg-max).
        temperature: Softmax temperature of the soft-argmax (on cosine similarities).

    Returns:
        ``(points (K, 2) (x, y) in target pixels, scores (K,))``.

    Raises:
        ValueError: An unknown resolution, or ``"input"`` without ``input_hw``.
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution = {resolution!r} is invalid: one of {list(RESOLUTIONS)}.")
    src_points = src_points.float().cpu()
    if resolution == "input":
        if input_hw is None:
            raise ValueError("resolution='input' needs input_hw, the network input (H, W).")
        scale_src = torch.tensor([input_hw[1] / src_hw[1], input_hw[0] / src_hw[0]])
        src_points, src_hw, match_hw = src_points * scale_src, input_hw, tuple(input_hw)
    else:
        match_hw = tuple(int(s) for s in tgt_hw)
    vectors = F.normalize(sample_descriptors(src.float(), src_points, src_hw), dim=-1)  # (K, D)
    sims = _similarities(vectors, tgt.float(), match_hw)  # (K, H*W)
    scores, best = sims.max(dim=1)
    if window:
        points = _soft_argmax(sims, best, match_hw, int(window), temperature)
    else:
        points = torch.stack([best % match_hw[1], best // match_hw[1]], dim=-1).float()
    if resolution == "input":
        points = points * torch.tensor([tgt_hw[1] / match_hw[1], tgt_hw[0] / match_hw[0]],
                                       device=points.device)
    return points, scores


def points_to_grid(points: torch.Tensor, image_hw: Sequence[int], grid_hw: Sequence[int]
                   ) -> torch.Tensor:
    """Flat indices ``(K,)`` of the grid cells holding ``(x, y)`` image pixels (GDF's rounding)."""
    x = (points[:, 0] * grid_hw[1] / image_hw[1]).round().clamp(0, grid_hw[1] - 1)
    y = (points[:, 1] * grid_hw[0] / image_hw[0]).round().clamp(0, grid_hw[0] - 1)
    return (y * grid_hw[1] + x).long()


def correspondence_loss(src: torch.Tensor, tgt: torch.Tensor, src_points: torch.Tensor,
                        tgt_points: torch.Tensor, src_hw: Sequence[int], tgt_hw: Sequence[int],
                        logit_scale: float = GDF_LOGIT_SCALE) -> torch.Tensor:
    """GDF's symmetric CLIP-style loss for one annotated pair (METHODS.md §4.4).

    For each source keypoint, cross-entropy over every target grid cell of the scaled cosine
    similarities, the true cell being the target keypoint's; and the same from target to source.

    Args:
        src, tgt: ``(D, h, w)`` descriptors of the two images.
        src_points, tgt_points: ``(K, 2)`` matching ``(x, y)`` pixels of the original images.
        src_hw, tgt_hw: Original ``(H, W)`` of the images.
        logit_scale: Fixed scale of the similarities (GDF: 1 / 0.07).

    Returns:
        Scalar loss (mean of the two directions).
    """
    grid_s, grid_t = tuple(src.shape[-2:]), tuple(tgt.shape[-2:])
    s = F.normalize(src.flatten(1), dim=0)  # (D, hw)
    t = F.normalize(tgt.flatten(1), dim=0)
    i_s = points_to_grid(src_points, src_hw, grid_s).to(src.device)
    i_t = points_to_grid(tgt_points, tgt_hw, grid_t).to(src.device)
    forward = logit_scale * (s[:, i_s].T @ t)  # (K, hw_t)
    backward = logit_scale * (t[:, i_t].T @ s)  # (K, hw_s)
    return (F.cross_entropy(forward, i_t) + F.cross_entropy(backward, i_s)) / 2


@register_model
class DiffusionPerceptionForSemanticCorrespondence(DiffusionPerceptionModel,
                                                   pipeline_tag="keypoint-matching"):
    """A diffusion backbone and a dense descriptor head, matched by cosine nearest neighbour.

    Args:
        config: A ``TaskConfig`` (or its dict); ``head`` a ``correspondence`` head (default
            ``{"type": "correspondence"}``); ``preprocess.crop`` must be ``"none"`` (a crop would
            move keypoints out of the image); ``task`` may set ``resolution`` (``"image"``,
            DIFT; ``"input"``, GDF), ``window`` (soft-argmax radius, null for arg-max),
            ``temperature`` (0.05) and ``logit_scale`` (training, GDF's 1/0.07).
        source, load_weights, **hub_kwargs: See ``DiffusionPerceptionModel``.

    Raises:
        ValueError: A centre crop, an unknown task key or a bad task value.

    Example:
        >>> model = AutoDiffusionPerception.from_preset("gdf-practical-sd15")
        >>> out = model.match(src_image, tgt_image, [[120, 88], [64, 200]])
        >>> out.points, out.scores          # (2, 2) target (x, y) pixels, (2,) cosine
    """

    default_head = {"type": "correspondence"}
    task_keys = ("resolution", "window", "temperature", "logit_scale")

    def check_config(self, config: TaskConfig) -> None:
        unknown = sorted(set(config.task) - set(self.task_keys))
        if unknown:
            raise ValueError(f"config['task'] has unknown keys {unknown}; a correspondence model "
                             f"takes {list(self.task_keys)}.")
        if config.head.type != "correspondence":
            raise ValueError(f"config['head']['type'] = {config.head.type!r} is invalid: a "
                             "correspondence model has the 'correspondence' head.")
        if config.preprocess.crop != "none" and config.preprocess.size:
            raise ValueError("config['preprocess']['crop'] = 'center' is invalid for "
                             "correspondence: a crop moves keypoints; use 'none' (the image is "
                             "resized to preprocess.size as DIFT and GDF do).")
        task = config.task
        if task.get("resolution", "image") not in RESOLUTIONS:
            raise ValueError(f"config['task']['resolution'] = {task['resolution']!r} is invalid: "
                             f"one of {list(RESOLUTIONS)}.")
        window = task.get("window")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                                   or window < 1):
            raise ValueError(f"config['task']['window'] = {window!r} is invalid: a radius >= 1 "
                             "in pixels, or null for the plain arg-max.")
        for key in ("temperature", "logit_scale"):
            value = task.get(key, 1.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"config['task'][{key!r}] = {value!r} is invalid: a positive "
                                 "number.")

    @classmethod
    def from_feature_extractor(cls, model: DiffusionPerceptionModel
                               ) -> "DiffusionPerceptionForSemanticCorrespondence":
        """A correspondence model on ``model``'s backbone (shared, not copied) with the
        parameter-free ``correspondence`` head on all its taps: how a feature-extraction preset
        such as ``dift-sd21`` (DIFT's zero-shot protocol) is matched. A centre crop becomes a
        plain resize to ``preprocess.size`` (a crop would move keypoints out of the image).
        """
        import copy

        from torch import nn

        from ..heads import build_head
        from .registry import registered_name

        config = copy.deepcopy(model.config)
        config.architecture = registered_name(cls)
        config.head = HeadConfig.from_dict(dict(cls.default_head))
        config.preprocess.crop = "none"
        config.validate()
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.config = config
        self.check_config(config)
        # a shallow copy: the same network, VAE and prompt modules, its own preprocess
        self.backbone = copy.copy(model.backbone)
        self.backbone.preprocess = config.preprocess
        self.head = build_head(config.head, self.backbone.feature_info,
                               **self.head_arguments()).eval()
        return self.eval()

    def head_arguments(self) -> dict[str, Any]:
        """``image_size``: the ``(H, W)`` the network runs at."""
        size = self.config.preprocess.size or self.backbone.native_size
        return {"image_size": [int(s) for s in size]}

    def forward(self, images: Any, *, noise: torch.Tensor | None = None,
                prompt: Sequence[str] | str | None = None,
                value_range: tuple[float, float] | None = None) -> SemanticCorrespondenceOutput:
        """Dense descriptors of a batch.

        Args:
            images: ``(B, 3, H, W)`` float in [0, 1], numpy arrays or PIL images.
            noise, prompt, value_range: As for the feature extractor.

        Returns:
            ``SemanticCorrespondenceOutput(embeddings=(B, D, h, w))``.
        """
        feats = self.backbone(images, noise=noise, prompt=prompt, value_range=value_range)
        size = self._input_size(images)
        return SemanticCorrespondenceOutput(embeddings=self.head(feats, image_size=size).embeddings)

    def _input_size(self, images: Any) -> tuple[int, int]:
        if self.config.preprocess.size:
            return tuple(int(s) for s in self.config.preprocess.size)
        return tuple(to_image_tensor(images).shape[-2:])

    def descriptors(self, image: Any, *, prompt: str | None = None,
                    value_range: tuple[float, float] | None = None
                    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """``((D, h, w) descriptors, (H, W) original size)`` of one image."""
        x = to_image_tensor(image, value_range=value_range)
        if x.shape[0] != 1:
            raise ValueError(f"match takes one source and one target image, got a batch of "
                             f"{x.shape[0]}.")
        out = self(x, prompt=[prompt] if prompt is not None else None)
        return out.embeddings[0], (int(x.shape[-2]), int(x.shape[-1]))

    @torch.no_grad()
    def match(self, src_image: Any, tgt_image: Any, src_points: Any, *,
              prompt: str | None = None, resolution: str | None = None,
              window: int | None = None, value_range: tuple[float, float] | None = None
              ) -> CorrespondenceMatches:
        """The target point of each source keypoint (cosine nearest neighbour).

        Args:
            src_image, tgt_image: One image each (``(3, H, W)`` / ``(1, 3, H, W)`` in [0, 1],
                numpy, PIL); sizes may differ.
            src_points: ``(K, 2)`` ``(x, y)`` pixels of the source image.
            prompt: A text for both images (models built with per-image prompts, e.g. DIFT's
                ``"a photo of a {category}"``).
            resolution, window: Override ``config.task`` (see the class).
            value_range: Value range of integer inputs, e.g. ``(0, 255)``.

        Returns:
            ``CorrespondenceMatches(points=(K, 2) target (x, y) pixels, scores=(K,))``.

        Raises:
            TypeError / ValueError: Bad images or points.
        """
        points = _check_points(src_points, "src_points")
        src, src_hw = self.descriptors(src_image, prompt=prompt, value_range=value_range)
        tgt, tgt_hw = self.descriptors(tgt_image, prompt=prompt, value_range=value_range)
        task = self.config.task
        found, scores = match_descriptors(
            src, tgt, points, src_hw, tgt_hw,
            resolution=resolution or task.get("resolution", "image"),
            input_hw=self.head.image_size,
            window=window if window is not None else task.get("window"),
            temperature=float(task.get("temperature", 0.05)))
        return CorrespondenceMatches(points=found, scores=scores)

    def pair_loss(self, src_image: Any, tgt_image: Any, src_points: Any, tgt_points: Any, *,
                  prompt: str | None = None) -> torch.Tensor:
        """GDF's training loss on one annotated pair (``correspondence_loss``), with gradients
        into the head (the trunk is frozen)."""
        src, src_hw = self.descriptors(src_image, prompt=prompt)
        tgt, tgt_hw = self.descriptors(tgt_image, prompt=prompt)
        return correspondence_loss(src, tgt, _check_points(src_points, "src_points"),
                                   _check_points(tgt_points, "tgt_points"), src_hw, tgt_hw,
                                   float(self.config.task.get("logit_scale", GDF_LOGIT_SCALE)))

    def card_usage(self, model_id: str) -> str:
        """The usage snippet of the model card (runs as is)."""
        from .model_card import default_usage

        return default_usage(self, model_id, body=(
            "with torch.no_grad():\n"
            "    out = model.match(images[0], images[1], [[10, 12], [20, 5]])\n"
            "print(out.points, out.scores)  # (K, 2) target (x, y) pixels, (K,) cosine\n"))
