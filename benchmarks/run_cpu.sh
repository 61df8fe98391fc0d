#!/usr/bin/env bash
# The CPU rows of BENCHMARKS.md: lit_vit against timm (fp32, 2 threads), the data pipeline, fused / foreach AdamW.
# Run from the repository root with the virtual environment active; each command appends its record to
# benchmarks/results.jsonl (--output; without it the bench writes to ~/.cache/lit_vit/bench.jsonl).
set -euo pipefail
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
B="python -m lit_vit bench --threads 2 --output benchmarks/results.jsonl"
# tiny CIFAR-style ViT: ViT-Ti dims at 32x32, patch 4 (65 tokens), 10 classes
TI32="--backbone.variant Ti --backbone.img_size 32 --backbone.patch_size 4 --backbone.num_classes 10"
$B $TI32 --batch-size 32 --warmup 3 --repeats 15
# ViT-Ti/16 at 224, 1000 classes
$B --backbone.variant Ti --backbone.img_size 224 --backbone.patch_size 16 --batch-size 8 --warmup 2 --repeats 11
# the quickstart model with its data pipeline (embedded digits, 0-2 workers)
$B --config experiments/quickstart.yaml --batch-size 32 --warmup 2 --repeats 9 --mode train infer data --workers 0 1 2
# the data pipeline alone on JPEGs: ImageFolderDataModule (decode + RandomResizedCrop 224 + flip) over 256 JPEGs
$B --config benchmarks/imagefolder_224.yaml --mode data --jpeg-tree 256 --jpeg-size 320 --workers 0 1 2 \
  --data-batch-size 32 --data-batches 6
# fused vs foreach AdamW (same model as the first row)
$B $TI32 --batch-size 32 --warmup 3 --repeats 15 --mode train --no-fused --label "foreach AdamW"
# many short repeats (the paired ratio then has a tighter spread on a noisy machine)
$B $TI32 --batch-size 8 --warmup 3 --repeats 41
# torch.compile of both models (the quickstart ViT; compilation happens in the warm-up)
$B --config experiments/quickstart.yaml --batch-size 32 --warmup 2 --repeats 9 --compile
# hybrid ViTs against timm's hybrids, one thread (BENCHMARKS.md, "Hybrid ViT against timm's hybrid")
H="python -m lit_vit bench --threads 1 --output benchmarks/results.jsonl"
$H --config experiments/hybrid_embedded.yaml --batch-size 32 --warmup 2 --repeats 9 --label "hybrid_embedded"
$H --config benchmarks/hybrid_r_ti16_224.yaml --batch-size 8 --warmup 2 --repeats 9
$H --config benchmarks/hybrid_r50_b16_224.yaml --batch-size 2 --warmup 1 --repeats 5
