"""Task models: the registry, the Hub-aware base, ``AutoDiffusionPerception`` and presets."""

from .auto import AutoDiffusionPerception
from .base import DiffusionPerceptionModel
from .feature_extraction import DiffusionPerceptionForFeatureExtraction, Learnable, LearnablePrompt
from .image_classification import DiffusionPerceptionForImageClassification
from .image_retrieval import DiffusionPerceptionForImageRetrieval, ImageRetrievalOutput
from .image_text_matching import DiffusionPerceptionForImageTextMatching, ImageTextMatchingOutput
from .outputs import ImageClassifierOutput, SemanticSegmenterOutput
from .semantic_correspondence import DiffusionPerceptionForSemanticCorrespondence
from .semantic_segmentation import DiffusionPerceptionForSemanticSegmentation
from .presets import list_presets, load_preset
from .registry import get_model_class, list_models, register_model

__all__ = [
    "AutoDiffusionPerception",
    "DiffusionPerceptionForFeatureExtraction",
    "DiffusionPerceptionForImageClassification",
    "DiffusionPerceptionForImageRetrieval",
    "ImageRetrievalOutput",
    "DiffusionPerceptionForImageTextMatching",
    "DiffusionPerceptionForSemanticCorrespondence",
    "ImageTextMatchingOutput",
    "DiffusionPerceptionForSemanticSegmentation",
    "DiffusionPerceptionModel",
    "ImageClassifierOutput",
    "SemanticSegmenterOutput",
    "Learnable",
    "LearnablePrompt",
    "get_model_class",
    "list_models",
    "list_presets",
    "load_preset",
    "register_model",
]
