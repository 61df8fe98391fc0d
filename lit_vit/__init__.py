"""lit_vit: PyTorch Lightning experiments for Vision Transformers."""

import os

# albumentations asks PyPI for a newer release when it is imported, unless this is set. Every lit_vit import path
# goes through this package first, so it is set here, before any submodule can import albumentations.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def patch_lightning() -> bool:
    """Apply lit_vit's Lightning workarounds (the DDP SIGTERM deadlock fix; see lit_vit.lightning_compat). The CLI
    applies them; call this once before `Trainer.fit` when you build a Trainer with lit_vit's modules yourself."""
    from lit_vit.lightning_compat import patch_lightning as patch  # lightning is imported only when asked for

    return patch()


__all__ = ["patch_lightning"]
