"""The full-forward hook reference: diffusers' own forward, forward hooks on the tapped modules.

The hooking itself is written once, in ``benchmarks/baselines.py`` (installed as
``diffperception.benchmarks.baselines``) so that the benchmarks check every scenario against the
same reference; it uses torch hooks and diffusers only, never the package's trunk. Here, tap names
(aliases such as ``up_ft.1``, ``:in`` / ``:attn`` suffixes) are resolved to module paths with the
package's tap grammar, which its own tests cover.

Example:
    >>> store, handles = hook_full_unet(pipe.unet, ["up_ft.1", "mid_block"])
    >>> pipe.unet(z, t, encoder_hidden_states=context)
    >>> store["up_ft.1"].shape
    >>> for handle in handles:
    ...     handle.remove()
"""

from __future__ import annotations

import torch

from diffperception.benchmarks.baselines import hook_modules

__all__ = ["hook_full_unet", "hook_modules"]


def hook_full_unet(unet: torch.nn.Module, taps: list[str]) -> tuple[dict[str, torch.Tensor], list]:
    """Hooks the taps, given by name, on a FULL diffusers U-Net.

    Args:
        unet: The diffusers U-Net (``UNet2DConditionModel`` or ``UNet2DModel``), not pruned.
        taps: Tap names as the package accepts them.

    Returns:
        ``(store, handles)`` as :func:`hook_modules` returns them, keyed by the given names.
    """
    from diffperception.features.taps import resolve_taps

    return hook_modules(unet, [(tap.name, tap.path, tap.kind) for tap in resolve_taps(taps, unet)])
