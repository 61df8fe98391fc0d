"""ViLT model: shapes and masks, patch sampling, parity with transformers' ViLT, checkpoint layouts, IPOT."""

import pytest
import torch

from lit_vit.errors import ConfigError
from lit_vit.models.vilt import ViLT, ipot, wpa_distance
from lit_vit.models.weights import heads_not_loaded, load_pretrained
from lit_vit.models.weights.vilt import convert_hf_vilt, convert_original_vilt, detect_layout, to_original_vilt

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = dict(vocab_size=50, max_text_len=12, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)


def tiny(**kw) -> ViLT:
    torch.manual_seed(0)
    return ViLT(**(TINY | {"drop_rate": 0.0} | kw)).eval()


def two_sizes() -> tuple[torch.Tensor, torch.Tensor]:
    """Two images in one batch: 24x40 and 32x16, padded to 32x40 with pixel masks."""
    image = torch.zeros(2, 3, 32, 40)
    mask = torch.zeros(2, 32, 40, dtype=torch.long)
    image[0, :, :24, :40] = torch.randn(3, 24, 40)
    mask[0, :24, :40] = 1
    image[1, :, :32, :16] = torch.randn(3, 32, 16)
    mask[1, :32, :16] = 1
    return image, mask


def test_shapes_and_masks_with_images_of_different_sizes():
    model = tiny()
    image, mask = two_sizes()
    ids = torch.tensor([[2, 7, 9, 3, 0], [2, 5, 3, 0, 0]])
    out = model(ids, (ids > 0).long(), image, mask)
    assert out["text_feats"].shape == (2, 5, 32)
    assert out["image_feats"].shape == (2, 1 + 4 * 5, 32)  # class token + full 4x5 grid without sampling
    assert out["pooled"].shape == (2, 32)
    assert out["image_mask"].sum(1).tolist() == [1 + 3 * 5, 1 + 4 * 2]
    # padded tokens do not influence the real ones: changing padded pixels leaves the outputs unchanged
    image2 = image.clone()
    image2[mask[:, None].expand_as(image) == 0] = 5.0
    out2 = model(ids, (ids > 0).long(), image2, mask)
    valid = out["image_mask"]
    assert torch.allclose(out["image_feats"][valid], out2["image_feats"][valid], atol=1e-6)
    assert torch.allclose(out["pooled"], out2["pooled"], atol=1e-6)


def test_patch_sampling_keeps_only_valid_patches():
    model = tiny(max_image_len=6).train()
    image, mask = two_sizes()
    ids = torch.tensor([[2, 7, 3], [2, 5, 3]])
    out = model(ids, torch.ones_like(ids), image, mask)
    assert out["image_feats"].shape[1] == 1 + 6
    assert out["image_mask"].all()  # both images have more than 6 valid patches
    for b, (h, w) in enumerate([(3, 5), (4, 2)]):
        rows, cols = out["patch_index"][b].unbind(-1)
        assert (rows < h).all() and (cols < w).all()
        assert len({(r, c) for r, c in zip(rows.tolist(), cols.tolist())}) == 6  # no patch twice
    model.max_image_len = 12  # image 1 has only 8 valid patches: the rest of its row is masked padding
    out = model(ids, torch.ones_like(ids), image, mask)
    assert out["image_feats"].shape[1] == 1 + 12
    assert out["image_mask"].sum(1).tolist() == [13, 9]


transformers = pytest.importorskip("transformers")


def hf_config(**kw):
    return transformers.ViltConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=12, image_size=32, patch_size=8, max_image_length=-1, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, **kw,
    )  # fmt: skip


def identity_multinomial(input, num_samples, replacement=False, **kw):
    """transformers shuffles the kept patches with torch.multinomial even when it keeps them all: fix the order."""
    return torch.arange(num_samples) % input.shape[-1]


def compare_with_hf(ours: ViLT, hf_out_text, hf_out_image, out, image_mask) -> None:
    L = out["text_feats"].shape[1]
    assert torch.allclose(out["text_feats"], hf_out_text[:, :L], atol=1e-5)
    for b in range(len(image_mask)):  # transformers puts the valid patches first (in grid order), then padding
        ours_valid = out["image_feats"][b][image_mask[b]]
        assert torch.allclose(ours_valid, hf_out_image[b, : len(ours_valid)], atol=1e-5)


