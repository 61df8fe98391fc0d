"""The subcommands of `python -m lit_vit` and its top-level help, without Lightning.

`python -m lit_vit --help` (and a bare `python -m lit_vit`) is answered from here by lit_vit/__main__.py in a fraction
of a second; every subcommand imports Lightning (several seconds: Lightning imports torchmetrics, which imports
torchvision.models, torch._dynamo and, where installed, transformers and scipy).
"""

# LightningCLI's subcommands (LightningCLI.subcommands(); tests/test_cli_help.py checks the names): what each does
LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "Train a model in a run folder (config.yaml, metrics.csv, checkpoints/); --ckpt_path last resumes it; a "
    "config with an ablation: section runs the sweep.",
    "validate": "One evaluation epoch over the validation set (default: the run's best.ckpt).",
    "test": "One evaluation epoch over the test set (default: the run's best.ckpt).",
    "predict": "Predictions for images (--data.predict_path) written to a CSV.",
}

# Subcommands beyond LightningCLI's fit / validate / test / predict: name -> "module:function(argv)".
EXTRA_COMMANDS: dict[str, str] = {
    "sweep": "lit_vit.ablation.sweep:main",
    "bench": "lit_vit.bench:main",
    "plot": "lit_vit.ablation.plots:main",
    "shards": "lit_vit.data.image_text.shards:main",
}
# `python -m lit_vit --help` lists them below fit / validate / test / predict, in the same layout
EXTRA_COMMANDS_HELP = """\
  More subcommands (python -m lit_vit <subcommand> --help for their options):
    sweep               Run an ablation (a config with an ablation: section):
                        every variant x seed as an ordinary run; fit --config
                        of such a file runs it too.
    bench               Time training and inference steps of a backbone against
                        timm's ViT (FLOPs, MFU), and the data loader.
    plot                Redraw an ablation sweep's results.csv and plots from
                        its saved runs, without training.
    shards              Write image-text pairs (a CSV, JSONL or folder) as tar
                        shards for lit_vit.data.PairsDataModule.
"""


def top_level_help() -> str:
    """The text of `python -m lit_vit --help`: the same subcommands, in the same layout, as LitViTCLI's parser."""
    import textwrap

    lines = [
        "usage: python -m lit_vit [-h] [-c CONFIG] {fit,validate,test,predict," + ",".join(EXTRA_COMMANDS) + "} ...",
        "",
        "lit_vit: train, ablate and fine-tune Vision Transformers (ViT, hybrid ViT, T2T-ViT, ViLT) with Lightning.",
        "",
        "options:",
        "  -h, --help            Show this help message and exit.",
        "  -c CONFIG, --config CONFIG",
        "                        Path to a configuration file in json or yaml format.",
        "",
        "subcommands:",
        "  For more details of each subcommand, add it as an argument followed by --help.",
        "",
    ]
    for name, what in LIGHTNING_COMMANDS.items():
        wrapped = textwrap.wrap(what, 56)
        lines.append(f"    {name:<20}{wrapped[0]}")
        lines += [" " * 24 + rest for rest in wrapped[1:]]
    return "\n".join(lines) + "\n\n" + EXTRA_COMMANDS_HELP
