"""lit_vit's ImageFolder fit against a plain timm + torchvision training loop: the same ViT, recipe, epochs, threads
and DataLoader workers on one small real-data ImageFolder tree (the embedded digits, upsampled to 28 px grey PNGs),
wall time and validation top-1 of each, printed and appended to benchmarks/results.jsonl.

    python benchmarks/imagefolder_vs_timm.py                  # small defaults: a few minutes on 2 cores
    python benchmarks/imagefolder_vs_timm.py --quick          # seconds: 1 epoch of a few batches (a test runs it)

Every contender runs as its own process (`python -m lit_vit fit ...` and this script's --timm-child), so each wall
time includes its interpreter start and imports. lit_vit runs twice by default: reading the PNGs in DataLoader
workers (cache off: albumentations per image) and with the tree decoded once (cache memory: whole batches
augmented with tensor ops). Time it on an otherwise idle machine: each record carries the load average before it.

The recipe (both sides): ViT img 28 / patch 7 (16 patches + class token), AdamW lr 1e-3, weight decay 0.05 on
weights only (not biases, norms, position table, class token), betas (0.9, 0.999), linear warm-up of one epoch then
cosine to 1% of lr per step, label smoothing 0.1, batch 64 (full batches), pad-and-crop by 2 px, no flip,
normalisation mean 0.5 / std 0.5, validation after every epoch on the 269 held-out digits.
"""

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMG, PATCH, PAD = 28, 7, 2


def write_tree(root: Path) -> Path:
    """train/<digit>/*.png and val/<digit>/*.png from lit_vit's fixed digits split, upsampled bicubically (8 -> 28)."""
    marker = root / "done.txt"
    if marker.is_file():
        return root
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from lit_vit.data.digits import digits_split  # numpy only: this process never imports Lightning

    for split, (images, targets) in digits_split().items():
        if split == "test":
            continue
        for i, (image, target) in enumerate(zip(images, targets)):
            folder = root / split / str(target)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(image[..., 0])).resize((IMG, IMG), Image.BICUBIC).save(
                folder / f"{i:04d}.png"
            )
    marker.write_text("lit_vit digits at 28 px\n")
    return root


def model_dims(quick: bool) -> dict:
    return dict(embed_dim=32, depth=1, num_heads=2) if quick else dict(embed_dim=64, depth=4, num_heads=4)


def lit_vit_command(args, tree: Path, run_dir: Path, cache: str) -> list[str]:
    backbone = {
        "class_path": "lit_vit.models.VisionTransformer",
        "init_args": {"img_size": IMG, "patch_size": PATCH, "in_chans": 1, "mlp_ratio": 2.0, "pool": "cls",
                      "pos_embed": "learned_1d", **model_dims(args.quick)},
    }  # fmt: skip
    cmd = [sys.executable, "-m", "lit_vit", "fit", "--seed_everything=0", f"--num_threads={args.threads}"]
    cmd += ["--model=lit_vit.modules.ImageClassifier", f"--model.backbone={json.dumps(backbone)}"]
    cmd += ["--model.lr=1e-3", "--model.weight_decay=0.05", "--model.warmup_epochs=1", "--model.min_lr_ratio=0.01"]
    cmd += ["--model.label_smoothing=0.1"]
    cmd += ["--data=lit_vit.data.ImageFolderDataModule", f"--data.root={tree}", "--data.channels=1"]
    cmd += [f"--data.img_size={IMG}", "--data.augment=pad_crop", f"--data.pad={PAD}", "--data.hflip=false"]
    cmd += ["--data.normalize=[0.5, 0.5]", f"--data.batch_size={args.batch_size}", f"--data.cache={cache}"]
    cmd += [f"--data.num_workers={args.workers}", "--data.augment_on=auto"]
    cmd += [f"--trainer.default_root_dir={run_dir}", f"--trainer.max_epochs={args.epochs}", "--trainer.accelerator=cpu"]
    cmd += ["--trainer.devices=1", "--trainer.precision=32-true", "--trainer.enable_progress_bar=false"]
    cmd += ["--trainer.enable_model_summary=false", "--trainer.num_sanity_val_steps=0"]
    if args.limit_batches:
        cmd.append(f"--trainer.limit_train_batches={args.limit_batches}")
    return cmd


def last_val_top1(run_dir: Path) -> float:
    import csv

    with open(run_dir / "metrics.csv", newline="") as f:
        values = [float(r["val/acc1"]) for r in csv.DictReader(f) if r.get("val/acc1")]
    return values[-1]


