"""Encoders (torchvision ResNet18), fusion modules and the multimodal classifier."""

from drl_tune.models.classifier import ModelOutput, MultimodalClassifier

__all__ = ["ModelOutput", "MultimodalClassifier"]
