from lit_vit.callbacks.artifacts import ViTArtifacts
from lit_vit.callbacks.ema import EMA
from lit_vit.callbacks.fewshot import FewShotEval
from lit_vit.callbacks.predict import PredictionCSVWriter
from lit_vit.callbacks.run import LastCheckpoint, run_checkpoints
from lit_vit.callbacks.step_profile import StepProfile
from lit_vit.callbacks.throughput import ThroughputLogger

__all__ = [
    "EMA",
    "FewShotEval",
    "LastCheckpoint",
    "PredictionCSVWriter",
    "StepProfile",
    "ThroughputLogger",
    "ViTArtifacts",
    "run_checkpoints",
]
