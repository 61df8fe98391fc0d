"""The embedded default data: generated scenes of two coloured shapes, with captions and questions."""

import numpy as np
from PIL import Image, ImageDraw

from lit_vit.data.image_text.datamodule import ImageTextDataModule
from lit_vit.data.image_text.sources import Question, SplitRecords
from lit_vit.errors import ConfigError

COLORS = {
    "red": (220, 50, 40),
    "green": (40, 170, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
}
SHAPES = ("circle", "square", "triangle")
SCENE_SIZES = ((64, 64), (64, 96), (96, 64), (48, 80), (80, 48), (64, 80))
RELATIONS = {"h": ("to the left of", "to the right of"), "v": ("above", "below")}


class Scenes:
    """Deterministic scenes of two coloured shapes, with captions and questions that need the image.

    Scene `i` of a split depends only on (split seed, i). The two objects differ in colour and in shape and sit
    side by side or one above the other; colours, shapes and layout are uniform, so no text prior solves ITM, the
    masked colour / shape / relation words, or the questions.
    """

    def __init__(self, num: int, seed: int) -> None:
        self.num, self.seed = num, seed

    def __len__(self) -> int:
        return self.num

    def layout(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        h, w = SCENE_SIZES[rng.integers(len(SCENE_SIZES))]
        colors = rng.choice(list(COLORS), size=2, replace=False).tolist()
        shapes = rng.choice(SHAPES, size=2, replace=False).tolist()
        axis = "h" if rng.random() < 0.5 else "v"
        size = int(min(h, w) * rng.uniform(0.28, 0.38))
        boxes = []
        for k in range(2):  # object 0 in the first half (left / top), object 1 in the second
            if axis == "h":
                x0 = rng.integers(k * w // 2, (k + 1) * w // 2 - size + 1)
                y0 = rng.integers(0, h - size + 1)
            else:
                x0 = rng.integers(0, w - size + 1)
                y0 = rng.integers(k * h // 2, (k + 1) * h // 2 - size + 1)
            boxes.append((int(x0), int(y0), int(x0) + size, int(y0) + size))
        return dict(size=(h, w), colors=colors, shapes=shapes, axis=axis, boxes=boxes, rng=rng)

    def load(self, index: int) -> np.ndarray:
        s = self.layout(index)
        h, w = s["size"]
        img = Image.new("RGB", (w, h), (70, 70, 70))
        draw = ImageDraw.Draw(img)
        for color, shape, (x0, y0, x1, y1) in zip(s["colors"], s["shapes"], s["boxes"]):
            fill = COLORS[color]
            if shape == "circle":
                draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
            elif shape == "square":
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
            else:
                draw.polygon([((x0 + x1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=fill)
        return np.asarray(img)

    def captions(self, index: int) -> list[str]:
        s = self.layout(index)
        a, b = (f"{c} {sh}" for c, sh in zip(s["colors"], s["shapes"]))
        first, second = RELATIONS[s["axis"]]
        return [f"a {a} {first} a {b}", f"a {b} {second} a {a}"]

    def questions(self, index: int) -> list[tuple[str, str]]:
        s = self.layout(index)
        rng = s["rng"]
        k = int(rng.integers(2))
        c, sh = s["colors"][k], s["shapes"][k]
        first, second = RELATIONS[s["axis"]]
        other = f"{s['colors'][1 - k]} {s['shapes'][1 - k]}"
        rel = first if k == 0 else second
        if rng.random() < 0.5:
            ask_c, ask_s, yes = c, sh, "yes"
        else:  # a colour-shape pair that is not in the scene, sharing nothing with it half the time
            present = set(zip(s["colors"], s["shapes"]))
            options = [(cc, ss) for cc in COLORS for ss in SHAPES if (cc, ss) not in present]
            ask_c, ask_s = options[rng.integers(len(options))]
            yes = "no"
        return [
            (f"what color is the {sh}?", c),
            (f"what shape is the {c} object?", sh),
            (f"what is {rel} the {other}?", f"{c} {sh}"),
            (f"is there a {ask_c} {ask_s}?", yes),
        ]


class SceneDataModule(ImageTextDataModule):
    """The embedded default: generated scenes of two coloured shapes with captions or questions (no files).

    Captions name both objects' colours and shapes and their spatial relation ("a red circle to the left of a blue
    square"), two per scene; in `vqa` mode every scene has four questions (colour, shape, relation, yes / no). The
    scenes themselves are fixed (a seed per split); `seed` sets the training order and the augmentations.

    Args:
        task: captions (pre-training, retrieval) or vqa.
        num_train: training scenes.
        num_val: validation scenes (held out: another seed).
        num_test: test scenes.
    """

    SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}

    def __init__(
        self,
        task: str = "captions",
        num_train: int = 4000,
        num_val: int = 200,
        num_test: int = 200,
        image_size: int = 32,
        patch_size: int = 8,
        max_text_len: int = 16,
        vocab_size: int = 200,
        batch_size: int = 64,
        num_workers: int = 0,
        **kwargs,
    ) -> None:
        if task not in ("captions", "vqa"):
            raise ConfigError(f"unknown task {task!r}; choose captions or vqa")
        # generated in memory: no files (no root) and no corrupt images (no skip_corrupt_images)
        super().__init__(
            root="", skip_corrupt_images=False, image_size=image_size, patch_size=patch_size,
            max_text_len=max_text_len, vocab_size=vocab_size, batch_size=batch_size, num_workers=num_workers, **kwargs,
        )  # fmt: skip
        self.task = task
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}

    def vocab_texts(self) -> list[str]:
        """Captions and questions of the training scenes: pre-training, retrieval and VQA share one vocabulary."""
        scenes = Scenes(self.sizes["train"], self.SPLIT_SEEDS["train"])
        return [t for i in range(len(scenes)) for t in [*scenes.captions(i), *(q for q, _ in scenes.questions(i))]]

    def records(self, split: str) -> SplitRecords:
        scenes = Scenes(self.sizes[split], self.SPLIT_SEEDS[split])
        if self.task == "vqa":
            # ten agreeing "annotators", as in VQAv2: the true answer scores 1.0
            questions = [Question(i, q, [a] * 10) for i in range(len(scenes)) for q, a in scenes.questions(i)]
            return SplitRecords(scenes, questions=questions)
        return SplitRecords(scenes, captions=[scenes.captions(i) for i in range(len(scenes))])
