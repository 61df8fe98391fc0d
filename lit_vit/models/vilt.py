"""ViLT (Kim et al., arXiv 2102.03334): one pre-LN transformer over [text tokens; image patches], no CNN, no regions.

The forward pass reads top to bottom in `ViLT.forward`: BERT-style text embeddings, ViT patch embeddings with the
position table interpolated per image to its own patch grid, a pixel mask for padding, random patch sampling in
training, modality-type embeddings, the blocks with the padding mask as an additive attention bias, final norm and
a pooler on the first ([CLS]) token. The heads (ITM, MLM tied to the word embeddings, VQA, retrieval rank, the NLVR2
pair head over two images) live on the same module; word-patch alignment (IPOT) is a function of the features.
Converters for the HuggingFace and the original ViLT checkpoint layouts sit at the end of the file.
"""

import torch
import torch.nn.functional as F
from torch import nn

from lit_vit.errors import ConfigError
from lit_vit.models.layers import PatchEmbed, block_layer_ids, build_blocks, init_weights
from lit_vit.models.variants import vit_dims


class TextEmbed(nn.Module):
    """BERT embeddings: word + position + token type (always 0 here), LayerNorm, dropout."""

    def __init__(self, vocab_size: int, dim: int, max_len: int, norm_eps: float, drop: float) -> None:
        super().__init__()
        self.word_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Embedding(max_len, dim)
        self.type_embed = nn.Embedding(2, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.drop = nn.Dropout(drop)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embed(ids) + self.pos_embed(pos)[None] + self.type_embed.weight[0]
        return self.drop(self.norm(x))


class MLMHead(nn.Module):
    """BERT prediction head: dense, GELU, LayerNorm, then the (tied) word-embedding decoder plus a bias."""

    def __init__(self, dim: int, vocab_size: int, norm_eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.gelu(self.dense(x))), decoder_weight, self.bias)


