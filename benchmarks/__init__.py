"""Latency, memory and FLOP benchmarks of diffusion feature extraction (``diffperception bench``).

Scenarios (``scenario.Scenario``) name a model architecture, resolution, batch, taps, timestep,
ensemble size, backend, precision and device. ``runner.run_scenarios`` runs each one in a fresh
process (build, parity check against the full diffusers forward, timing, peak memory) and appends
one JSON line per scenario; ``report.write_report`` turns the lines into a markdown table and
PNG plots.
"""

from .scenario import RESULT_FIELDS, Scenario

__all__ = ["Scenario", "RESULT_FIELDS"]