def test_parity_with_transformers_vilt_model(monkeypatch):
    torch.manual_seed(0)
    hf = transformers.ViltModel(hf_config()).eval()
    ours = ViLT(**TINY, drop_rate=0.0, norm_eps=1e-12).eval()
    load_pretrained(ours, hf.state_dict())
    image, mask = two_sizes()
    ids = torch.tensor([[2, 7, 9, 3, 0], [2, 5, 3, 0, 0]])
    text_mask = (ids > 0).long()
    monkeypatch.setattr(torch, "multinomial", identity_multinomial)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=text_mask, pixel_values=image, pixel_mask=mask)
        out = ours(ids, text_mask, image, mask)
    L = ids.shape[1]
    compare_with_hf(ours, ref.last_hidden_state, ref.last_hidden_state[:, L:], out, out["image_mask"])
    assert torch.allclose(out["pooled"], ref.pooler_output, atol=1e-5)


def test_parity_with_transformers_masked_lm_and_itm(monkeypatch):
    torch.manual_seed(1)
    hf = transformers.ViltForMaskedLM(hf_config()).eval()
    ours = ViLT(**TINY, drop_rate=0.0, norm_eps=1e-12).eval()
    report = load_pretrained(ours, hf.state_dict())
    assert "mlm_head" not in heads_not_loaded(report) and "itm_head" in heads_not_loaded(report)  # MLM only
    assert (report.family, report.layout, report.skipped_head, report.unexpected) == ("vilt", "hf", [], [])
    image, mask = two_sizes()
    ids = torch.tensor([[2, 7, 9, 3, 0], [2, 5, 3, 0, 0]])
    monkeypatch.setattr(torch, "multinomial", identity_multinomial)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=(ids > 0).long(), pixel_values=image, pixel_mask=mask).logits
        out = ours(ids, (ids > 0).long(), image, mask)
    assert torch.allclose(ours.mlm_logits(out), ref, atol=1e-5)
    assert torch.equal(ours.text_embed.word_embed.weight, hf.vilt.embeddings.text_embeddings.word_embeddings.weight)


def test_parity_with_transformers_vqa_and_retrieval_heads(monkeypatch):
    torch.manual_seed(2)
    cfg = hf_config(num_labels=7)
    vqa = transformers.ViltForQuestionAnswering(cfg).eval()
    ours = ViLT(**TINY, drop_rate=0.0, norm_eps=1e-12, num_answers=7).eval()
    load_pretrained(ours, vqa.state_dict())
    image, mask = two_sizes()
    ids = torch.tensor([[2, 7, 9, 3, 0], [2, 5, 3, 0, 0]])
    monkeypatch.setattr(torch, "multinomial", identity_multinomial)
    with torch.no_grad():
        ref = vqa(input_ids=ids, attention_mask=(ids > 0).long(), pixel_values=image, pixel_mask=mask).logits
        assert torch.allclose(ours.vqa_logits(ours(ids, (ids > 0).long(), image, mask)), ref, atol=1e-5)
    rank = transformers.ViltForImageAndTextRetrieval(hf_config()).eval()
    ours = ViLT(**TINY, drop_rate=0.0, norm_eps=1e-12, rank_head=True).eval()
    load_pretrained(ours, rank.state_dict())
    with torch.no_grad():
        ref = rank(input_ids=ids, attention_mask=(ids > 0).long(), pixel_values=image, pixel_mask=mask).logits
        assert torch.allclose(ours.rank_scores(ours(ids, (ids > 0).long(), image, mask)), ref[:, 0], atol=1e-5)


