"""The sweep as its own command: `python -m lit_vit sweep`, progress in the process the user started, a results table
that is never cut, clean worker logs, and one-line endings for Ctrl-C, a removed run folder and impossible options."""

import ast
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from test_ablation import sweep_config, write_config

from lit_vit.ablation.summary import fitted_table, plain_table, print_summary
from lit_vit.cli import asks_for_sweep, main

PACKAGE = Path(__file__).resolve().parents[1] / "lit_vit"
ENV = dict(os.environ, OMP_NUM_THREADS="1", NO_ALBUMENTATIONS_UPDATE="1", PYTHONPATH=os.path.dirname(__file__))
# what Lightning and torch printed into every worker log before lit_vit silenced them at their cause
NOISE = [
    "Tip:",
    "litlogger",
    "was called without a model",
    "there is no last checkpoint available",
    "_pytree",
    "LeafSpec",
]


def two_variant_config(tmp_path, workers: int = 2, **trainer) -> tuple[Path, str]:
    root = tmp_path / "out"
    config = sweep_config(root, seeds=(0,))
    config["trainer"]["callbacks"] = []
    config["trainer"] |= trainer
    config["ablation"]["workers"] = workers
    return root, write_config(tmp_path / "sweep.yaml", config)


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """`python -m lit_vit sweep` of 2 variants on 2 workers, its stdout and stderr captured (not a terminal)."""
    tmp = tmp_path_factory.mktemp("two_workers")
    root, path = two_variant_config(tmp)
    cmd = [sys.executable, "-m", "lit_vit", "sweep", "--config", path]
    # workers as new processes (where a GPU slice or another OS needs them); the other sweep tests fork them
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**ENV, "LIT_VIT_WORKER_START": "subprocess"},
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("(new process)") == 2
    return {"root": root, "out": proc.stdout, "err": proc.stderr}


@pytest.mark.slow
def test_the_sweep_command_shows_each_runs_start_and_finish_from_the_workers(two_workers):
    err = two_workers["err"]
    for i, variant in enumerate(["none", "learned_1d"], 1):
        assert re.search(rf"run {i}/2 {variant} seed=0: started on worker [01] \(new\)", err), err
        done = re.search(rf"run {i}/2 {variant} seed=0: done in [\d.]+ s: final val top-1 (\d+\.\d\d) %", err)
        assert done, err
        assert err.index(f"{variant} seed=0: started") < err.index(f"{variant} seed=0: done")
    assert "\x1b[" not in err  # plain lines, no terminal codes, when stderr is not a terminal


@pytest.mark.slow
def test_the_table_of_a_sweep_printed_to_a_file_holds_every_name_and_number(two_workers):
    out = two_workers["out"]
    with open(two_workers["root"] / "results.csv") as f:
        rows = {line.split(",")[0]: line.split(",") for line in f.read().splitlines()[1:]}
    for variant in ("none", "learned_1d"):
        line = next(line for line in out.splitlines() if line.startswith(variant + " "))
        final = 100 * float(rows[variant][5])  # final_val_acc1
        assert f"{final:.2f} +- 0.00" in line, (line, final)
    assert "…" not in out


@pytest.mark.slow
def test_the_workers_train_each_run_once_and_release_every_claim(two_workers):
    root = two_workers["root"]
    logs = [(root / "logs" / f"worker{i}.log").read_text() for i in range(2)]
    trained = sorted(sum((re.findall(r"run \d+/\d+ (\S+ seed=\d+): started", log) for log in logs), []))
    assert trained == ["learned_1d seed=0", "none seed=0"]  # each run once, by one of the two workers
    assert "OMP_NUM_THREADS" in two_workers["err"] and not list(root.rglob("claim.json"))
    assert (root / "accuracy.png").is_file() and (root / "results.csv").read_text().count("\n") == 3


@pytest.mark.slow
def test_a_rerun_of_the_finished_sweep_starts_no_worker_and_redraws_the_results(two_workers, capsys):
    logs = {p.name: p.read_text() for p in (two_workers["root"] / "logs").glob("worker*.log")}
    main(["sweep", "--config", str(two_workers["root"].parent / "sweep.yaml")])
    err = capsys.readouterr().err
    assert "2 finished (skipped), 0 to resume, 0 to start; 2 workers" in err and "worker 0" not in err, err
    assert {p.name: p.read_text() for p in (two_workers["root"] / "logs").glob("worker*.log")} == logs  # untouched
    assert "results:" in err and (two_workers["root"] / "report.md").is_file()