def timm_child(config: dict) -> dict:
    """The plain loop: torchvision ImageFolder + DataLoader, timm's VisionTransformer, AdamW, LambdaLR, CE."""
    import torch
    from timm.models.vision_transformer import VisionTransformer
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision import transforms as T

    torch.set_num_threads(config["threads"])
    torch.manual_seed(0)
    norm = [T.ToTensor(), T.Normalize([0.5], [0.5])]
    train_tf = T.Compose([T.Grayscale(1), T.Pad(PAD), T.RandomCrop(IMG), *norm])
    train = datasets.ImageFolder(str(Path(config["tree"]) / "train"), transform=train_tf)
    val = datasets.ImageFolder(str(Path(config["tree"]) / "val"), transform=T.Compose([T.Grayscale(1), *norm]))
    workers = config["workers"]
    loader_kw = dict(num_workers=workers, persistent_workers=workers > 0)
    train_loader = DataLoader(train, batch_size=config["batch_size"], shuffle=True, drop_last=True, **loader_kw)
    val_loader = DataLoader(val, batch_size=config["batch_size"], **loader_kw)
    model = VisionTransformer(
        img_size=IMG, patch_size=PATCH, in_chans=1, num_classes=len(train.classes), mlp_ratio=2.0, global_pool="token",
        **model_dims(config["quick"]),
    )  # fmt: skip
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or n in ("pos_embed", "cls_token")]
    decay = [p for n, p in model.named_parameters() if not (p.ndim <= 1 or n in ("pos_embed", "cls_token"))]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                              lr=1e-3, betas=(0.9, 0.999))  # fmt: skip
    per_epoch = min(len(train_loader), config["limit_batches"] or len(train_loader))
    total, warmup = per_epoch * config["epochs"], per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optim, factor)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    top1 = 0.0
    for _ in range(config["epochs"]):
        model.train()
        for i, (x, y) in enumerate(train_loader):
            if i >= per_epoch:
                break
            loss = loss_fn(model(x), y)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            schedule.step()
        model.eval()
        hits = seen = 0
        with torch.no_grad():
            for x, y in val_loader:
                hits += int((model(x).argmax(-1) == y).sum())
                seen += len(y)
        top1 = hits / seen
    return {"top1": top1}


def timed(cmd: list[str], threads: int) -> tuple[float, str]:
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[:4])} ... failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of every contender (default 10)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every contender (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of every contender (default 2)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    parser.add_argument("--lit-cache", nargs="+", default=["off", "memory"], choices=["off", "memory"],
                        help="lit_vit runs: ImageFolder cache off (files) and / or memory (batched)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("/tmp/lit_vit_imagefolder_vs_timm"),
                        help="folder of the PNG tree and the runs (tree reused, runs replaced)")  # fmt: skip
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results.jsonl",
                        help="JSON-lines file the record is appended to")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="1 epoch of 3 batches, a 1-block ViT, 0 workers")
    parser.add_argument("--timm-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.timm_child:
        print(json.dumps(timm_child(json.loads(args.timm_child))))
        return None
    args.limit_batches = 0
    if args.quick:
        args.epochs, args.workers, args.limit_batches = 1, 0, 3
    import shutil

    tree = write_tree(args.out / "tree")
    load_before = os.getloadavg()
    results: dict[str, dict] = {}
    for cache in args.lit_cache:
        run_dir = args.out / f"lit_vit_cache_{cache}"
        shutil.rmtree(run_dir, ignore_errors=True)
        wall, log = timed(lit_vit_command(args, tree, run_dir, cache), args.threads)
        path = next((line for line in log.splitlines() if line.startswith("data: ")), "")
        results[f"lit_vit_cache_{cache}"] = {"wall_s": round(wall, 2), "top1": last_val_top1(run_dir), "data": path}
    child = dict(tree=str(tree), threads=args.threads, workers=args.workers, batch_size=args.batch_size,
                 epochs=args.epochs, limit_batches=args.limit_batches, quick=args.quick)  # fmt: skip
    wall, log = timed([sys.executable, str(Path(__file__).resolve()), "--timm-child", json.dumps(child)], args.threads)
    results["timm"] = {"wall_s": round(wall, 2), "top1": json.loads(log.strip().splitlines()[-1])["top1"]}
    import torch

    record = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python benchmarks/imagefolder_vs_timm.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "label": "imagefolder_vs_timm" + (" (quick)" if args.quick else ""),
        "load_average_before": [round(v, 2) for v in load_before],
        "environment": {"hostname": socket.gethostname(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "config": {k: v for k, v in child.items() if k != "tree"} | model_dims(args.quick),
        "results": results,
    }
    for name, r in results.items():
        print(f"{name:22s} wall {r['wall_s']:8.2f} s   top-1 {r['top1']:.4f}   {r.get('data', '')}")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"appended to {args.results}")
    return record


if __name__ == "__main__":
    main()
