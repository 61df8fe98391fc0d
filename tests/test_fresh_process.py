"""What importing lit_vit does to a fresh interpreter, all read from one new process (an import of Lightning costs
~10 s on a 2-core machine; the suite pays it once here, not once per check):

- `import lit_vit.cli` pulls in no DataModule, albumentations or OpenCV (lit_vit.data imports them on first use);
- importing lit_vit patches nothing in Lightning until the CLI or `lit_vit.patch_lightning()` asks;
- no import asks PyPI for an albumentations update (NO_ALBUMENTATIONS_UPDATE unset, every network open refused);
- `python -m lit_vit fit --help` (run as `-m` runs it, through runpy) names `python -m lit_vit` in its usage.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # one new interpreter importing Lightning (~10 s)
ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import contextlib, io, json, runpy, sys, urllib.request

calls = []


def refuse(self, url, *args, **kwargs):
    calls.append(str(getattr(url, "full_url", url)))
    raise OSError("network refused by the test")


urllib.request.OpenerDirector.open = refuse
import lit_vit.cli

cli_modules = sorted(sys.modules)
import lit_vit.modules
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector as S

before = S._sigterm_notifier_fn.__module__
import lit_vit

lit_vit.patch_lightning()
after = S._sigterm_notifier_fn.__module__
import albumentations
import lit_vit.data.classification, lit_vit.data.image_text

help_out = io.StringIO()
sys.argv = ["-m", "fit", "--help"]
with contextlib.redirect_stdout(help_out), contextlib.suppress(SystemExit):
    runpy.run_module("lit_vit", run_name="__main__", alter_sys=True)
print(json.dumps(dict(cli_modules=cli_modules, before=before, after=after, calls=calls, help=help_out.getvalue())))
"""


@pytest.fixture(scope="module")
def fresh():
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    env["COLUMNS"] = "120"
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_cli_imports_no_datamodule_until_one_is_used(fresh):
    # lit_vit.data imports its DataModules on first use: the CLI's own import (the few-shot callback reads
    # lit_vit.data.protocols) must not pull in albumentations, OpenCV and every DataModule (~0.6 s of each command)
    imported = set(fresh["cli_modules"])
    assert "lit_vit.cli" in imported and "lit_vit.data.protocols" in imported
    assert not {m for m in imported if m.split(".")[0] in ("albumentations", "cv2")}
    assert "lit_vit.data.classification" not in imported


def test_importing_lit_vit_patches_nothing_until_asked(fresh):
    """The SIGTERM fix is applied by the CLI or by lit_vit.patch_lightning(), never as a side effect of an import."""
    assert fresh["before"] == "lightning.pytorch.trainer.connectors.signal_connector"
    assert fresh["after"] == "lit_vit.lightning_compat"


def test_importing_lit_vit_never_asks_pypi_for_an_albumentations_update(fresh):
    assert fresh["calls"] == []


def test_lightning_subcommand_usage_names_python_m_lit_vit(fresh):
    assert fresh["help"].startswith("usage: python -m lit_vit [options] fit "), fresh["help"][:300]
    assert "__main__" not in fresh["help"]
