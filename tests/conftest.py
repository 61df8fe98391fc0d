import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# A ViT small enough for CLI tests on 2 CPU cores, on the embedded digits (16x16, 1 channel, 10 classes).
TINY_VIT = {
    "class_path": "lit_vit.models.VisionTransformer",
    "init_args": {"img_size": 16, "patch_size": 4, "in_chans": 1, "embed_dim": 32, "depth": 2, "num_heads": 2},
}


def tiny_fit_args(run_dir, *extra: str, max_epochs: int = 1, limit_batches: int = 4) -> list[str]:
    """CLI arguments for a fast fit of the tiny ViT on the embedded digits into `run_dir`."""
    return [
        "fit",
        "--model=lit_vit.modules.ImageClassifier",
        f"--model.backbone={TINY_VIT}".replace("'", '"'),
        "--data=lit_vit.data.DigitsDataModule",
        "--data.batch_size=16",
        f"--trainer.default_root_dir={run_dir}",
        f"--trainer.max_epochs={max_epochs}",
        f"--trainer.limit_train_batches={limit_batches}",
        f"--trainer.limit_val_batches={limit_batches}",
        "--trainer.accelerator=cpu",
        "--trainer.log_every_n_steps=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--seed_everything=0",
        *extra,
    ]


@pytest.fixture(scope="session", autouse=True)
def session_threads():
    """At most 2 torch threads for the whole session, one per pytest-xdist worker on 2 cores (the tiny test models gain
    nothing from more), set here and never at import, so that collecting a module changes nothing; OMP_NUM_THREADS,
    when set, wins: on a busy machine one thread per process is several times faster than two competing for the same
    cores."""
    threads = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ:
        # pytest-xdist's workers (`-n`, see pyproject.toml) share the cores: each gets its part of them
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // workers)))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """A test that sets torch's thread count (bench --threads, --num_threads) leaves it as it found it: on a busy
    2-core machine the tests after it would otherwise run several times slower."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny models run
    faster on one thread than on two competing for a busy 2-core machine, and runs compared bit for bit need the
    same thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def run_dir(tmp_path):
    return tmp_path / "run"


def run_main(argv: list[str], capture) -> tuple[int | None, str]:
    """`python -m lit_vit <argv>` in this process (lit_vit.cli.main): its exit status (0 when it returns) and what it
    wrote to stderr; `capture` is pytest's capsys or capfd."""
    from lit_vit.cli import main

    capture.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code
    return code, capture.readouterr().err