@pytest.mark.slow
def test_worker_logs_hold_no_lightning_tip_and_none_of_the_three_warnings(two_workers):
    logs = sorted((two_workers["root"] / "logs").glob("worker*.log"))
    assert len(logs) == 2
    for log in logs:
        text = log.read_text()
        assert "Trainer.fit` stopped" in text or "trained by" in text  # the log is the worker's real output
        for noise in NOISE:
            assert noise not in text, (log.name, noise, text[-2000:])


def long_rows() -> tuple[list[dict], list[str]]:
    names = ["learned_2d_every_layer_shared", "relative_bias_with_a_very_long_name"]
    rows = []
    for name in names:
        for seed, acc in ((0, 0.97123), (1, 0.96456)):
            rows.append({"variant": name, "seed": seed, "final_val_acc1": acc, "best_val_acc1": acc + 0.01,
                         "fewshot_1shot": 0.51234, "fewshot_25shot": 0.87654, "params": 1234567,
                         "train_images_per_s": 2345.6, "wall_s": 123.4})  # fmt: skip
    return rows, names


def test_the_table_written_to_a_file_is_plain_text_with_every_name_and_number_in_full():
    rows, names = long_rows()
    stream = io.StringIO()  # not a terminal
    print_summary(rows, names, stream)
    text = stream.getvalue()
    for name in names:
        assert name in text
    for number in ("96.79 +- 0.47", "97.79 +- 0.47", "51.23 +- 0.00", "87.65 +- 0.00", "1,234,567", "2346", "123"):
        assert number in text, number
    assert "1shot %" in text and "25shot %" in text
    assert text == plain_table(rows, names) + "\n" and "…" not in text


@pytest.mark.parametrize("width", [60, 80, 100, 200])
def test_on_a_terminal_the_table_fits_the_width_by_dropping_minor_columns_never_names_or_numbers(width):
    rows, names = long_rows()
    table = fitted_table(rows, names, width)
    if table is None:  # too narrow for the names and the accuracies alone: the plain table instead
        assert width <= 80
        return
    number = r"{} ?\+- ?{}"
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(table)
    text = console.file.getvalue()
    assert max(len(line) for line in text.splitlines()) <= width
    for name in names:
        assert name in text
    for mean, std in (("96.79", "0.47"), ("97.79", "0.47"), ("51.23", "0.00"), ("87.65", "0.00")):
        assert re.search(number.format(mean, std), text), (width, text)  # "96.79 +- 0.47", or "96.79+-0.47" if narrow
    assert "…" not in text
    assert width < 100 or table is not None
    if width >= 200:
        assert "img/s" in text and "wall s" in text  # nothing dropped when there is room


def test_fit_with_an_ablation_section_goes_to_the_sweep(tmp_path):
    _, path = two_variant_config(tmp_path, workers=1)
    single = write_config(tmp_path / "single.yaml", {"trainer": {"max_epochs": 1}})
    assert asks_for_sweep(["--config", path]) and asks_for_sweep([f"--config={path}", "--trainer.max_epochs=1"])
    assert not asks_for_sweep(["--config", single])
    assert asks_for_sweep(["--config", single, "--ablation.seeds=[0]"])
    assert not asks_for_sweep(["--config", path, "--ablation", "null"])  # the base config, trained once


def test_fit_of_an_ablation_config_runs_the_sweep_and_quiet_prints_no_progress(tmp_path, capsys):
    root, path = two_variant_config(tmp_path, workers=1)
    main(["fit", "--config", path, "--ablation.seeds=[0]", "--ablation.quiet=true", "--num_threads=1"])
    for variant in ("none", "learned_1d"):
        assert (root / variant / "seed=0" / "done.json").is_file()
    captured = capsys.readouterr()
    assert "ablation sweep" in captured.err and "started" not in captured.err  # quiet: no progress lines
    assert "learned_1d" in captured.out  # the results table, on stdout
    main(["sweep", "--config", path, "--num_threads=1"])  # the sweep command: the same sweep, all finished
    assert "2 finished (skipped)" in capsys.readouterr().err


