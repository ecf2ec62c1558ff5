"""The noise schedule and what the network predicts, from the scheduler's config.

Features are taken on the DDPM forward process ``z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps``
with the scheduler's own ``alphas_cumprod``. Scheduler classes that share that discrete schedule
(built from ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``,
``trained_betas``, ``rescale_betas_zero_snr``) are accepted; schedulers whose noise process is
another one (EDM, flow matching, consistency models, score SDEs) are refused at load time, as are
prediction types other than diffusers' ``epsilon``, ``v_prediction`` and ``sample``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["NoiseSchedule", "load_schedule", "DDPM_SCHEDULERS", "PREDICTION_TYPES", "READ_FIELDS"]

#: Scheduler classes whose training noise process is the DDPM one (the same ``alphas_cumprod``).
DDPM_SCHEDULERS = (
    "DDPMScheduler", "DDIMScheduler", "DDIMInverseScheduler", "DDIMParallelScheduler",
    "DDPMParallelScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler", "UniPCMultistepScheduler",
    "DEISMultistepScheduler", "LCMScheduler", "TCDScheduler",
)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: Scheduler config fields that decide ``alphas_cumprod`` or how the output is read.
READ_FIELDS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
               "rescale_betas_zero_snr", "prediction_type")
_MAX_TIMESTEPS = 100_000


@dataclass(frozen=True)
class NoiseSchedule:
    """What the backbone needs of a scheduler.

    Attributes:
        alphas_cumprod: ``abar_t`` for t = 0 .. T-1, float64 ``(T,)``.
        prediction_type: What the network outputs: ``epsilon``, ``v_prediction`` or ``sample``.
        config: The scheduler's ``config.json``.
    """

    alphas_cumprod: torch.Tensor
    prediction_type: str
    config: dict[str, Any]


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
    if name not in DDPM_SCHEDULERS:
        raise ValueError(
            f"{path}: _class_name = {name!r} is not supported: features are taken on the DDPM "
            f"noise process, which these schedulers share: {list(DDPM_SCHEDULERS)}. EDM, flow-"
            "matching and consistency schedulers noise differently."
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
