"""Fast paths give the reference results: fused attention, compiled backbone, learned_1d table, no host syncs."""

import collections
import csv
import importlib.util
import math
import shutil
from unittest import mock

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_fit_args
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from lit_vit.callbacks import ThroughputLogger
from lit_vit.cli import main as cli_main
from lit_vit.data import DigitsDataModule
from lit_vit.models import VisionTransformer
from lit_vit.models.layers.attention import Attention
from lit_vit.models.layers.pos_embed import build_pos_embed
from lit_vit.modules import ImageClassifier
from lit_vit.perf import count_flops, peak_flops


def tiny_vit(**kwargs) -> VisionTransformer:
    args = dict(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2, num_classes=10)
    return VisionTransformer(**(args | kwargs))


def reference_attention(attn: Attention, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v written out, followed by the output projection."""
    B, N, C = x.shape
    q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-2, -1) * attn.scale
    if bias is not None:
        logits = logits + bias
    out = logits.softmax(dim=-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(B, N, C))


# --- scaled_dot_product_attention against the explicit formula --------------------------------------------------


def test_fused_attention_equals_reference_without_bias():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4).eval()
    x = torch.randn(3, 17, 32)
    torch.testing.assert_close(attn(x), reference_attention(attn, x, None), atol=1e-5, rtol=1e-5)


def test_fused_attention_equals_reference_with_relative_position_bias():
    torch.manual_seed(0)
    grid, heads = (3, 4), 4
    rel = build_pos_embed("relative", 32, grid, num_prefix=1, num_heads=heads)
    with torch.no_grad():
        rel.relative_bias_table.normal_(std=1.0)  # large enough to change the attention pattern visibly
    bias = rel.attn_bias(grid)
    assert bias.shape == (1, heads, 13, 13)
    attn = Attention(32, num_heads=heads).eval()
    x = torch.randn(2, 13, 32)
    fused = attn(x, bias)
    torch.testing.assert_close(fused, reference_attention(attn, x, bias), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fused, attn(x), atol=1e-3)  # the bias is really applied


def test_fused_attention_equals_reference_with_padding_mask():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=2).eval()
    x = torch.randn(2, 6, 32)
    valid = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    mask = torch.zeros(2, 1, 1, 6).masked_fill(~valid[:, None, None, :], -math.inf)
    fused = attn(x, mask)
    torch.testing.assert_close(fused, reference_attention(attn, x, mask), atol=1e-5, rtol=1e-5)
    # padded keys have no influence: changing them leaves the second sequence's valid outputs unchanged
    x2 = x.clone()
    x2[1, 3:] = torch.randn(3, 32)
    torch.testing.assert_close(attn(x2, mask)[1, :3], fused[1, :3], atol=1e-5, rtol=1e-5)


def test_fused_attention_gradients_equal_reference():
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2)
    x = torch.randn(2, 5, 16, requires_grad=True)
    bias = torch.randn(1, 2, 5, 5)
    g_fused = torch.autograd.grad(attn(x, bias).square().sum(), [x, attn.qkv.weight])
    g_ref = torch.autograd.grad(reference_attention(attn, x, bias).square().sum(), [x, attn.qkv.weight])
    for a, b in zip(g_fused, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_t2t_token_attention_equals_reference():
    from lit_vit.models.t2t_vit import TokenAttention

    torch.manual_seed(0)
    attn = TokenAttention(dim=27, token_dim=8)
    x = torch.randn(2, 10, 27)
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    ref = v + attn.proj((q @ k.transpose(-2, -1) * 27**-0.5).softmax(-1) @ v)
    torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=1e-5)


# --- learned 1-D position embedding: no slice / cat at the training grid -----------------------------------------


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def test_vit_training_step_runs_the_same_aten_ops_as_timm():
    pytest.importorskip("timm")
    from lit_vit.bench import timm_twin

    torch.manual_seed(0)
    ours = tiny_vit(in_chans=3)
    twin, why = timm_twin(ours)
    assert twin is not None, why
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    counts = []
    for model in (ours, twin):
        with OpCounter() as c:
            F.cross_entropy(model(x), y).backward()
        counts.append(c.ops)
    assert counts[0] == counts[1]


def test_learned_1d_at_a_new_grid_still_resamples():
    torch.manual_seed(0)
    pe = build_pos_embed("learned_1d", 8, (2, 2), num_prefix=1, num_heads=1)
    assert pe.table((2, 2)) is pe.pos_embed
    t = pe.table((4, 4))
    assert t.shape == (1, 17, 8)
    torch.testing.assert_close(t[:, :1], pe.pos_embed[:, :1])


# --- torch.compile of the backbone -------------------------------------------------------------------------------


def inductor_available() -> bool:
    return importlib.util.find_spec("torch._inductor") is not None and any(
        shutil.which(cc) for cc in ("cc", "gcc", "clang")
    )


@pytest.fixture(scope="module")
def compiled_pair():
    if not inductor_available():
        pytest.skip("torch.compile's inductor backend needs a C compiler (cc / gcc / clang), none found")
    torch.manual_seed(0)
    eager = ImageClassifier(tiny_vit(), num_classes=10)
    compiled = ImageClassifier(tiny_vit(), num_classes=10, compile=True)
    compiled.load_state_dict(eager.state_dict())
    return eager, compiled


@pytest.mark.slow
def test_compile_keeps_checkpoint_keys(compiled_pair):
    eager, compiled = compiled_pair
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert not any("_orig_mod" in k for k in compiled.state_dict())
    assert compiled.hparams["compile"] is True


@pytest.mark.slow
def test_compiled_backbone_gives_the_eager_outputs_and_gradients(compiled_pair):
    eager, compiled = compiled_pair
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    outs, grads = [], []
    for model in (eager, compiled):
        model.train()
        model.zero_grad()
        out = model(x)
        F.cross_entropy(out, y).backward()
        outs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


# --- the training step makes no host-device syncs -----------------------------------------------------------------

SYNCING = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__index__,
    torch.Tensor.cpu,
    torch.Tensor.numpy,
}


class SyncCounter(TorchFunctionMode):
    """Counts tensor -> Python conversions (each one is a host-device sync on a GPU) while `active`."""

    def __init__(self) -> None:
        super().__init__()
        self.count, self.active = 0, False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.active and func in SYNCING:
            self.count += 1
        return func(*args, **(kwargs or {}))


class Window(L.Callback):
    def __init__(self, counter: SyncCounter) -> None:
        self.counter = counter

    def on_train_batch_start(self, *args) -> None:
        self.counter.active = True

    def on_train_epoch_end(self, *args) -> None:
        self.counter.active = False


def syncs_in_training(steps: int, callbacks=()) -> int:
    counter = SyncCounter()
    torch.manual_seed(0)
    trainer = L.Trainer(
        max_steps=steps, limit_val_batches=0, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=True, enable_model_summary=False, log_every_n_steps=1000,
        callbacks=[Window(counter), *callbacks],
    )  # fmt: skip
    with counter:
        trainer.fit(ImageClassifier(tiny_vit()), DigitsDataModule(batch_size=8))
    return counter.count


@pytest.mark.slow
def test_training_steps_make_no_host_syncs_with_the_progress_bar_on():
    """Logging, metrics, the progress bar and the (fused) AdamW step add no tensor -> Python conversion per step."""
    assert syncs_in_training(6) - syncs_in_training(3) == 0


@pytest.mark.slow
def test_throughput_logger_syncs_only_at_logging_steps():
    assert syncs_in_training(6, [ThroughputLogger()]) - syncs_in_training(3, [ThroughputLogger()]) == 0


# --- FLOPs and peaks for MFU -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_flop_count_of_vit_ti_matches_timm_reference_gmacs():
    """ViT-Ti/16 at 224: 1.26 GMACs (timm), i.e. 2.52 GFLOPs forward; a training step about 3x that."""
    torch.manual_seed(0)
    model = VisionTransformer(variant="Ti")
    x = torch.randn(1, 3, 224, 224)
    forward = count_flops(model, x, train=False)
    assert forward == pytest.approx(2 * 1.26e9, rel=0.02)
    train = count_flops(model, x, torch.tensor([3]), train=True)
    # backward ~2x forward: no input gradient for the patch conv, 2.5x for the fused attention (it recomputes)
    assert 2.9 < train / forward < 3.1
    assert all(p.grad is None for p in model.parameters())  # counting leaves no gradients behind


@pytest.mark.parametrize(
    "name, precision, expected",
    [
        ("NVIDIA H100 80GB HBM3", "bf16-mixed", 989.4e12),
        ("NVIDIA H100 PCIe", "bf16-mixed", 756e12),
        ("NVIDIA H200", "16-mixed", 989.4e12),
        ("NVIDIA A100-SXM4-80GB", "bf16-mixed", 312e12),
        ("NVIDIA L40S", "bf16-mixed", 362.05e12),
        ("NVIDIA L4", "bf16-mixed", 121e12),
        ("Tesla V100-SXM2-32GB", "bf16-mixed", None),
        ("Some Future GPU", "bf16-mixed", None),
    ],
)
def test_peak_flops_table_lookup(name, precision, expected):
    with mock.patch("torch.cuda.get_device_name", return_value=name):
        peak, source = peak_flops(torch.device("cuda"), precision)
    assert peak == (pytest.approx(expected) if expected else None), source


def test_peak_flops_fp32_uses_tf32_only_when_allowed():
    with mock.patch("torch.cuda.get_device_name", return_value="NVIDIA H100 80GB HBM3"):
        before = torch.get_float32_matmul_precision()
        try:
            torch.set_float32_matmul_precision("highest")
            assert peak_flops(torch.device("cuda"), "32-true")[0] == pytest.approx(66.9e12)
            torch.set_float32_matmul_precision("high")
            assert peak_flops(torch.device("cuda"), "32-true")[0] == pytest.approx(494.7e12)
        finally:
            torch.set_float32_matmul_precision(before)


def test_peak_flops_on_cpu_only_from_the_override():
    assert peak_flops(torch.device("cpu"), "32-true")[0] is None
    assert peak_flops(torch.device("cpu"), "32-true", override_tflops=2.0)[0] == 2e12


def test_throughput_logger_logs_samples_per_s_and_mfu_with_a_given_peak(tmp_path):
    torch.manual_seed(0)
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="", version="")
    callback = ThroughputLogger(peak_tflops=1.0)
    trainer = L.Trainer(
        max_steps=4, limit_val_batches=0, accelerator="cpu", logger=logger, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=2, callbacks=[callback],
    )  # fmt: skip
    model = ImageClassifier(tiny_vit())
    trainer.fit(model, DigitsDataModule(batch_size=8))
    assert callback.flops_per_sample == count_flops(model.backbone, torch.randn(1, 1, 16, 16), train=True)

    rows = [r for r in csv.DictReader((tmp_path / "metrics.csv").open()) if r.get("throughput/samples_per_s")]
    assert [int(r["step"]) for r in rows] == [1, 3]
    for r in rows:
        sps, tflops, mfu = (float(r[f"throughput/{k}"]) for k in ("samples_per_s", "tflops_per_s", "mfu"))
        assert sps > 0
        assert tflops == pytest.approx(sps * callback.flops_per_sample / 1e12)
        assert mfu == pytest.approx(tflops / 1.0)


def test_throughput_logger_from_the_cli_writes_throughput_columns(run_dir):
    args = tiny_fit_args(
        run_dir, "--trainer.log_every_n_steps=2", "--trainer.callbacks+=lit_vit.callbacks.ThroughputLogger"
    )
    cli_main([*args, "--trainer.callbacks.peak_tflops=0.25"])
    rows = [r for r in csv.DictReader((run_dir / "metrics.csv").open()) if r.get("throughput/samples_per_s")]
    assert len(rows) == 2  # 4 steps, logged every 2
    assert all(float(r["throughput/samples_per_s"]) > 0 and float(r["throughput/mfu"]) > 0 for r in rows)
