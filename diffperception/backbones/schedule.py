"""The noise schedule and what the network predicts, from the scheduler's config.

Features are taken on the DDPM forward process ``z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps``
with the scheduler's own ``alphas_cumprod``. Scheduler classes that share that discrete schedule
(built from ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``,
``trained_betas``, ``rescale_betas_zero_snr``) are accepted, as are diffusers' flow-matching
schedulers (SD3, FLUX: ``z_t = (1 - sigma_t) z_0 + sigma_t eps`` with ``sigma_t = t / T``, the sigma
``FlowMatchEulerDiscreteScheduler.scale_noise`` uses for timestep ``t``: its timesteps are always
``sigmas * num_train_timesteps``, whatever the shift). Schedulers whose noise process is another one
(EDM, consistency models, score SDEs) are refused at load time, as are prediction types other than
diffusers' ``epsilon``, ``v_prediction`` and ``sample`` (flow-matching networks predict the
velocity ``eps - z_0``; the prediction type is then ``flow``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["NoiseSchedule", "load_schedule", "DDPM_SCHEDULERS", "FLOW_MATCHING_SCHEDULERS",
           "PREDICTION_TYPES", "READ_FIELDS"]

#: Scheduler classes whose training noise process is the DDPM one (the same ``alphas_cumprod``).
DDPM_SCHEDULERS = (
    "DDPMScheduler", "DDIMScheduler", "DDIMInverseScheduler", "DDIMParallelScheduler",
    "DDPMParallelScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler", "UniPCMultistepScheduler",
    "DEISMultistepScheduler", "LCMScheduler", "TCDScheduler",
)
#: Flow-matching scheduler classes (rectified flow: SD3, SD3.5, FLUX).
FLOW_MATCHING_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: Scheduler config fields that decide ``alphas_cumprod`` or how the output is read.
READ_FIELDS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
               "rescale_betas_zero_snr", "prediction_type")
_MAX_TIMESTEPS = 100_000


@dataclass(frozen=True)
class NoiseSchedule:
    """What the backbone needs of a scheduler.

    Attributes:
        alphas_cumprod: ``abar_t`` for t = 0 .. T-1, float64 ``(T,)``. For flow matching, the
            DDPM ``abar`` of the same signal-to-noise ratio, ``(1-s)^2 / ((1-s)^2 + s^2)``.
        prediction_type: What the network outputs: ``epsilon``, ``v_prediction``, ``sample``,
            or ``flow`` (the velocity ``eps - z_0`` of a flow-matching network).
        config: The scheduler's ``config.json``.
        coefficients: ``(signal, noise)`` per timestep, float64 ``(T, 2)``: ``z_t = signal z_0 +
            noise eps``. DDPM: ``(sqrt(abar_t), sqrt(1 - abar_t))``; flow matching:
            ``(1 - sigma_t, sigma_t)``.
        kind: ``"ddpm"`` or ``"flow_matching"``.
    """

    alphas_cumprod: torch.Tensor
    prediction_type: str
    config: dict[str, Any]
    coefficients: torch.Tensor | None = None
    kind: str = "ddpm"

    def __post_init__(self) -> None:
        if self.coefficients is None:
            abar = self.alphas_cumprod
            object.__setattr__(self, "coefficients", torch.stack([abar.sqrt(), (1 - abar).sqrt()], 1))


def load_schedule(folder: Path) -> NoiseSchedule:
    """Reads ``scheduler/scheduler_config.json`` of a diffusers folder.

    Raises:
        FileNotFoundError: The file is missing.
        ValueError: Not a JSON object (or not JSON, or too large), a scheduler class whose noise process is not DDPM's, an
            unknown prediction type or beta schedule, or an unreasonable number of timesteps.
    """
    from diffusers import DDPMScheduler

    from .model_files import read_json_object

    path = Path(folder) / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; the noise schedule is needed to noise the "
                                "latent.")
    config = read_json_object(path, fix="repair or re-download the model's files")
    name = config.get("_class_name", "DDPMScheduler")
    if name in FLOW_MATCHING_SCHEDULERS:
        return _flow_matching_schedule(path, config)
    if name not in DDPM_SCHEDULERS:
        raise ValueError(
            f"{path}: _class_name = {name!r} is not supported: features are taken on the DDPM "
            f"noise process, which these schedulers share: {list(DDPM_SCHEDULERS)}, or on the "
            f"flow-matching process of {list(FLOW_MATCHING_SCHEDULERS)}. EDM and consistency "
            "schedulers noise differently."
        )
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"{path}: prediction_type = {prediction!r} is not supported; one of "
                         f"{list(PREDICTION_TYPES)}.")
    steps = config.get("num_train_timesteps", 1000)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= _MAX_TIMESTEPS:
        raise ValueError(f"{path}: num_train_timesteps = {steps!r} is invalid: an integer in "
                         f"[1, {_MAX_TIMESTEPS}].")
    keep = {k: v for k, v in config.items() if k in READ_FIELDS and k != "prediction_type"}
    try:
        scheduler = DDPMScheduler.from_config(keep)
    except NotImplementedError as err:
        raise ValueError(f"{path}: beta_schedule = {config.get('beta_schedule')!r} is not "
                         f"supported ({err}).") from err
    return NoiseSchedule(scheduler.alphas_cumprod.to(torch.float64), prediction, config)


def _flow_matching_schedule(path: Path, config: dict[str, Any]) -> NoiseSchedule:
    """The rectified-flow schedule: ``sigma_t = t / T`` for the timestep ``t`` the network sees.

    diffusers' flow-matching schedulers keep ``timesteps = sigmas * num_train_timesteps`` for every
    shift (static or resolution-dependent), so the sigma ``scale_noise`` applies for a timestep
    ``t`` is ``t / T``; the shift only chooses which timesteps a sampler visits.
    """
    steps = config.get("num_train_timesteps", 1000)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= _MAX_TIMESTEPS:
        raise ValueError(f"{path}: num_train_timesteps = {steps!r} is invalid: an integer in "
                         f"[1, {_MAX_TIMESTEPS}].")
    if config.get("invert_sigmas"):
        raise ValueError(f"{path}: invert_sigmas = true is not supported (sigma would fall with "
                         "the timestep); use the scheduler config the model was trained with.")
    sigma = torch.arange(steps, dtype=torch.float64) / steps  # (T,)
    coefficients = torch.stack([1 - sigma, sigma], dim=1)  # (T, 2)
    abar = (1 - sigma) ** 2 / ((1 - sigma) ** 2 + sigma ** 2)  # the same SNR as a DDPM abar
    return NoiseSchedule(abar, "flow", config, coefficients, "flow_matching")
