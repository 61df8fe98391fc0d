"""`python -m lit_vit --help` lists every subcommand; every usage line names `python -m lit_vit`, not __main__.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.cli import LightningCLI

from lit_vit.cli import main
from lit_vit.commands import EXTRA_COMMANDS, LIGHTNING_COMMANDS, top_level_help

ROOT = Path(__file__).resolve().parents[1]


def help_text(*argv: str) -> str:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", COLUMNS="120")
    proc = subprocess.run(
        [sys.executable, "-m", "lit_vit", *argv, "--help"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "__main__" not in proc.stdout
    return proc.stdout


@pytest.mark.slow
def test_top_level_help_lists_the_lightning_and_the_extra_subcommands():
    text = help_text()
    assert text.startswith("usage: python -m lit_vit ")
    lines = text.splitlines()
    # one line each, name first, then what it does: fit..predict from LightningCLI, then bench and plot
    listed = {line.split()[0]: line for line in lines if line.startswith("    ") and line.split()}
    for name in ("fit", "validate", "test", "predict", *EXTRA_COMMANDS):
        assert name in listed and len(listed[name].split()) > 2, name
    assert "against" in listed["bench"] and "timm" in text and "sweep" in listed["plot"]
    assert list(EXTRA_COMMANDS) == ["sweep", "bench", "plot", "shards"]


def test_top_level_help_names_lightning_clis_own_subcommands():
    # answered without Lightning (lit_vit/__main__.py): it must list what LitViTCLI really accepts
    assert list(LIGHTNING_COMMANDS) == list(LightningCLI.subcommands())
    usage = top_level_help().splitlines()[0]
    assert usage.endswith("{" + ",".join([*LightningCLI.subcommands(), *EXTRA_COMMANDS]) + "} ...")


@pytest.mark.slow
def test_top_level_help_imports_no_lightning():
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lit_vit", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "More subcommands" in proc.stdout, proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert "lit_vit.commands" in imported
    assert not {m for m in imported if m.split(".")[0] in ("lightning", "torch", "jsonargparse")}


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--help"],
        ["plot", "--help"],
        ["shards", "--help"],
        ["bench", "--backbone.help", "lit_vit.models.VisionTransformer"],
    ],
    ids=["bench", "plot", "shards", "bench-backbone-help"],
)
def test_extra_subcommand_usage_names_python_m_lit_vit(argv, capsys):
    # their parsers name their prog themselves (no sys.argv[0] involved), so this runs in-process
    with pytest.raises(SystemExit) as exc:
        main(argv)
    text = capsys.readouterr().out
    assert exc.value.code == 0 and text.startswith(f"usage: python -m lit_vit {argv[0]} ")
    if argv == ["bench", "--help"]:
        # the full ViT-B/16 comparison is one documented command away from the small default
        assert "--backbone.variant B --batch-size 32" in text and "ViT-Ti/16" in text
        assert "~/.cache/lit_vit/bench.jsonl" in text
    if "--backbone.help" in argv:  # the options come from VisionTransformer's own signature
        assert "--backbone.variant" in text and "--backbone.pos_embed" in text
