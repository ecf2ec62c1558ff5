"""Named scenario sets (``diffperception bench --suite NAME``).

Iteration counts are chosen for a 2-core CPU shared with other work: the parity-check call warms
every backend up, so the real-size suites time a few calls after it (3 for the SD 1.5 batch-1
goal scenarios, 2 elsewhere, 1 for SD 2.1 at 768 px and SDXL at 1024 px, which run batch 1 only
and the main backends only).

bf16 scenarios (``BF16``: bf16 weights, channels-last convolutions) run next to fp32 ones; their
features are checked against the fp32 full forward like every other row. ``compile`` is
``torch.compile`` (inductor) of the specialised module; it compiles during the untimed parity call.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from .scenario import Scenario

__all__ = ["SUITES", "suite", "list_suites"]

OURS_EXPORTED = ("torchscript", "torch_export", "onnxruntime", "onnxruntime_fused")
ATTENTION_TAP = "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
#: The bf16 variant of a scenario: bf16 weights and activations, NHWC convolutions.
BF16 = {"precision": "bfloat16", "options": {"memory_format": "channels_last"}}


def bf16(s: Scenario) -> Scenario:
    """The bf16 / channels-last variant of a scenario."""
    return replace(s, **BF16)


def _tiny() -> list[Scenario]:
    backends = ("full_forward", "block_cut_eager", "eager", "specialized") + OURS_EXPORTED
    out = []
    for view in ("trunk", "e2e"):
        for batch in (1, 2):
            out += [Scenario("tiny", 64, batch=batch, backend=b, view=view, warmup=1, iters=3)
                    for b in backends]
    out += [bf16(Scenario("tiny", 64, backend=b, warmup=1, iters=3))
            for b in ("eager", "specialized", "torchscript", "torch_export")]
    return out


def _sd15() -> list[Scenario]:
    base = Scenario("sd15", 512, warmup=0, iters=3)
    out = [replace(base, backend=b) for b in ("full_forward", "block_cut_eager", "eager",
                                              "specialized") + OURS_EXPORTED]
    b4 = replace(base, batch=4, iters=2)
    out += [replace(b4, backend=b) for b in ("full_forward", "specialized", "torchscript",
                                             "onnxruntime", "onnxruntime_fused")]
    out.append(replace(b4, backend="onnxruntime_fused", chunk=1))
    e2e = replace(base, view="e2e", iters=2)
    out += [replace(e2e, backend=b) for b in ("full_forward", "block_cut_eager", "specialized",
                                              "onnxruntime_fused")]
    # bf16 / channels-last and torch.compile (inductor)
    out.append(replace(base, backend="compile"))
    out += [bf16(replace(base, backend=b)) for b in ("eager", "specialized", "compile",
                                                     "torchscript", "torch_export")]
    out += [bf16(replace(b4, backend=b)) for b in ("specialized", "compile")]
    out.append(bf16(replace(e2e, backend="specialized")))
    return out


def _sd15_taps() -> list[Scenario]:
    base = Scenario("sd15", 512, warmup=0, iters=2)
    return [replace(base, taps=(tap,), backend=b)
            for tap in ("mid_block", "down_blocks.2", ATTENTION_TAP)
            for b in ("full_forward", "specialized")]


def _sd15_scaling() -> list[Scenario]:
    base = Scenario("sd15", 512, warmup=0, iters=2, backend="specialized")
    out = [replace(base, batch=b) for b in (2, 8)]
    out += [replace(base, resolution=256, backend="full_forward"), replace(base, resolution=256),
            replace(base, resolution=768)]
    return out


def _sd21() -> list[Scenario]:
    base = Scenario("sd21", 768, warmup=0, iters=1)
    return ([replace(base, backend=b) for b in ("full_forward", "specialized", "onnxruntime_fused")]
            + [bf16(replace(base, backend=b)) for b in ("specialized", "compile")])


def _sdxl() -> list[Scenario]:
    base = Scenario("sdxl", 1024, warmup=0, iters=1)
    return [replace(base, backend=b) for b in ("full_forward", "specialized")]


def _default() -> list[Scenario]:
    base = Scenario("default", 32, warmup=1, iters=10)
    return ([replace(base, backend=b, view=v) for v in ("trunk", "e2e")
             for b in ("full_forward", "block_cut_eager", "specialized", "onnxruntime_fused")]
            + [bf16(replace(base, backend="specialized", view=v)) for v in ("trunk", "e2e")])


def _gpu() -> list[Scenario]:
    """The SD 1.5 goal scenarios on CUDA, with TensorRT fp16 (untested in this repository's CI)."""
    base = Scenario("sd15", 512, device="cuda", warmup=3, iters=20)
    out = [replace(base, batch=b, backend=k) for b in (1, 4)
           for k in ("full_forward", "block_cut_eager", "specialized", "compile", "onnxruntime")]
    out += [replace(base, batch=b, backend="tensorrt", precision="float16") for b in (1, 4)]
    return out


SUITES: dict[str, Callable[[], list[Scenario]]] = {
    "tiny": _tiny, "sd15": _sd15, "sd15-taps": _sd15_taps, "sd15-scaling": _sd15_scaling,
    "sd21": _sd21, "sdxl": _sdxl, "default": _default, "gpu": _gpu,
}
_ALL = ("sd15", "sd15-taps", "sd15-scaling", "sd21", "sdxl", "default")


def list_suites() -> list[str]:
    return sorted(SUITES) + ["all"]


def suite(name: str) -> list[Scenario]:
    """The scenarios of a suite (``all``: every CPU suite except ``tiny``).

    Raises:
        ValueError: Unknown suite name.
    """
    if name == "all":
        return [s for part in _ALL for s in SUITES[part]()]
    if name not in SUITES:
        raise ValueError(f"Unknown suite {name!r}; choose one of {list_suites()}.")
    return SUITES[name]()
