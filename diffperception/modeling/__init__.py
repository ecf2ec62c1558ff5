"""Task models."""

from .feature_extraction import DiffusionPerceptionForFeatureExtraction, Learnable

__all__ = ["DiffusionPerceptionForFeatureExtraction", "Learnable"]
