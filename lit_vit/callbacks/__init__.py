from lit_vit.callbacks.artifacts import TrainSpeed, ViTArtifacts
from lit_vit.callbacks.predict import PredictionCSVWriter
from lit_vit.callbacks.run import AtomicModelCheckpoint, LastCheckpoint, RunLogger

__all__ = [
    "AtomicModelCheckpoint",
    "LastCheckpoint",
    "PredictionCSVWriter",
    "RunLogger",
    "TrainSpeed",
    "ViTArtifacts",
]
