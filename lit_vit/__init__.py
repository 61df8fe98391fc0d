"""lit_vit: PyTorch Lightning experiments for Vision Transformers."""

import os

# albumentations asks PyPI for a newer release when it is imported, unless this is set. Every lit_vit import path
# goes through this package first, so it is set here, before any submodule can import albumentations.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
