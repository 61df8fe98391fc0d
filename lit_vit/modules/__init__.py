from lit_vit.modules.classifier import ImageClassifier

__all__ = ["ImageClassifier"]