def test_fit_and_sweep_help_show_the_ablation_option(capsys):
    for command in ("fit", "sweep"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "--ablation" in out, command
    assert "usage: python -m lit_vit sweep" in out


def test_no_private_lightningcli_name_in_the_sweep_or_the_cli():
    files = [*sorted((PACKAGE / "ablation").glob("*.py")), PACKAGE / "cli.py"]
    for path in files:
        names = {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)}
        names |= {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
        assert not names & {"_subcommand_parsers", "_run_subcommand"}, path
        assert "_subcommand_parsers" not in path.read_text() and "_run_subcommand" not in path.read_text(), path


def test_an_impossible_fewshot_shot_count_is_refused_before_any_worker_starts(tmp_path, capsys):
    root, path = two_variant_config(tmp_path)
    fewshot = '[{"class_path": "lit_vit.callbacks.FewShotEval", "init_args": {"shots": [1, 500]}}]'
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--config", path, f"--trainer.callbacks={fewshot}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "variant 'none'" in lines[0] and "lower FewShotEval shots to at most" in lines[0], err
    assert "Traceback" not in err and "worker" not in err
    assert not root.exists()  # no sweep.yaml, no logs: nothing was started


def test_an_unknown_worker_start_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    root, path = two_variant_config(tmp_path)
    monkeypatch.setenv("LIT_VIT_WORKER_START", "spawn")
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--config", path])
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith("error: LIT_VIT_WORKER_START='spawn': choose fork") and "subprocess" in line, line
    assert not root.exists()


def test_forked_workers_asked_for_where_they_cannot_fork_are_refused_not_replaced(tmp_path, capsys, monkeypatch):
    root, path = two_variant_config(tmp_path)
    monkeypatch.setenv("LIT_VIT_WORKER_START", "fork")
    monkeypatch.setattr(sys, "platform", "darwin")  # fork is not safe there: no quiet switch to new processes
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--config", path])
    assert exc.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: LIT_VIT_WORKER_START=fork: the workers cannot be forks here (fork is not safe on "
                           "darwin); unset it"), line  # fmt: skip
    assert not list(root.glob("*/seed=*"))  # no run started


def test_a_run_folder_removed_while_the_sweep_trains_it_fails_alone_in_one_line(tmp_path, capsys):
    root = tmp_path / "out"
    remove = {"class_path": "_ablation_callbacks.RemoveRunFolder", "init_args": {"run": "none/seed=0", "step": 2}}
    config = sweep_config(root, seeds=(0,), callbacks=[remove])
    config["trainer"]["callbacks"] = [remove]
    path = write_config(tmp_path / "sweep.yaml", config)
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--config", path, "--num_threads=1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(r"run 1/2 none seed=0: failed: its folder .*none/seed=0 was removed while it trained", err), err
    error = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "1 run(s) of the sweep did not finish: none seed=0 (its folder" in error[0], err
    assert not (root / "none" / "seed=0" / "checkpoints").exists()  # what Lightning recreated is not resumed
    assert "rerun the same command" in error[0]
    assert (root / "learned_1d" / "seed=0" / "done.json").is_file()  # the other run went on and finished
    assert not (root / "none" / "seed=0" / "done.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["ctrl_c", "sigterm"])
def test_a_stopped_two_worker_sweep_saves_both_runs_and_exits_in_one_line(tmp_path, stop):
    slow = {"class_path": "_ablation_callbacks.SlowSteps", "init_args": {"run": "seed=0", "seconds": 0.05}}
    root, path = two_variant_config(tmp_path, limit_train_batches=400, max_epochs=1, callbacks=[slow])
    # the workers are forks of the sweep's process (the default here). A fork of a process whose OpenMP pool has
    # threads hangs at its first multi-threaded op, so the sweep checks its runs single-threaded: two threads per
    # worker and an MLP wide enough for a multi-threaded init (> 32768 weights) would hang here if it did not
    cmd = [sys.executable, "-m", "lit_vit", "sweep", "--config", path, "--checkpoint_every_n_steps=1000",
           "--num_threads=2", "--model.init_args.backbone.init_args.mlp_ratio=64"]  # fmt: skip
    env = {k: v for k, v in ENV.items() if k not in ("OMP_NUM_THREADS", "LIT_VIT_WORKER_START")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # fmt: skip
    runs = [root / "none" / "seed=0", root / "learned_1d" / "seed=0"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not all('"running"' in _progress(r) for r in runs):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    time.sleep(1.5)  # a few steps into both runs (157 steps of >= 0.05 s each)
    if stop == "ctrl_c":
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground process group
    else:
        proc.send_signal(signal.SIGTERM)  # a scheduler's stop, to the sweep's process only: it passes it on
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == (130 if stop == "ctrl_c" else 143), err[-3000:]
    assert err.count("(fork), {'OMP_NUM_THREADS': '2'}") == 2, err[-3000:]
    last = err.rstrip().splitlines()[-1]
    if stop == "ctrl_c":
        assert last == "interrupted; rerun the same command to resume"
    else:
        assert last.startswith("interrupted by SIGTERM: last.ckpt is saved"), last
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    for run in runs:  # each worker saved its run where it stopped
        step = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
        assert 1 <= step < 157 and not (run / "done.json").exists()


def _progress(run: Path) -> str:
    try:
        return (run / "progress.json").read_text()
    except FileNotFoundError:
        return ""
