"""benchmarks/imagefolder_vs_timm.py --quick: every contender trains, and its record is appended (timings are not
checked: they belong to an idle machine)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_imagefolder_vs_timm_quick_records_every_contender(tmp_path):
    results = tmp_path / "results.jsonl"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "imagefolder_vs_timm.py"), "--quick", "--out", str(tmp_path)]
    proc = subprocess.run([*cmd, "--results", str(results)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert set(record["results"]) == {"lit_vit_cache_off", "lit_vit_cache_memory", "timm"}
    assert len(list((tmp_path / "tree" / "train").glob("*/*.png"))) == 1259  # the digits' fixed training split
    for r in record["results"].values():
        assert r["wall_s"] > 0
        assert round(r["top1"] * 269, 6) == round(r["top1"] * 269)  # a count over the 269 validation digits
    assert record["results"]["lit_vit_cache_memory"]["data"].startswith("data: batch augmentation")
    assert record["results"]["lit_vit_cache_off"]["data"].startswith("data: per-sample augmentation")