def original_layout_state_dict(depth: int = 2, d: int = 32, vocab: int = 50, grid: int = 4) -> dict:
    """A state dict with the original ViLT key names and shapes (vilt_module.py), random values."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    sd = {
        "text_embeddings.position_ids": torch.arange(12)[None],
        "text_embeddings.word_embeddings.weight": r(vocab, d),
        "text_embeddings.position_embeddings.weight": r(12, d),
        "text_embeddings.token_type_embeddings.weight": r(2, d),
        "text_embeddings.LayerNorm.weight": 1 + r(d),
        "text_embeddings.LayerNorm.bias": r(d),
        "token_type_embeddings.weight": r(2, d),
        "transformer.cls_token": r(1, 1, d),
        "transformer.pos_embed": r(1, 1 + grid * grid, d),
        "transformer.patch_embed.proj.weight": r(d, 3, 8, 8),
        "transformer.patch_embed.proj.bias": r(d),
        "transformer.norm.weight": 1 + r(d),
        "transformer.norm.bias": r(d),
        "pooler.dense.weight": r(d, d),
        "pooler.dense.bias": r(d),
        "itm_score.fc.weight": r(2, d),
        "itm_score.fc.bias": r(2),
        "mlm_score.bias": r(vocab),
        "mlm_score.transform.dense.weight": r(d, d),
        "mlm_score.transform.dense.bias": r(d),
        "mlm_score.transform.LayerNorm.weight": 1 + r(d),
        "mlm_score.transform.LayerNorm.bias": r(d),
    }
    sd["mlm_score.decoder.weight"] = sd["text_embeddings.word_embeddings.weight"]
    for i in range(depth):
        p = f"transformer.blocks.{i}."
        sd |= {
            p + "norm1.weight": 1 + r(d), p + "norm1.bias": r(d),
            p + "attn.qkv.weight": r(3 * d, d), p + "attn.qkv.bias": r(3 * d),
            p + "attn.proj.weight": r(d, d), p + "attn.proj.bias": r(d),
            p + "norm2.weight": 1 + r(d), p + "norm2.bias": r(d),
            p + "mlp.fc1.weight": r(4 * d, d), p + "mlp.fc1.bias": r(4 * d),
            p + "mlp.fc2.weight": r(d, 4 * d), p + "mlp.fc2.bias": r(d),
        }  # fmt: skip
    return sd


def test_original_layout_loads_and_round_trips(tmp_path):
    sd = original_layout_state_dict()
    assert detect_layout(sd) == "original"
    path = tmp_path / "vilt_original.ckpt"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    model = tiny()
    report = load_pretrained(model, path)
    assert heads_not_loaded(report) == [] and report.missing == [] and report.layout == "original"
    assert report.loaded == len(model.state_dict()) and report.source == str(path)
    assert torch.equal(model.blocks[1].attn.qkv.weight, sd["transformer.blocks.1.attn.qkv.weight"])
    assert torch.equal(model.modality_embed.weight, sd["token_type_embeddings.weight"])
    back = to_original_vilt(model.state_dict())
    expected = {k for k in sd if not k.endswith("position_ids")}
    assert set(back) == expected
    assert all(torch.equal(back[k], sd[k]) for k in expected)
    assert set(convert_original_vilt(back)) == set(model.state_dict())


def test_hf_conversion_fuses_query_key_value():
    torch.manual_seed(0)
    hf = transformers.ViltModel(hf_config())
    ours = convert_hf_vilt(hf.state_dict())
    q = hf.encoder.layer[0].attention.attention.query.weight
    assert torch.equal(ours["blocks.0.attn.qkv.weight"][:32], q)


def test_position_table_of_another_grid_is_interpolated():
    sd = original_layout_state_dict(grid=6)  # a 48-pixel pre-training grid into a 32-pixel model
    model = tiny()
    assert load_pretrained(model, sd).resampled == ((6, 6), (4, 4))
    assert model.pos_embed.shape == (1, 17, 32)
    assert torch.equal(model.pos_embed[:, 0], sd["transformer.pos_embed"][:, 0])


def test_wrong_checkpoint_layout_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot recognise the checkpoint layout"):
        load_pretrained(tiny(), {"conv1.weight": torch.zeros(1)})
    sd = original_layout_state_dict(depth=3)
    with pytest.raises(ConfigError, match="does not match this ViLT.*blocks.2"):
        load_pretrained(tiny(), sd)
    with pytest.raises(ConfigError, match="shape mismatch.*word_embed"):
        load_pretrained(tiny(vocab_size=60), original_layout_state_dict())
    with pytest.raises(ConfigError, match="does not exist"):
        load_pretrained(tiny(), tmp_path / "nope.ckpt")


def test_ipot_plan_is_a_coupling_of_uniform_masses():
    torch.manual_seed(0)
    cost = torch.rand(2, 5, 7)
    x_pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    y_pad = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])
    T = ipot(cost, x_pad, y_pad, iters=200)  # B, N, M
    assert torch.allclose(T[0].sum(0), torch.full((5,), 1 / 5), atol=1e-3)  # marginal over text rows
    assert torch.allclose(T[0].sum(1), torch.full((7,), 1 / 7), atol=1e-3)
    assert torch.allclose(T[1, :4, :3].sum(0), torch.full((3,), 1 / 3), atol=1e-3)
    assert T[1, 4:].abs().sum() == 0 and T[1, :, 3:].abs().sum() == 0


def test_wpa_distance_is_float32_and_smaller_for_aligned_features():
    torch.manual_seed(0)
    feats = torch.randn(1, 6, 16)
    mask = torch.ones(1, 6, dtype=torch.bool)
    same = {"text_feats": feats, "image_feats": feats.clone(), "text_mask": mask, "image_mask": mask}
    other = same | {"image_feats": torch.randn(1, 6, 16)}
    d_same, d_other = wpa_distance(same), wpa_distance(other)
    assert d_same.dtype == torch.float32
    assert d_same.item() < 0.5 * d_other.item()


def test_vilt_b32_has_the_parameter_count_of_transformers_vilt_model():
    ours = ViLT(variant="B")
    ref = transformers.ViltModel(transformers.ViltConfig())
    backbone = sum(p.numel() for n, p in ours.named_parameters() if not n.startswith(("itm_head", "mlm_head")))
    assert backbone == sum(p.numel() for p in ref.parameters()) == 111_595_008
