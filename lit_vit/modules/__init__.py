from lit_vit.modules.classifier import ImageClassifier
from lit_vit.modules.vilt import ViltNLVR2, ViltPretraining, ViltRetrieval, ViltVQA

__all__ = ["ImageClassifier", "ViltNLVR2", "ViltPretraining", "ViltRetrieval", "ViltVQA"]
