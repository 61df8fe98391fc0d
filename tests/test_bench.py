"""`python -m lit_vit bench`: runs on tiny configs and writes well-formed records (no timing assertions)."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from lit_vit.bench import main as bench_main
from lit_vit.cli import main as cli_main
from lit_vit.errors import ConfigError

TINY = ["--backbone.img_size", "16", "--backbone.patch_size", "4", "--backbone.embed_dim", "32"]
TINY += ["--backbone.depth", "2", "--backbone.num_heads", "2"]
FAST = ["--batch-size", "4", "--warmup", "1", "--repeats", "2", "--threads", "2"]


def records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_bench_vit_writes_a_record_with_timm_comparison_and_mfu(tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    argv = [*TINY, "--backbone.num_classes", "10", *FAST, "--peak-tflops", "0.5", "--output", str(out)]
    bench_main(argv)
    (rec,) = records(out)
    assert rec["command"] == "python -m lit_vit bench " + " ".join(argv)
    backbone = rec["config"]["backbone"]
    assert backbone["class_path"] == "lit_vit.models.VisionTransformer"
    assert backbone["init_args"]["embed_dim"] == 32 and backbone["init_args"]["num_classes"] == 10
    assert rec["config"]["input_shape"] == [3, 16, 16]
    env = rec["environment"]
    assert env["device"] == "cpu" and env["cpu_model"] and env["torch_threads"] == 2
    assert set(env["versions"]) >= {"torch", "timm", "lightning", "python"}
    assert len(rec["load_average_before"]) == 3 and len(rec["load_average_after"]) == 3
    # timm's twin has the same architecture: same parameter count and, with our weights, the same outputs
    assert rec["params"]["lit_vit"] == rec["params"]["timm"]
    assert rec["timm_max_abs_diff"] < 1e-5
    for mode in ("train", "infer"):
        res = rec["results"][mode]
        for name in ("lit_vit", "timm"):
            r = res[name]
            assert len(r["step_time_ms_all"]) == 2
            assert r["images_per_s"] == pytest.approx(4 / (r["step_time_ms"] / 1e3))
            assert r["tflops_per_s"] == pytest.approx(r["flops_per_step"] / (r["step_time_ms"] / 1e3) / 1e12)
            assert r["mfu"] == pytest.approx(r["tflops_per_s"] / 0.5)
            assert r["peak_memory_mb"] is None  # CUDA peak only; on CPU the process RSS is reported
        assert res["lit_vit"]["flops_per_step"] == res["timm"]["flops_per_step"]
        ratio = res["lit_vit"]["images_per_s"] / res["timm"]["images_per_s"]
        assert res["ratio_lit_vit_over_timm"] == pytest.approx(ratio)
        # the record keeps the unrounded step times, so the ratios can be recomputed from it (float rounding only)
        pairs = [t / o for o, t in zip(res["lit_vit"]["step_time_ms_all"], res["timm"]["step_time_ms_all"])]
        assert res["ratio_paired_median"] == pytest.approx(sum(pairs) / 2, rel=1e-9)  # the median of two
        assert res["ratio_best"] == pytest.approx(
            min(res["timm"]["step_time_ms_all"]) / min(res["lit_vit"]["step_time_ms_all"]), rel=1e-9
        )
        assert res["process_peak_rss_mb"] > 0
    train, infer = rec["results"]["train"]["lit_vit"], rec["results"]["infer"]["lit_vit"]
    assert 2.5 < train["flops_per_step"] / infer["flops_per_step"] < 3.5  # forward + backward vs forward
    printed = capsys.readouterr().out
    assert "lit_vit / timm throughput" in printed and str(out) in printed


def test_bench_reads_the_backbone_and_data_of_a_fit_config(tmp_path):
    out = tmp_path / "r.jsonl"
    argv = ["--config", "experiments/quickstart.yaml", *FAST, "--mode", "infer", "data", "--backbone.depth", "1"]
    bench_main([*argv, "--workers", "0", "--data-batches", "2", "--output", str(out)])
    (rec,) = records(out)
    assert rec["config"]["backbone"]["class_path"] == "lit_vit.models.VisionTransformer"
    # the YAML's options, with the command line's on top
    assert (
        rec["config"]["backbone"]["init_args"] | {"embed_dim": 128, "depth": 1}
        == rec["config"]["backbone"]["init_args"]
    )
    assert rec["config"]["input_shape"] == [1, 16, 16]  # the quickstart's grey 16x16 digits
    assert set(rec["results"]) == {"infer", "data"}
    data = rec["results"]["data"]["0"]
    assert data["batches"] == 2 and data["batch_size"] == 32 and data["images_per_s"] > 0
    assert rec["config"]["data_spec"]["class_path"] == "lit_vit.data.DigitsDataModule"


def test_bench_data_mode_on_generated_jpegs(tmp_path):
    config = tmp_path / "data.yaml"
    data = {"class_path": "lit_vit.data.ImageFolderDataModule", "init_args": {"img_size": 32, "augment": "rrc"}}
    config.write_text(yaml.safe_dump({"data": data}))
    out = tmp_path / "r.jsonl"
    argv = ["--config", str(config), "--mode", "data", "--jpeg-tree", "12", "--jpeg-size", "48"]
    bench_main([*argv, "--workers", "0", "1", "--data-batch-size", "4", "--data-batches", "2", "--output", str(out)])
    (rec,) = records(out)
    assert set(rec["results"]["data"]) == {"0", "1"}
    for r in rec["results"]["data"].values():
        assert r["img_size"] == [32, 32] and r["batch_size"] == 4 and r["batches"] == 2
    assert "ImageFolderDataModule" in rec["config"]["data"] and "12 JPEGs" in rec["config"]["data"]


def test_bench_t2t_vit_from_a_backbone_yaml_runs_without_timm(tmp_path):
    pytest.importorskip("lit_vit.models.t2t_vit")
    config = tmp_path / "t2t.yaml"
    init = {"img_size": 32, "tokens_type": "transformer", "embed_dim": 32, "depth": 1, "num_heads": 2}
    init |= {"mlp_ratio": 2.0, "token_dim": 8, "num_classes": 10}
    config.write_text(yaml.safe_dump({"backbone": {"class_path": "lit_vit.models.T2TViT", "init_args": init}}))
    out = tmp_path / "r.jsonl"
    bench_main(["--config", str(config), *FAST, "--mode", "train", "--output", str(out)])
    (rec,) = records(out)
    assert rec["config"]["input_shape"] == [3, 32, 32]
    assert "timm" not in rec["results"]["train"] and "T2TViT" in rec["timm_skipped"]
    assert rec["results"]["train"]["lit_vit"]["flops_per_step"] > 0


def test_bench_vit_without_a_timm_counterpart_is_timed_alone(tmp_path):
    out = tmp_path / "r.jsonl"
    bench_main([*TINY, "--backbone.pos_embed", "relative", *FAST, "--mode", "infer", "--output", str(out)])
    (rec,) = records(out)
    assert "RelativePosBias" in rec["timm_skipped"]
    assert list(rec["results"]["infer"]) == ["lit_vit", "process_peak_rss_mb", "peak_flops", "peak_flops_source"]


def test_bench_table_renders_one_row_per_mode(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    bench_main([*TINY, *FAST, "--label", "demo", "--output", str(out)])
    capsys.readouterr()
    bench_main(["--table", str(out)])
    rows = [line for line in capsys.readouterr().out.splitlines() if "[demo]" in line]
    assert [row.split(" | ")[5] for row in rows] == ["train", "infer"]
    assert all(len(row.split(" | ")) == 17 for row in rows)


def test_no_save_appends_nothing(tmp_path):
    out = tmp_path / "r.jsonl"
    bench_main([*TINY, *FAST, "--mode", "infer", "--no-timm", "--no-save", "--output", str(out)])
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["--device", "cuda:0"], "CUDA is not available"),
        (["--config", "missing.yaml"], "no such file"),
        # the embedded digits have no image folder for the generated JPEGs
        (
            ["--config", "experiments/quickstart.yaml", "--mode", "data", "--jpeg-tree", "4"],
            "DigitsDataModule has no root",
        ),
    ],
)
def test_bad_input_is_a_config_error(argv, message):
    if "cuda:0" in argv and torch.cuda.is_available():
        pytest.skip("a GPU is present, so --device cuda:0 is valid here")
    with pytest.raises(ConfigError, match=message):
        bench_main([*TINY, *argv, "--no-save"])


def test_an_option_the_backbone_class_lacks_is_refused(tmp_path, capsys):
    # the options come from the class's own signature: T2T-ViT has no patch_size, ViT has no tokens_type
    config = tmp_path / "t2t.yaml"
    config.write_text(yaml.safe_dump({"backbone": {"class_path": "lit_vit.models.T2TViT", "init_args": {}}}))
    with pytest.raises(SystemExit) as exc:
        bench_main(["--config", str(config), "--backbone.patch_size", "8", "--no-save"])
    assert exc.value.code == 2 and "patch_size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        bench_main(["--backbone.tokens_type", "transformer", "--no-save"])
    assert exc.value.code == 2 and "tokens_type" in capsys.readouterr().err


def test_the_record_goes_to_the_user_cache_not_the_repository_unless_output_names_a_file(tmp_path, monkeypatch, capsys):
    tracked = Path(__file__).resolve().parents[1] / "benchmarks" / "results.jsonl"
    before = hashlib.sha256(tracked.read_bytes()).hexdigest() if tracked.exists() else None
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a relative default would land here
    argv = [*TINY, *FAST, "--mode", "infer", "--repeats", "1"]
    bench_main(argv)
    cached = tmp_path / "cache" / "lit_vit" / "bench.jsonl"
    (rec,) = records(cached)
    assert f"appended to {cached}" in capsys.readouterr().out
    assert list(work.iterdir()) == []
    assert (hashlib.sha256(tracked.read_bytes()).hexdigest() if tracked.exists() else None) == before
    # --output appends one JSON line per run to the named file, beside what it holds
    out = work / "mine.jsonl"
    out.write_text(json.dumps({"earlier": True}) + "\n")
    bench_main([*argv, "--output", str(out)])
    earlier, new = records(out)
    assert earlier == {"earlier": True}
    assert set(new) >= {"date", "command", "environment", "config", "results", "params", "load_average_before"}
    assert new["command"] == "python -m lit_vit bench " + " ".join([*argv, "--output", str(out)])
    assert set(new["results"]["infer"]) >= {"lit_vit", "timm", "ratio_paired_median"}
    assert len(records(cached)) == 1  # --output replaces the default file, it does not add to it


def test_the_default_backbone_is_vit_ti_16_at_224():
    from lit_vit.bench import instantiate, parse_args

    parser, cfg = parse_args([])
    model = instantiate(parser, cfg, "backbone")
    assert (type(model).__name__, model.embed_dim, len(model.blocks)) == ("VisionTransformer", 192, 12)
    assert model.img_size == (224, 224) and model.patch_embed.patch_size == (16, 16)
    assert (cfg.batch_size, cfg.warmup, cfg.repeats) == (4, 1, 5) and cfg.data is None


def test_cli_dispatches_bench_and_reports_errors_with_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["bench", "--batch-size", "0", "--no-save"])
    assert exc.value.code == 2
    assert "error: --batch-size must be at least 1" in capsys.readouterr().err


def test_bench_vilt_times_image_text_matching(tmp_path):
    pytest.importorskip("lit_vit.models.vilt")
    config = tmp_path / "vilt.yaml"
    init = {"vocab_size": 50, "max_text_len": 6, "img_size": 64, "patch_size": 32, "embed_dim": 32, "depth": 1}
    init["num_heads"] = 2
    config.write_text(yaml.safe_dump({"backbone": {"class_path": "lit_vit.models.vilt.ViLT", "init_args": init}}))
    out = tmp_path / "r.jsonl"
    bench_main(["--config", str(config), *FAST, "--output", str(out)])
    (rec,) = records(out)
    assert rec["config"]["input_shape"] == [3, 64, 64]
    assert "ViLT" in rec["timm_skipped"]
    assert set(rec["results"]) == {"train", "infer"}
    assert rec["results"]["train"]["lit_vit"]["flops_per_step"] > rec["results"]["infer"]["lit_vit"]["flops_per_step"]
