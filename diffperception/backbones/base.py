"""The backbone-family protocol and its registry.

A family is how one kind of diffusion network is loaded, conditioned, cut and run: ``sd``
(``UNet2DConditionModel`` + VAE + CLIP text encoders), ``pixel`` (text-free ``UNet2DModel``) and
``dit`` (PixArt / SD3 transformers). Everything that depends on the network's architecture lives in the family's file;
the trunk driver, the backbone object and the task models above only call the methods below. The
list of supported families (config validation, the loading allow-list) comes from this registry
alone.

Example:
    >>> @register_family("pixel")
    ... class PixelFamily(UNetFamily): ...
    >>> list_families()
    ['pixel', 'sd']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from ..registry import Registry

__all__ = [
    "BackboneFamily",
    "register_family",
    "get_family",
    "list_families",
    "family_for_folder",
    "network_classes",
    "list_components",
    "check_network_fields",
    "SIZE_FIELDS",
]

FAMILIES: Registry[type["BackboneFamily"]] = Registry("backbone family", "config['backbone']['family']")


class BackboneFamily:
    """What a family provides (all class methods; a family is never instantiated).

    Attributes:
        name: The registered name (``config["backbone"]["family"]``).
        component: The diffusers folder holding the network (``"unet"``, ``"transformer"``).
        network_classes: The diffusers classes of that component this family runs.
        text_conditioned: Whether the network takes a text context (prompts).
        noise_processes: The noise processes its networks are trained on (``"ddpm"``,
            ``"flow_matching"``); a scheduler of another one is refused at load.
    """

    name: ClassVar[str] = ""
    noise_processes: ClassVar[tuple[str, ...]] = ("ddpm",)
    component: ClassVar[str] = "unet"
    network_classes: ClassVar[tuple[str, ...]] = ()
    text_conditioned: ClassVar[bool] = False

    # ------------------------------------------------------------------ config and building

    @classmethod
    def read_config(cls, folder: Path) -> dict[str, Any]:
        """The network's ``config.json`` of a diffusers folder, checked before anything is built.

        Keys the file leaves out take the defaults of the diffusers class's ``__init__`` (as
        diffusers' ``from_config`` does), so what the family reads is what diffusers builds.

        Raises:
            FileNotFoundError: The folder has no ``<component>/config.json``.
            ValueError: Not a JSON object (a string would make diffusers fetch a config from the
                Hub), a class this family does not run, or an impossible size
                (``check_network_fields``).
        """
        from .model_files import read_json_object

        path = Path(folder) / cls.component / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the folder is not a diffusers model.")
        config = read_json_object(path, fix="repair or re-download the model's files")
        name = config.get("_class_name", cls.network_classes[0])
        if name not in cls.network_classes:
            raise ValueError(f"{path}: _class_name = {name!r} is invalid: the {cls.name!r} family "
                             f"runs {list(cls.network_classes)}.")
        config = {**_init_defaults(name), **config}
        check_network_fields(config, path)
        return config

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        """Rejects network variants whose forward the family does not reproduce (ValueError)."""

    @classmethod
    def build_network(cls, config: dict[str, Any]) -> nn.Module:
        """The diffusers network of ``config`` (call under ``init_empty_weights`` for meta).

        Raises:
            ValueError: The config names a class this family does not run.
        """
        import diffusers

        name = config.get("_class_name", cls.network_classes[0])
        if name not in cls.network_classes:
            raise ValueError(f"The {cls.name!r} family runs {list(cls.network_classes)}, not {name}.")
        return getattr(diffusers, name).from_config(config)

    @classmethod
    def load_network(cls, folder: Path, prune: Callable[[nn.Module], None], dtype: torch.dtype,
                     variant: str | None = None, *, load_weights: bool = True) -> nn.Module:
        """Builds the network on the meta device, prunes it, then reads only the kept tensors.

        Args:
            folder: The diffusers folder.
            prune: Called on the meta-device network before any weight is read.
            dtype: Weight dtype.
            variant: Weight file variant (``"fp16"``), or None.
            load_weights: False leaves the pruned network on the meta device.

        Raises:
            ValueError: The config names a network class or variant this family does not run.
            FileNotFoundError / RuntimeError: Missing or unreadable weights.
        """
        from accelerate import init_empty_weights

        from .loading import find_component_weights, load_pruned

        config = cls.read_config(folder)
        cls.check_config(config)
        if not load_weights:
            with init_empty_weights():
                network = cls.build_network(config)
            prune(network)
            return network.to(dtype)  # the saved tensors are cast to these dtypes on load
        files = find_component_weights(Path(folder) / cls.component, variant)
        return load_pruned(lambda: cls.build_network(config), prune, files, dtype)

    # -------------------------------------------------------------------- taps and the cut

    @classmethod
    def resolve_alias(cls, path: str, network: nn.Module) -> str:
        """Maps a tap alias (``up_ft.1``, ``adm.24``) to a module path; other paths unchanged."""
        return path

    @classmethod
    def plan_cut(cls, network: nn.Module, taps: Sequence[tuple[str, str]], *, full: bool = False):
        """The cut after the last unit the ``(path, kind)`` taps need (``full``: no cut)."""
        raise NotImplementedError(f"{cls.__name__} does not implement plan_cut")

    @classmethod
    def prune(cls, network: nn.Module, plan: Any) -> None:
        """Removes in place every module ``plan`` never reaches (works on the meta device)."""
        raise NotImplementedError(f"{cls.__name__} does not implement prune")

    # -------------------------------------------------------------------------- execution

    @classmethod
    def embed(cls, network: nn.Module, sample: torch.Tensor, timesteps: torch.Tensor,
              context: torch.Tensor | None, added: dict | None) -> torch.Tensor:
        """The time (and added-condition) embedding the network's blocks take, ``(N, D)``."""
        raise NotImplementedError(f"{cls.__name__} does not implement embed")

    @classmethod
    def prepare_context(cls, network: nn.Module, context: torch.Tensor | None,
                        added: dict | None) -> torch.Tensor | None:
        """The text context the cross-attentions see (after any projection)."""
        return context

    @classmethod
    def run(cls, network: nn.Module, plan: Any, sample: torch.Tensor, emb: torch.Tensor,
            context: torch.Tensor | None) -> None:
        """Runs the kept part of the network up to ``plan``; forward hooks capture the taps."""
        raise NotImplementedError(f"{cls.__name__} does not implement run")

    @classmethod
    def forward_full(cls, network: nn.Module, sample: torch.Tensor, timesteps: torch.Tensor,
                     context: torch.Tensor | None, added: dict | None) -> Any:
        """One forward of the whole (unpruned) diffusers network, as its pipelines call it."""
        return network(sample, timesteps)

    @classmethod
    def tap_value(cls, network: nn.Module, path: str, kind: str, value: Any,
                  sample: torch.Tensor) -> Any:
        """The feature a tap reports from what its hook captured (a module output or input).

        Default: the first element of a tuple (down blocks return ``(hidden, residuals)``,
        transformer models ``(sample,)``). Families with token layouts reshape here.
        """
        if isinstance(value, (tuple, list)):
            return value[0]
        if hasattr(value, "to_tuple"):  # diffusers BaseOutput
            return value.to_tuple()[0]
        return value

    @classmethod
    def tap_point(cls, module: nn.Module, kind: str) -> nn.Module:
        """The module whose output a tap of a family-specific ``kind`` (``adaln``) reads.

        Raises:
            ValueError: The family has no such tap on ``module``.
        """
        raise ValueError(f"Taps ':{kind}' need a transformer block of the 'dit' family; the "
                         f"{cls.name!r} family has none ({type(module).__name__}).")

    @classmethod
    def bake_context(cls, network: nn.Module, context: torch.Tensor) -> None:
        """Keeps a fixed prompt's prepared context ``(1, L, D)`` inside ``network`` when its
        blocks read it beyond cross-attention K / V (those are baked by the specialiser)."""

    @classmethod
    def freeze_time(cls, network: nn.Module, emb: torch.Tensor) -> None:
        """Turns the time embedding ``emb`` ``(T, D)`` into constants inside ``network``."""
        raise NotImplementedError(f"{cls.__name__} does not implement freeze_time")

    # ------------------------------------------------------------------------ geometry

    @classmethod
    def size_multiple(cls, config: dict[str, Any]) -> int:
        """Latent height and width must be multiples of this."""
        return 1

    @classmethod
    def latent_channels(cls, config: dict[str, Any]) -> int:
        """Channels of the latent the network is given (before any packing into tokens)."""
        return int(config.get("in_channels", 4))

    @classmethod
    def native_latent_size(cls, config: dict[str, Any]) -> tuple[int, int]:
        """The latent size the network was trained at (``sample_size``)."""
        sample = config.get("sample_size") or 64
        h, w = (sample, sample) if isinstance(sample, int) else tuple(sample)
        return int(h), int(w)

    @classmethod
    def meta_inputs(cls, config: dict[str, Any], latent_hw: tuple[int, int],
                    context_shape: tuple[int, int] | None, pooled_dim: int | None,
                    device: torch.device | str = "meta") -> tuple:
        """``(sample, timesteps, context, added)`` of batch 1 for FLOP counting / shapes."""
        sample = torch.empty(1, cls.latent_channels(config), *latent_hw, device=device)
        timesteps = torch.zeros(1, dtype=torch.long, device=device)
        context = (torch.empty(1, *context_shape, device=device)
                   if context_shape is not None else None)
        return sample, timesteps, context, cls.added_conditions_like(pooled_dim, latent_hw, device)

    @classmethod
    def added_conditions_like(cls, pooled_dim: int | None, latent_hw: tuple[int, int],
                              device: torch.device | str) -> dict | None:
        """Placeholder added conditions of batch 1 (None for families without any)."""
        return None

    # ---------------------------------------------------------------------------- prompts

    @classmethod
    def context_shape(cls, folder: Path, config: dict[str, Any]
                      ) -> tuple[tuple[int, int] | None, int | None]:
        """``((L, D), pooled width)`` of an encoded prompt; ``(None, None)`` when text-free."""
        return None, None

    @classmethod
    def encode_prompt(cls, texts: list[str], encoders: dict[str, nn.Module],
                      tokenizers: dict[str, Any], config: dict[str, Any]
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(context (B, L, D), pooled (B, P) or None)`` as the family's pipelines encode."""
        raise ValueError(f"The {cls.name!r} family is text-free: it takes no prompt.")

    @classmethod
    def added_conditions(cls, pooled: torch.Tensor | None, height: int, width: int,
                         config: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """Added conditions for an image of ``height`` x ``width`` pixels (None when none)."""
        return None


#: Size fields of diffusers network / VAE configs -> the largest value accepted. Each is an integer
#: >= 1 (or a list of them; None where diffusers allows it). The bounds are far above any released
#: model and keep a hostile config from asking for gigabytes.
SIZE_FIELDS: dict[str, int] = {
    "in_channels": 1024, "out_channels": 1024, "latent_channels": 1024,
    "block_out_channels": 2**14, "norm_num_groups": 2**14, "layers_per_block": 64,
    "sample_size": 4096, "cross_attention_dim": 2**14, "attention_head_dim": 2**14,
    "num_attention_heads": 1024, "transformer_layers_per_block": 64,
    "addition_time_embed_dim": 2**14, "projection_class_embeddings_input_dim": 2**16,
    "time_embedding_dim": 2**16, "encoder_hid_dim": 2**14, "conv_in_kernel": 31,
    "conv_out_kernel": 31,
}
_MAX_BLOCKS = 16


def _init_defaults(class_name: str) -> dict[str, Any]:
    """The keyword defaults of a diffusers class's ``__init__`` (what ``from_config`` fills in)."""
    import inspect

    import diffusers

    params = inspect.signature(getattr(diffusers, class_name).__init__).parameters.values()
    return {p.name: p.default for p in params
            if p.default is not inspect.Parameter.empty and p.name != "self"}


def check_network_fields(config: dict[str, Any], path: Path | str) -> None:
    """Rejects impossible sizes in a network or VAE config before anything is built.

    Args:
        config: The config (``unet/config.json``, ``vae/config.json``, ...).
        path: The file, for the message.

    Raises:
        ValueError: A size that is not a positive integer (or list of them) within
            ``SIZE_FIELDS``; block lists of different lengths; ``norm_num_groups`` not dividing
            every ``block_out_channels`` (GroupNorm needs it). The message names file, key,
            value and what is allowed.
    """
    fix = "repair the file, or re-download the model"
    for key, limit in SIZE_FIELDS.items():
        value = config.get(key)
        values = value if isinstance(value, (list, tuple)) else [value]
        ok = value is None or (0 < len(values) <= _MAX_BLOCKS and all(
            v is None or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= limit)
            for v in values))
        if isinstance(value, (list, tuple)) and any(v is None for v in values):
            ok = False
        if not ok:
            raise ValueError(f"{path}: {key} = {value!r} is invalid: an integer from 1 to {limit} "
                             f"(or a list of at most {_MAX_BLOCKS} of them); {fix}.")
    channels = config.get("block_out_channels")
    for key in ("down_block_types", "up_block_types"):
        blocks = config.get(key)
        if blocks is not None and (not isinstance(blocks, (list, tuple)) or not all(
                isinstance(b, str) for b in blocks) or (isinstance(channels, (list, tuple))
                                                        and len(blocks) != len(channels))):
            raise ValueError(f"{path}: {key} = {blocks!r} is invalid: a list of block class names, "
                             f"one per block_out_channels entry ({channels!r}); {fix}.")
    groups = config.get("norm_num_groups")
    if isinstance(groups, int) and isinstance(channels, (list, tuple)):
        odd = [c for c in channels if c % groups]
        if odd:
            raise ValueError(f"{path}: norm_num_groups = {groups} does not divide "
                             f"block_out_channels {list(channels)} (GroupNorm splits each "
                             f"channel count into norm_num_groups groups); {fix}.")


def register_family(name: str) -> Callable[[type[BackboneFamily]], type[BackboneFamily]]:
    """Class decorator registering a backbone family under ``name``.

    Raises:
        ValueError: Another class is registered under ``name``.
    """
    return FAMILIES.register(name)


def list_families() -> list[str]:
    """Names of the registered backbone families, sorted."""
    return FAMILIES.names()


def get_family(name: str) -> type[BackboneFamily]:
    """The family registered under ``name``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the registered ones).
    """
    return FAMILIES.get(name)


def network_classes() -> dict[str, str]:
    """Every diffusers network class a registered family runs -> that family's name."""
    return {klass: fam.name for fam in FAMILIES.values() for klass in fam.network_classes}


def list_components() -> list[str]:
    """The network folders of the registered families (``unet``, ``transformer``), sorted."""
    return sorted({fam.component for fam in FAMILIES.values()})


def family_for_folder(folder: Path) -> type[BackboneFamily]:
    """The family that runs the network of a diffusers folder (by its ``_class_name``).

    Raises:
        FileNotFoundError: No family's component folder holds a ``config.json``.
        ValueError: The network class is run by no registered family.
    """
    folder = Path(folder)
    components = list_components()
    for component in components:
        path = folder / component / "config.json"
        if path.is_file():
            from .model_files import read_json_object

            name = read_json_object(path).get("_class_name", "UNet2DConditionModel")
            classes = network_classes()
            if name not in classes:
                raise ValueError(f"{folder / component} holds a {name}; diffperception runs "
                                 f"{sorted(classes)}.")
            return FAMILIES.get(classes[name])
    raise FileNotFoundError(
        f"{folder} holds none of {[c + '/config.json' for c in components]}: it is not a "
        "diffusers model folder."
    )