def vilt_pos_table(table: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Patch position table (1, G*G, D) interpolated bilinearly (align_corners, as official) to `size` patches."""
    d = table.shape[-1]
    t = table.reshape(1, grid[0], grid[1], d).permute(0, 3, 1, 2)
    return F.interpolate(t, size=size, mode="bilinear", align_corners=True)[0]  # D, h, w


class ViLT(nn.Module):
    """Vision-and-Language Transformer with its pre-training and fine-tuning heads.

    Args:
        variant: named size (Ti, S, B, ...; ViLT-B/32 is B with patch 32); explicit embed_dim / depth / num_heads win.
        vocab_size: text vocabulary size (30522 for bert-base-uncased; resized to a trained vocabulary by the
            LightningModule).
        max_text_len: number of text positions (40 in ViLT).
        img_size: pre-training image side of the position table (384 gives a 12x12 table with patch 32).
        patch_size: side of the square patches.
        in_chans: image channels.
        embed_dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of embed_dim.
        qkv_bias: bias on the query / key / value projection.
        drop_rate: dropout on embeddings, MLPs and projections (0.1 in ViLT).
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, increasing linearly with depth.
        max_image_len: patches kept per image when sampling (200 in ViLT; -1 keeps all).
        norm_eps: LayerNorm epsilon of the transformer (1e-6 official; HuggingFace uses 1e-12 everywhere).
        text_norm_eps: LayerNorm epsilon of the text embeddings and the MLM head (BERT's 1e-12).
        num_answers: size of the VQA classifier (0: no VQA head; set by the VQA module from the data).
        rank_head: add the retrieval rank head Linear(D, 1) (initialised from the ITM positive row).
        nlvr2_head: add the NLVR2 pair head Linear(2D, 2D) - LayerNorm - GELU - Linear(2D, 2) over the two images'
            pooled outputs, and a third modality-type row (the second image's, initialised from the image row).
    """

    def __init__(
        self,
        variant: str | None = None,
        vocab_size: int = 30522,
        max_text_len: int = 40,
        img_size: int = 384,
        patch_size: int = 32,
        in_chans: int = 3,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.1,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        max_image_len: int = 200,
        norm_eps: float = 1e-6,
        text_norm_eps: float = 1e-12,
        num_answers: int = 0,
        rank_head: bool = False,
        nlvr2_head: bool = False,
    ) -> None:
        super().__init__()
        dim, depth, num_heads = vit_dims(variant, "ViLT", embed_dim, depth, num_heads)
        if img_size % patch_size:
            raise ConfigError(f"img_size {img_size} is not a multiple of patch_size {patch_size}; change one of them")
        self.embed_dim, self.max_text_len, self.max_image_len = dim, max_text_len, max_image_len
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.text_norm_eps = text_norm_eps

        self.text_embed = TextEmbed(vocab_size, dim, max_text_len, text_norm_eps, drop_rate)
        self.patch_embed = PatchEmbed(patch_size, in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.modality_embed = nn.Embedding(2, dim)  # 0 text, 1 image (2: the second image of a pair, NLVR2)
        self.blocks = build_blocks(
            dim,
            depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop=drop_rate,
            attn_drop=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            norm_eps=norm_eps,
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.pooler = nn.Linear(dim, dim)
        self.itm_head = nn.Linear(dim, 2)
        self.mlm_head = MLMHead(dim, vocab_size, text_norm_eps)
        self.vqa_head: nn.Module | None = None
        self.rank_head: nn.Linear | None = None
        self.nlvr2_head: nn.Module | None = None

        self.apply(init_weights)
        for emb in (self.text_embed.word_embed, self.text_embed.pos_embed, self.text_embed.type_embed):
            nn.init.trunc_normal_(emb.weight, std=0.02)
        nn.init.trunc_normal_(self.modality_embed.weight, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if num_answers:
            self.reset_vqa_head(num_answers)
        if rank_head:
            self.add_rank_head()
        if nlvr2_head:
            self.add_nlvr2_head()

    @property
    def vocab_size(self) -> int:
        return self.text_embed.word_embed.num_embeddings

    @property
    def num_answers(self) -> int:
        return 0 if self.vqa_head is None else self.vqa_head[-1].out_features

    def resize_vocab(self, vocab_size: int) -> None:
        """New word embeddings (and MLM bias) for another vocabulary; a no-op when the size already matches."""
        if vocab_size == self.vocab_size:
            return
        self.text_embed.word_embed = nn.Embedding(vocab_size, self.embed_dim).to(self.pos_embed.device)
        nn.init.trunc_normal_(self.text_embed.word_embed.weight, std=0.02)
        self.mlm_head.bias = nn.Parameter(torch.zeros(vocab_size, device=self.pos_embed.device))

    def reset_vqa_head(self, num_answers: int) -> None:
        """VQA classifier Linear(D, 2D) - LayerNorm - GELU - Linear(2D, num_answers)."""
        d = self.embed_dim
        self.vqa_head = nn.Sequential(
            nn.Linear(d, 2 * d), nn.LayerNorm(2 * d), nn.GELU(), nn.Linear(2 * d, num_answers)
        )
        self.vqa_head.apply(init_weights)
        self.vqa_head.to(self.pos_embed.device)

    def add_rank_head(self) -> None:
        """Retrieval score Linear(D, 1), initialised from the ITM head's 'match' row (official fine-tuning init)."""
        self.rank_head = nn.Linear(self.embed_dim, 1).to(self.pos_embed.device)
        with torch.no_grad():
            self.rank_head.weight.copy_(self.itm_head.weight[1:])
            self.rank_head.bias.copy_(self.itm_head.bias[1:])

    def add_nlvr2_head(self) -> None:
        """NLVR2's "pair" head Linear(2D, 2D) - LayerNorm - GELU - Linear(2D, 2) on the two images' pooled outputs, and
        a third modality-type row for the second image, a copy of the image row (the official fine-tuning init)."""
        d = self.embed_dim
        self.nlvr2_head = nn.Sequential(nn.Linear(2 * d, 2 * d), nn.LayerNorm(2 * d), nn.GELU(), nn.Linear(2 * d, 2))
        self.nlvr2_head.apply(init_weights)
        self.nlvr2_head.to(self.pos_embed.device)
        self.extend_modality_types(3)

    def extend_modality_types(self, rows: int) -> None:
        """Grow the modality-type table to `rows`, the new rows copies of the image row (1); kept rows unchanged."""
        old = self.modality_embed.weight
        if rows <= old.shape[0]:
            return
        table = nn.Embedding(rows, self.embed_dim).to(old.device, old.dtype)
        with torch.no_grad():
            table.weight[: old.shape[0]] = old
            table.weight[old.shape[0] :] = old[1]
        self.modality_embed = table

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed"}

    def layer_groups(self) -> dict[str, int]:
        """Layer of every parameter name for layer-wise lr decay: text and image embeddings 0, block i i + 1, the
        final norm, pooler and heads depth + 1."""
        return block_layer_ids(self, stem=("text_embed", "patch_embed", "cls_token", "pos_embed", "modality_embed"))

    # --- image tokens --------------------------------------------------------------------------------------------
    def embed_image(
        self, image: torch.Tensor, pixel_mask: torch.Tensor, sample: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[class token; patches] + position embedding, their mask, and each kept patch's (row, col).

        Every image gets the position table interpolated to its own valid patch grid (the unpadded part); padded
        patches are masked out. With `sample`, at most `max_image_len` valid patches per image are kept at random.
        """
        x, (gh, gw) = self.patch_embed(image)  # B, gh*gw, D
        B, _, D = x.shape
        mask = F.interpolate(pixel_mask[:, None].float(), size=(gh, gw)).long()[:, 0]  # nearest, as official
        rows, cols = mask[:, :, 0].sum(1), mask[:, 0, :].sum(1)
        table = self.pos_embed[:, 1:]
        pos = torch.zeros(B, D, gh, gw, dtype=x.dtype, device=x.device)
        for i, (h, w) in enumerate(zip(rows.tolist(), cols.tolist())):
            pos[i, :, :h, :w] = vilt_pos_table(table, self.grid, (h, w))
        x = x + pos.flatten(2).transpose(1, 2)
        mask = mask.flatten(1).bool()
        index = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij"), -1).reshape(-1, 2)
        index = index.to(x.device)[None].expand(B, -1, -1)
        if sample and self.max_image_len > 0 and int(mask.sum(1).max()) > self.max_image_len:
            x, mask, index = self._sample_patches(x, mask, index)
        cls = self.cls_token.expand(B, -1, -1) + self.pos_embed[:, :1]
        x = self.pos_drop(torch.cat([cls, x], dim=1))
        mask = torch.cat([mask.new_ones(B, 1), mask], dim=1)
        return x, mask, index

    def _sample_patches(
        self, x: torch.Tensor, mask: torch.Tensor, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep up to `max_image_len` random valid patches per image (in grid order); pad shorter rows, masked."""
        n = min(self.max_image_len, int(mask.sum(1).max()))
        # random keys for valid patches, +inf for padding: the n smallest are a uniform sample of valid patches
        keys = torch.rand(mask.shape, device=x.device).masked_fill(~mask, float("inf"))
        keep = keys.topk(n, dim=1, largest=False).indices.sort(dim=1).values
        kept_mask = mask.gather(1, keep)
        x = x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))
        return x, kept_mask, index.gather(1, keep[..., None].expand(-1, -1, 2))

    # --- the model -----------------------------------------------------------------------------------------------
    def forward(
        self,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
        image: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        sample_patches: bool | None = None,
        image_type: int = 1,
    ) -> dict[str, torch.Tensor]:
        """Features of (text, image) pairs.

        Args:
            text_ids: (B, L) token ids, [CLS] first.
            text_mask: (B, L) 1 for tokens, 0 for padding.
            image: (B, C, H, W) images padded to a common size (H, W multiples of the patch size).
            pixel_mask: (B, H, W) 1 on real pixels, 0 on padding (default: all real).
            sample_patches: sample at most max_image_len patches (default: in training mode).
            image_type: modality-type row of the image tokens (1; NLVR2's second image 2).

        Returns:
            text_feats (B, L, D), image_feats (B, 1 + P, D), text_mask, image_mask (B, 1 + P), pooled (B, D),
            patch_index (B, P, 2) the (row, col) of each image token after the image [CLS].
        """
        if text_ids.shape[1] > self.max_text_len:
            raise ConfigError(
                f"text of {text_ids.shape[1]} tokens is longer than max_text_len {self.max_text_len}; "
                "truncate it in the tokenizer or raise the model's max_text_len"
            )
        if pixel_mask is None:
            pixel_mask = torch.ones(image.shape[0], *image.shape[2:], dtype=torch.long, device=image.device)
        sample = self.training if sample_patches is None else sample_patches
        text = self.text_embed(text_ids) + self.modality_embed.weight[0]
        img, img_mask, index = self.embed_image(image, pixel_mask, sample)
        img = img + self.modality_embed.weight[image_type]
        x = torch.cat([text, img], dim=1)
        mask = torch.cat([text_mask.bool(), img_mask], dim=1)
        attn_bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, float("-inf"))
        attn_bias = attn_bias[:, None, None, :]  # B, 1, 1, N: padded keys get -inf
        for block in self.blocks:
            x = block(x, attn_bias)
        x = self.norm(x)
        L = text_ids.shape[1]
        return {
            "text_feats": x[:, :L],
            "image_feats": x[:, L:],
            "text_mask": text_mask.bool(),
            "image_mask": img_mask,
            "pooled": torch.tanh(self.pooler(x[:, 0])),
            "patch_index": index,
        }

    def itm_logits(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.itm_head(out["pooled"])

    def mlm_logits(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlm_head(out["text_feats"], self.text_embed.word_embed.weight)

    def vqa_logits(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.vqa_head is None:
            raise ConfigError("the model has no VQA head; set num_answers or use the ViltVQA module")
        return self.vqa_head(out["pooled"])

    def nlvr2_logits(self, left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 2) false / true logits from the outputs of the statement with the left (type 1) and the right (type 2)
        image."""
        if self.nlvr2_head is None:
            raise ConfigError("the model has no NLVR2 head; set nlvr2_head: true or use the ViltNLVR2 module")
        return self.nlvr2_head(torch.cat([left["pooled"], right["pooled"]], dim=-1))

    def rank_scores(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.rank_head is None:
            raise ConfigError("the model has no rank head; set rank_head: true or use the ViltRetrieval module")
        return self.rank_head(out["pooled"])[:, 0]


# --- word-patch alignment --------------------------------------------------------------------------------------
def cosine_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity between every row of x (B, M, D) and of y (B, N, D): (B, M, N)."""
    return 1 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(1, 2)


def ipot(
    cost: torch.Tensor, x_pad: torch.Tensor, y_pad: torch.Tensor, beta: float = 0.5, iters: int = 50, k: int = 1
) -> torch.Tensor:
    """Inexact proximal-point optimal transport (Xie et al. 2019) between uniform masses on the unpadded rows.

    cost (B, M, N); x_pad (B, M) / y_pad (B, N) True on padding. Returns the plan T (B, N, M), zero on padding.
    """
    B, M, N = cost.shape
    joint_pad = (x_pad[:, :, None] | y_pad[:, None, :]).transpose(1, 2)  # B, N, M
    x_len = (~x_pad).sum(1).to(cost.dtype).clamp(min=1)
    y_len = (~y_pad).sum(1).to(cost.dtype).clamp(min=1)
    sigma = (torch.ones(B, M, dtype=cost.dtype, device=cost.device) / x_len[:, None]).masked_fill(x_pad, 0)
    T = torch.ones(B, N, M, dtype=cost.dtype, device=cost.device).masked_fill(joint_pad, 0)
    A = torch.exp(-cost.transpose(1, 2) / beta).masked_fill(joint_pad, 0)
    # a large value on padding keeps its 1 / (...) factors at ~0 instead of dividing by zero
    x_big, y_big = (x_pad.to(cost.dtype) * 1e4)[:, None], (y_pad.to(cost.dtype) * 1e4)[:, None]
    sigma = sigma[:, :, None]  # B, M, 1
    for _ in range(iters):
        Q = A * T
        for _ in range(k):
            delta = 1 / (y_len[:, None, None] * (Q @ sigma).transpose(1, 2) + y_big)  # B, 1, N
            sigma = (1 / (x_len[:, None, None] * (delta @ Q) + x_big)).transpose(1, 2)  # B, M, 1
        T = delta.transpose(1, 2) * Q * sigma.transpose(1, 2)
    return T.masked_fill(joint_pad, 0)


def wpa_plan(
    out: dict[str, torch.Tensor], beta: float = 0.5, iters: int = 50, k: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """WPA's transport between words and patches, in float32 (official: autocast off): (cost (B, L, 1 + P), plan
    (B, 1 + P, L), the text and image masks of the tokens that take part).

    Text [CLS], the last real text token ([SEP]) and the image [CLS] are left out, as in the official code: their rows
    of the cost and the plan are zero. Each word's plan mass (a column) sums to 1 / (number of words).
    """
    with torch.autocast(device_type=out["text_feats"].device.type, enabled=False):
        txt, img = out["text_feats"].float(), out["image_feats"].float()
        txt_mask, img_mask = out["text_mask"].clone(), out["image_mask"].clone()
        last = txt_mask.sum(1) - 1
        txt_mask[torch.arange(len(last)), last] = False
        txt_mask[:, 0] = False
        img_mask[:, 0] = False
        cost = cosine_cost(txt, img).masked_fill(~txt_mask[:, :, None] | ~img_mask[:, None, :], 0)
        T = ipot(cost.detach(), ~txt_mask, ~img_mask, beta, iters, k)
        return cost, T, txt_mask, img_mask


def wpa_distance(out: dict[str, torch.Tensor], beta: float = 0.5, iters: int = 50, k: int = 1) -> torch.Tensor:
    """Per-pair optimal-transport distance between words and patches (`wpa_plan`), in float32."""
    cost, T, _, _ = wpa_plan(out, beta, iters, k)
    with torch.autocast(device_type=cost.device.type, enabled=False):
        return torch.diagonal(cost @ T.detach(), dim1=1, dim2=2).sum(-1)


# --- checkpoint layouts ----------------------------------------------------------------------------------------
