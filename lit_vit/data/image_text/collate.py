"""Batching image-text items: images padded with a pixel mask, texts tokenized, VQA targets as dense scores."""

import torch

from lit_vit.data.tokenizer import TextTokenizer


class ImageTextCollate:
    """Pads images to the largest height / width of the batch (pixel mask 1 on real pixels) and tokenizes texts."""

    def __init__(self, tokenizer: TextTokenizer | None, num_answers: int = 0) -> None:
        self.tokenizer, self.num_answers = tokenizer, num_answers

    def __call__(self, items: list[dict | None]) -> dict[str, torch.Tensor]:
        items = [it for it in items if it is not None]
        if not items:
            raise RuntimeError("every image of a batch was corrupt and skipped; check the image files")
        H = max(it["image"].shape[1] for it in items)
        W = max(it["image"].shape[2] for it in items)
        image = torch.zeros(len(items), 3, H, W)
        pixel_mask = torch.zeros(len(items), H, W, dtype=torch.long)
        for b, it in enumerate(items):
            _, h, w = it["image"].shape
            image[b, :, :h, :w] = it["image"]
            pixel_mask[b, :h, :w] = 1
        text = self.tokenizer([it["text"] for it in items])
        batch = {
            "image": image,
            "pixel_mask": pixel_mask,
            "text_ids": text.ids,
            "text_mask": text.mask,
            "word_ids": text.word_ids,
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
