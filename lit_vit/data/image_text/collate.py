"""Batching image-text items: images padded with a pixel mask, texts tokenized, VQA targets as dense scores."""

from collections.abc import Sequence

import torch

from lit_vit.data.tokenizer import TextTokenizer


def pad_images(images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (C, h, w) padded to the largest height and width, with a pixel mask (1 on real pixels)."""
    H, W = max(im.shape[1] for im in images), max(im.shape[2] for im in images)
    batch = torch.zeros(len(images), images[0].shape[0], H, W)
    mask = torch.zeros(len(images), H, W, dtype=torch.long)
    for b, im in enumerate(images):
        batch[b, :, : im.shape[1], : im.shape[2]] = im
        mask[b, : im.shape[1], : im.shape[2]] = 1
    return batch, mask


def text_fields(tokenizer: TextTokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """A batch's tokenized texts: ids, attention mask and the word index of every token."""
    text = tokenizer(texts)
    return {"text_ids": text.ids, "text_mask": text.mask, "word_ids": text.word_ids}


class ImageTextCollate:
    """Pads images to the largest height / width of the batch (pixel mask 1 on real pixels) and tokenizes texts."""

    def __init__(self, tokenizer: TextTokenizer | None, num_answers: int = 0) -> None:
        self.tokenizer, self.num_answers = tokenizer, num_answers

    def __call__(self, items: list[dict | None]) -> dict[str, torch.Tensor]:
        items = [it for it in items if it is not None]
        if not items:
            raise RuntimeError("every image of a batch was corrupt and skipped; check the image files")
        image, pixel_mask = pad_images([it["image"] for it in items])
        batch = {
            "image": image,
            "pixel_mask": pixel_mask,
            **text_fields(self.tokenizer, [it["text"] for it in items]),
            "image_index": torch.tensor([it["image_index"] for it in items]),
            "index": torch.tensor([it["index"] for it in items]),
        }
        if self.num_answers:
            targets = torch.zeros(len(items), self.num_answers)
            for b, it in enumerate(items):
                for label, score in it["targets"]:
                    targets[b, label] = score
            batch["targets"] = targets
        return batch
