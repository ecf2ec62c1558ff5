"""Test infrastructure shared by the suite.

- ``tiny_models``: tiny SD 1.x / 2.x / XL and pixel-space models saved in the diffusers layout,
  and diffusers' own pipelines on them (the parity reference).
- ``reference``: the one full-forward hook reference (diffusers' full forward with forward hooks
  on the tapped modules), shared with ``benchmarks/baselines.py``.
- ``localhub``: a Hub-compatible HTTP server on 127.0.0.1 that the real ``huggingface_hub`` client
  talks to, and the pytest plugin that starts it for the session.
"""
