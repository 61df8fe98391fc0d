"""WordPiece tokenizer (lower case, BERT rules) on the `tokenizers` library, and whole-word masking for MLM.

A BERT `vocab.txt` gives bert-base-uncased ids; without one, a vocabulary is trained on the training captions. The
vocabulary travels with the run (vocab.txt in the run dir, and inside every checkpoint), so a checkpoint alone
rebuilds the tokenizer.
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from lit_vit.errors import ConfigError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass
class TextBatch:
    """Token ids (B, L) with [CLS] ... [SEP], attention mask, word index of every token (-1 for special/padding)."""

    ids: torch.Tensor
    mask: torch.Tensor
    word_ids: torch.Tensor


class TextTokenizer:
    """Lower-case WordPiece with BERT normalisation, [CLS] / [SEP] added, truncation to `max_len` tokens."""

    def __init__(self, vocab: Sequence[str], max_len: int = 40) -> None:
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ConfigError(f"the vocabulary lacks the special tokens {missing}; use a BERT vocab.txt")
        self.vocab = list(vocab)
        self.max_len = max_len
        ids = {t: i for i, t in enumerate(self.vocab)}
        tok = Tokenizer(WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])]
        )
        tok.add_special_tokens(list(SPECIAL_TOKENS))  # matched whole in text, skipped when decoding
        tok.enable_truncation(max_len)
        self.tokenizer = tok
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (ids[t] for t in SPECIAL_TOKENS)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @classmethod
    def from_file(cls, path: str | Path, max_len: int = 40) -> "TextTokenizer":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"vocabulary file {path} does not exist; give a BERT vocab.txt (e.g. bert-base-uncased's) "
                "or leave vocab_file unset to train a vocabulary on the training captions"
            )
        return cls(path.read_text(encoding="utf-8").splitlines(), max_len)

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int = 8000, max_len: int = 40) -> "TextTokenizer":
        """A WordPiece vocabulary from `texts`: every character (alone and as ##suffix) plus the most frequent words.

        Words are found by the same BERT normaliser and pre-tokenizer that encode text; rarer words fall back to
        pieces. Deterministic (ties broken alphabetically), unlike the library's BPE-style trainer whose choice
        among equally frequent merges changes from run to run.
        """
        normalizer = normalizers.BertNormalizer(lowercase=True)
        pre = pre_tokenizers.BertPreTokenizer()
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
        chars = sorted({c for w in counts for c in w})
        pieces = [*chars, *(f"##{c}" for c in chars)]
        words = [w for w, _ in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0])) if len(w) > 1]
        budget = max(0, vocab_size - len(SPECIAL_TOKENS) - len(pieces))
        return cls([*SPECIAL_TOKENS, *pieces, *words[:budget]], max_len)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.vocab) + "\n", encoding="utf-8")
        return path

    def count_truncated(self, texts: Sequence[str]) -> int:
        """How many texts are longer than max_len tokens (with [CLS] and [SEP]) and get cut."""
        self.tokenizer.no_truncation()
        try:
            return sum(len(e.ids) > self.max_len for e in self.tokenizer.encode_batch(list(texts)))
        finally:
            self.tokenizer.enable_truncation(self.max_len)

    def __call__(self, texts: Sequence[str]) -> TextBatch:
        encodings = self.tokenizer.encode_batch(list(texts))
        n = max(len(e.ids) for e in encodings)
        ids = torch.full((len(encodings), n), self.pad_id, dtype=torch.long)
        word_ids = torch.full((len(encodings), n), -1, dtype=torch.long)
        for i, e in enumerate(encodings):
            ids[i, : len(e.ids)] = torch.tensor(e.ids)
            word_ids[i, : len(e.ids)] = torch.tensor([-1 if w is None else w for w in e.word_ids])
        word_ids[ids == self.cls_id] = -1
        word_ids[ids == self.sep_id] = -1
        return TextBatch(ids, (ids != self.pad_id).long(), word_ids)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))


def whole_word_mask(
    ids: torch.Tensor,
    word_ids: torch.Tensor,
    mask_id: int,
    vocab_size: int,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT whole-word masking: each word is chosen with probability `prob`; all its tokens become targets.

    Of the chosen tokens 80% become [MASK], 10% a random token, 10% stay. Every text gets at least one chosen word.
    Returns (masked ids, labels with -100 on tokens that are not targets).
    """
    device = ids.device
    B = ids.shape[0]
    n_words = int(word_ids.max()) + 1 if word_ids.numel() else 0
    if n_words == 0:
        return ids.clone(), torch.full_like(ids, -100)
    word_pick = torch.rand(B, n_words, generator=generator, device=device) < prob
    # a text with no chosen word gets one of its own words chosen at random
    has_word = torch.zeros(B, n_words, dtype=torch.bool, device=device)
    valid = word_ids >= 0
    has_word.scatter_(1, word_ids.clamp(min=0), valid)
    none = ~(word_pick & has_word).any(1)
    if none.any():
        scores = torch.rand(B, n_words, generator=generator, device=device).masked_fill(~has_word, -1)
        word_pick[none, scores[none].argmax(1)] = True
    chosen = valid & word_pick.gather(1, word_ids.clamp(min=0))
    labels = ids.masked_fill(~chosen, -100)
    r = torch.rand(ids.shape, generator=generator, device=device)
    masked = ids.clone()
    masked[chosen & (r < 0.8)] = mask_id
    random_tok = chosen & (r >= 0.8) & (r < 0.9)
    masked[random_tok] = torch.randint(len(SPECIAL_TOKENS), vocab_size, ids.shape, generator=generator, device=device)[
        random_tok
    ]
    return masked, labels
