"""The benchmark scenario and the schema of its result line.

A ``Scenario`` is data only (JSON round-trip), so it can be handed to a fresh process. Its result
is one JSON object with every key of ``RESULT_FIELDS`` (missing measurements are ``null``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["Scenario", "RESULT_FIELDS", "BACKENDS", "VIEWS", "PRECISIONS", "empty_result"]

# How the features are computed; see backends.py for what each one runs.
BACKENDS = ("full_forward", "block_cut_eager", "eager", "specialized", "compile", "torchscript",
            "torch_export", "onnxruntime", "onnxruntime_fused", "tensorrt")
VIEWS = ("trunk", "e2e")  # latent in / image in (VAE encoder included)
PRECISIONS = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Scenario:
    """One benchmarked configuration.

    Attributes:
        arch: Architecture name (``sd15``, ``sd21``, ``sdxl``, ``tiny``, ``default``).
        resolution: Image side in pixels (square images); latents are 1/8 of it.
        batch: Images per call.
        taps: Tap names (``up_ft.1``, ``mid_block``, ...).
        timestep: Diffusion timestep.
        ensemble: Noise draws averaged per image.
        backend: One of ``BACKENDS``.
        view: ``trunk`` (latent in) or ``e2e`` (image in, VAE encoder included).
        precision: ``float32`` (CPU) or ``float16`` (CUDA / TensorRT).
        device: ``cpu`` or ``cuda``.
        warmup: Untimed calls after the parity-check call (which itself warms up).
        iters: Timed calls.
        threads: Intra-op threads (torch and ONNX Runtime).
        seed: Seed of the noise and of the random inputs.
        chunk: Run a batch as calls of at most this many images (0: one call).
        options: Backend options (e.g. ``{"mem_arena": false}`` for ONNX Runtime).
        name: Optional label; ``key`` is used when empty.
    """

    arch: str
    resolution: int
    batch: int = 1
    taps: tuple[str, ...] = ("up_ft.1",)
    timestep: int = 261
    ensemble: int = 1
    backend: str = "specialized"
    view: str = "trunk"
    precision: str = "float32"
    device: str = "cpu"
    warmup: int = 1
    iters: int = 5
    threads: int = 2
    seed: int = 0
    chunk: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "taps", tuple(self.taps))
        self.validate()

    def validate(self) -> None:
        """Raises ``ValueError`` naming the bad field and what is allowed."""
        checks = [
            (self.backend in BACKENDS, f"backend {self.backend!r} is not one of {BACKENDS}"),
            (self.view in VIEWS, f"view {self.view!r} is not one of {VIEWS}"),
            (self.precision in PRECISIONS, f"precision {self.precision!r} is not one of {PRECISIONS}"),
            (self.device in ("cpu", "cuda"), f"device {self.device!r} must be 'cpu' or 'cuda'"),
            (self.batch >= 1 and self.iters >= 1 and self.warmup >= 0 and self.ensemble >= 1,
             "batch, iters and ensemble must be >= 1 and warmup >= 0"),
            (self.resolution % 8 == 0, f"resolution {self.resolution} must be a multiple of 8"),
            (len(self.taps) >= 1, "taps must name at least one tap"),
            (self.chunk >= 0, "chunk must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"Bad scenario: {message}.")

    @property
    def key(self) -> str:
        """A readable identifier: ``sd15-512-b1-up_ft.1-trunk-specialized-float32-cpu``."""
        taps = "+".join(t.replace(":", "~") for t in self.taps)
        extra = f"-chunk{self.chunk}" if self.chunk else ""
        extra += "".join(f"-{k}={v}" for k, v in sorted(self.options.items()))
        ens = f"-e{self.ensemble}" if self.ensemble > 1 else ""
        return (f"{self.arch}-{self.resolution}-b{self.batch}{ens}-{taps}-t{self.timestep}-"
                f"{self.view}-{self.backend}-{self.precision}-{self.device}{extra}")

    @property
    def label(self) -> str:
        return self.name or self.key

    def reference_key(self) -> str:
        """Hash of what determines the reference features (not the backend or timing)."""
        parts = [self.arch, self.resolution, self.batch, list(self.taps), self.timestep,
                 self.ensemble, self.view, self.device, self.seed]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]

    def artifact_key(self) -> str:
        """Hash of what determines a build: the artifact (static batch) and the FLOPs counted."""
        parts = [self.arch, self.resolution, self.batch, self.chunk, list(self.taps),
                 self.timestep, self.ensemble, self.view, self.precision, self.device, self.seed,
                 self.backend, sorted(self.options.items())]
        return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["taps"] = list(self.taps)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Scenario":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown scenario keys {unknown}; known keys: {sorted(known)}.")
        return cls(**data)


# Every key of a result line, in order. Values are null when not measured (e.g. CUDA memory on
# CPU, artifact size for eager backends).
RESULT_FIELDS: tuple[str, ...] = (
    # identity
    "scenario", "key", "status", "error", "date", "machine", "load_avg_start", "load_avg_end",
    "foreign_cores_before", "foreign_cores", "loaded", "weights",
    # correctness
    "parity_max_abs", "parity_max_rel", "parity_cosine", "parity_tol", "parity_ok",
    # time
    "times_s", "p50_s", "p90_s", "p99_s", "mean_s", "throughput_img_s", "load_s", "build_s",
    "first_call_s",
    # memory / size
    "max_rss_mb", "load_max_rss_mb", "run_max_rss_mb", "cuda_max_allocated_mb", "cuda_max_reserved_mb", "artifact_bytes",
    "artifact_format",
    # FLOPs
    "flops", "vae_flops", "achieved_gflops", "frac_matmul_peak", "frac_theoretical_peak",
    # versions, build notes (exporter used, fused ops, reused build)
    "versions", "notes",
)


def empty_result(scenario: Scenario) -> dict[str, Any]:
    """A result line with every field present and null (filled in by the runner)."""
    result: dict[str, Any] = {name: None for name in RESULT_FIELDS}
    result.update(scenario=scenario.to_dict(), key=scenario.key, status="pending",
                  weights="random (seeded); timing does not depend on weight values")
    return result
