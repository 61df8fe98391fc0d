"""StepProfile / `bench --mode step`: a training step split into data wait, forward, backward and optimiser."""

import time

import lightning as L
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lit_vit.bench import main as bench_main
from lit_vit.callbacks import StepProfile
from lit_vit.callbacks.step_profile import PHASES, format_summary
from lit_vit.errors import ConfigError
from tests.conftest import TINY_VIT

pytestmark = pytest.mark.usefixtures("one_thread")


class SlowData(Dataset):
    """Each sample costs `delay` seconds to fetch: the data phase must show it."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i):
        if self.delay:  # (sleep(0) still yields the core: on a loaded machine that alone costs milliseconds)
            time.sleep(self.delay)
        return torch.randn(8), torch.tensor(i % 2)


class Tiny(L.LightningModule):
    def __init__(self, slow_backward: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Linear(8, 2)
        self.slow_backward = slow_backward

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def on_before_backward(self, loss) -> None:  # Lightning calls it after the callbacks' hook: inside the backward cut
        if self.slow_backward:
            time.sleep(self.slow_backward)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def profile_fit(tmp_path, delay: float, slow_backward: float = 0.0, steps: int = 6) -> dict:
    profile = StepProfile(skip=1, print_summary=False)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[profile],
    )
    trainer.fit(Tiny(slow_backward), DataLoader(SlowData(delay), batch_size=4))
    return profile.summary()


def test_slow_loader_is_charged_to_data(tmp_path):
    out = profile_fit(tmp_path, delay=0.01)  # 40 ms per batch of 4 against a linear layer's microseconds
    assert out["steps"] == 5  # 6 steps, the first left out
    assert out["batch_size"] == 4
    assert sum(out["phases"][p]["share"] for p in PHASES) == pytest.approx(1.0)
    assert out["phases"]["data"]["ms_median"] >= 39.0
    assert out["phases"]["data"]["share"] > 0.6  # (> 0.9 on an idle machine; Lightning's own hooks take the rest)
    assert "waiting for data is" in format_summary(out)


def test_slow_backward_is_charged_to_backward(tmp_path):
    out = profile_fit(tmp_path, delay=0.0, slow_backward=0.04)
    assert out["phases"]["backward"]["ms_median"] >= 39.0
    assert out["phases"]["backward"]["share"] > 0.6
    assert out["phases"]["data"]["ms_median"] < out["phases"]["backward"]["ms_median"] / 4


def test_bad_skip_is_refused():
    with pytest.raises(ConfigError, match="skip is -1"):
        StepProfile(skip=-1)


def tiny_fit_config(path, run_dir) -> str:
    config = {
        "seed_everything": 0,
        "model": {"class_path": "lit_vit.modules.ImageClassifier", "init_args": {"backbone": TINY_VIT}},
        "data": {"class_path": "lit_vit.data.DigitsDataModule", "init_args": {"batch_size": 16}},
        "trainer": {"max_epochs": 1, "default_root_dir": str(run_dir)},
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_bench_step_mode_profiles_a_fit_config(tmp_path, capsys):
    config = tiny_fit_config(tmp_path / "fit.yaml", tmp_path / "never_written")
    out = tmp_path / "bench.jsonl"
    bench_main(["--config", config, "--mode", "step", "--warmup", "1", "--profile-steps", "4", "--output", str(out),
                "--data.init_args.batch_size", "8"])  # fmt: skip
    record = yaml.safe_load(out.read_text())  # one JSON line is YAML
    step = record["results"]["step"]
    assert step["steps"] == 4 and step["batch_size"] == 8
    assert set(step["phases"]) == set(PHASES)
    assert all(step["phases"][p]["ms_mean"] > 0 for p in ("forward", "backward"))
    assert step["images_per_s"] == pytest.approx(8 / (step["step_ms_mean"] / 1e3))
    assert "step profile over 4 steps" in capsys.readouterr().out
    assert not (tmp_path / "never_written").exists()  # the fit ran in a temporary folder


def test_bench_step_mode_needs_a_fit_config(tmp_path):
    bare = tmp_path / "backbone.yaml"
    bare.write_text(yaml.safe_dump(TINY_VIT))
    with pytest.raises(ConfigError, match="--mode step runs a fit config"):
        bench_main(["--config", str(bare), "--mode", "step", "--no-save"])


def test_bench_step_mode_refuses_the_model_modes_batch_size(tmp_path):
    config = tiny_fit_config(tmp_path / "fit.yaml", tmp_path / "never_written")
    with pytest.raises(ConfigError, match="--batch-size sets the batch of the train / infer modes"):
        bench_main(["--config", config, "--mode", "step", "--batch-size", "8", "--no-save"])
