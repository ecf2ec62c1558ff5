"""diffperception: pretrained diffusion models as perception backbones.

Example:
    >>> from diffperception import DiffusionBackbone, DiffusionPerceptionForImageClassification
    >>> backbone = DiffusionBackbone.from_diffusers(
    ...     "stabilityai/stable-diffusion-2-1", taps=["up_ft.1"], timesteps=[261])
    >>> feats = backbone(images)  # {"up_ft.1": (B, 1280, H/16, W/16)}

The public names are imported on first use, so that ``import diffperception.deploy`` (the
torch-free deployment kit) and ``diffperception --help`` never import torch.
"""

from __future__ import annotations


def _kit_from_source_checkout() -> None:
    """Maps ``diffperception.deploy`` to the repository's ``export/`` folder when the package is
    imported from a source checkout (Python run in the repository's root after ``pip install .``
    finds this folder first); an install puts the kit at ``diffperception/deploy`` instead."""
    import importlib.util
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    kit = here.parent / "export"
    if ("diffperception.deploy" in sys.modules or (here / "deploy").is_dir()
            or not (kit / "lazy.py").is_file()
            or importlib.util.find_spec("diffperception.deploy") is not None):
        return
    spec = importlib.util.spec_from_file_location(
        "diffperception.deploy", kit / "__init__.py", submodule_search_locations=[str(kit)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    globals()["deploy"] = module  # what the import system sets for a found submodule


_kit_from_source_checkout()

from .deploy.lazy import attach  # noqa: E402

__version__ = "0.1.0"

# numpy only: registers the "diffperception:default" source alias of the shipped model
from . import default_model  # noqa: E402,F401

# public name -> the submodule that defines it
__getattr__, __dir__, _names = attach(__name__, {
    "list_taps": ".api",
    "HeadConfig": ".config",
    "TaskConfig": ".config",
    "DiffusionBackbone": ".features.backbone",
    "LearnablePrompt": ".features.conditioning",
    "build_head": ".heads",
    "list_heads": ".heads",
    "register_head": ".heads",
    "AutoDiffusionPerception": ".modeling",
    "DiffusionPerceptionForFeatureExtraction": ".modeling",
    "DiffusionPerceptionForImageClassification": ".modeling",
    "DiffusionPerceptionForImageRetrieval": ".modeling",
    "DiffusionPerceptionForImageTextMatching": ".modeling",
    "DiffusionPerceptionForSemanticCorrespondence": ".modeling",
    "DiffusionPerceptionForSemanticSegmentation": ".modeling",
    "Learnable": ".modeling",
    "list_models": ".modeling",
    "list_presets": ".modeling",
    "register_model": ".modeling",
})
__all__ = ["__version__", *_names]
