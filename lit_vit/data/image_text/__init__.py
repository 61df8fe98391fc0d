"""Image-text LightningDataModules for ViLT: captions (pre-training, retrieval) and visual question answering.

Sources: generated scenes of coloured shapes (the embedded default: no network, no files), COCO caption
annotations, the Karpathy split JSON (COCO / Flickr30k), VQAv2 question + annotation files. Every image is resized by
the ViLT rule (shorter side `image_size`, longer side at most 5/3 of it, both multiples of the patch size) and a
batch pads images to a common size with a pixel mask. Texts are tokenized in the collate function, so the tokenizer
can follow the model's vocabulary (a pre-trained or resumed model) after the data is set up.

Modules: ``transform`` (augmentation and the ViLT resize), ``sources`` (image files, what a split holds), ``scenes``
(generated scenes and their DataModule), ``datasets``, ``collate``, ``datamodule`` (the shared DataModule, VQA
scores), ``coco`` (COCO captions, the Karpathy split, VQAv2), ``nlvr2`` (NLVR2 and the embedded pair task: two
images and a statement), ``shards`` (tar shards: reader, writer, `python -m lit_vit shards`) and ``pairs`` (pairs from
CSV / JSONL / shards in a resumable shard-by-shard order).
"""

from lit_vit.data.image_text.coco import CocoCaptionsDataModule, KarpathyDataModule, VQAv2DataModule
from lit_vit.data.image_text.collate import ImageTextCollate
from lit_vit.data.image_text.datamodule import EVAL_PROTOCOLS, ImageTextDataModule, normalize_answer, vqa_score
from lit_vit.data.image_text.datasets import PairDataset, RetrievalGridDataset
from lit_vit.data.image_text.nlvr2 import NLVR2DataModule, PairStatementDataModule, SceneNLVR2DataModule
from lit_vit.data.image_text.pairs import PairsDataModule, ShardSampler
from lit_vit.data.image_text.scenes import SceneDataModule, Scenes
from lit_vit.data.image_text.sources import ImageFiles, ImageSource, Question, SplitRecords
from lit_vit.data.image_text.transform import AUGMENT_KINDS, ImageTextTransform, vilt_resize_shape

__all__ = [
    "AUGMENT_KINDS",
    "EVAL_PROTOCOLS",
    "CocoCaptionsDataModule",
    "ImageFiles",
    "ImageSource",
    "ImageTextCollate",
    "ImageTextDataModule",
    "ImageTextTransform",
    "KarpathyDataModule",
    "NLVR2DataModule",
    "PairDataset",
    "PairStatementDataModule",
    "PairsDataModule",
    "Question",
    "RetrievalGridDataset",
    "SceneDataModule",
    "SceneNLVR2DataModule",
    "ShardSampler",
    "Scenes",
    "SplitRecords",
    "VQAv2DataModule",
    "normalize_answer",
    "vilt_resize_shape",
    "vqa_score",
]
