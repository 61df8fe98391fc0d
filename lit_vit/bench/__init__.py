"""`python -m lit_vit bench`: training / inference throughput of a backbone (against timm for ViT and hybrid) and data
throughput.

Three modes, any combination in one call:

- ``train``: one optimiser step per iteration (forward, cross-entropy, backward, AdamW step) on a fixed random batch;
- ``infer``: forward in eval mode under ``torch.inference_mode``;
- ``data``: a DataModule's training loader alone (decoding and augmentation) for each worker count.

The backbone (any ``torch.nn.Module`` with an ``img_size``) and the DataModule (any ``LightningDataModule``) are
parsed and built by jsonargparse from the classes' own signatures, as ``fit`` builds them: ``--backbone`` /
``--data`` take a class path or a {class_path, init_args} mapping, ``--backbone.<option> VALUE`` sets one constructor
argument and ``--config`` reads both sections from a bench YAML, a fit config or a bare {class_path, init_args}.

For a lit_vit ViT or HybridViT whose architecture timm's ``VisionTransformer`` (with ``HybridEmbed`` over a
``ResNetV2`` for a hybrid) can express (learned 1-D or no position embedding, cls / gap / map pooling), timm's model
is built with the same dimensions and the lit_vit weights, checked to give the same outputs, and timed in the same
process: the two models alternate repeat by repeat (and swap which goes first), so a change in machine load hits both.
Times are medians over the repeats after warm-up; on CUDA every timed window is bracketed by
``torch.cuda.synchronize()``. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on the real
model (attention included; a training step counts forward and backward), and MFU = achieved FLOP/s / peak FLOP/s of
the device (looked up for common GPUs, or given with --peak-tflops).

Every run prints a summary and appends one JSON record to ``--output`` (default: the per-user file
``$XDG_CACHE_HOME/lit_vit/bench.jsonl``, i.e. ``~/.cache/lit_vit/bench.jsonl``; never a file of the repository unless
named); ``--table FILE`` prints the records of a results file as the markdown table used in BENCHMARKS.md.

Modules: ``options`` (the command line), ``config`` (backbone / data sections), ``twins`` (ViLT as a classifier, timm's
twin), ``timing``, ``data`` (loader timing, JPEG tree), ``reports`` (records, summary, tables), ``command`` (``main``).
"""

from lit_vit.bench.command import main, run
from lit_vit.bench.config import instantiate, parse_args
from lit_vit.bench.twins import timm_twin

__all__ = ["instantiate", "main", "parse_args", "run", "timm_twin"]
