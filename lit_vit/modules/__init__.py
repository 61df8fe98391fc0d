from lit_vit.modules.classifier import ImageClassifier
from lit_vit.modules.vilt import ViltPretraining, ViltRetrieval, ViltVQA

__all__ = ["ImageClassifier", "ViltPretraining", "ViltRetrieval", "ViltVQA"]
