"""Written contracts: one is_primary_process(), one way to find a ConfigError in an exception chain, a declared
`monitor` on every LightningModule of lit_vit."""

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import lightning as L
import pytest

import lit_vit.modules
from lit_vit.errors import ConfigError, config_error_in, find_in_chain
from lit_vit.run_folder import is_primary_process

PACKAGE = Path(__file__).resolve().parents[1] / "lit_vit"
RANK_VARIABLES = {"RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"}


def lit_vit_modules() -> list[type]:
    found = set()
    for info in pkgutil.iter_modules(lit_vit.modules.__path__, "lit_vit.modules."):
        for _, obj in inspect.getmembers(importlib.import_module(info.name), inspect.isclass):
            if issubclass(obj, L.LightningModule) and obj.__module__.startswith("lit_vit."):
                found.add(obj)
    return sorted(found, key=lambda c: c.__qualname__)


def test_every_lightning_module_declares_what_best_ckpt_monitors():
    modules = lit_vit_modules()
    assert {"ImageClassifier", "ViltPretraining", "ViltRetrieval", "ViltVQA"} <= {m.__name__ for m in modules}
    for module in modules:
        name, mode = module.monitor
        assert name.startswith("val/") and mode in ("min", "max"), (module, module.monitor)


def test_the_process_rank_is_read_in_one_place(monkeypatch):
    readers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in RANK_VARIABLES:
                readers.append(path.relative_to(PACKAGE).as_posix())
    assert set(readers) == {"run_folder.py"}, readers
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert is_primary_process() and is_primary_process(per_machine=True)
    monkeypatch.setenv("NODE_RANK", "1")  # local rank 0 of the second machine
    assert not is_primary_process() and is_primary_process(per_machine=True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not is_primary_process(per_machine=True)


def test_exception_chains_are_walked_in_one_place():
    walkers = [
        path.relative_to(PACKAGE).as_posix()
        for path in sorted(PACKAGE.rglob("*.py"))
        if any(isinstance(n, ast.Attribute) and n.attr == "__cause__" for n in ast.walk(ast.parse(path.read_text())))
    ]
    assert walkers == ["errors.py"]


def test_config_error_in_finds_the_error_under_wrappers():
    inner = ConfigError("depth must be 1 or more")
    try:
        try:
            raise inner
        except ConfigError as err:
            raise ValueError("Problem with given class_path 'lit_vit.models.ViT'") from err
    except ValueError as wrapped:
        try:
            raise RuntimeError("while instantiating")  # implicit chaining: __context__
        except RuntimeError as outer:
            assert config_error_in(outer) is inner
            assert config_error_in(wrapped) is inner
    assert config_error_in(ValueError("plain")) is None and config_error_in(None) is None
    assert find_in_chain(inner, lambda e: isinstance(e, KeyError)) is None


@pytest.mark.parametrize("depth", [3, 20])
def test_a_long_chain_is_walked_ten_deep(depth):
    chain: BaseException = ConfigError("bottom")
    for _ in range(depth):
        wrapper = ValueError("wrapper")
        wrapper.__cause__ = chain
        chain = wrapper
    assert (config_error_in(chain) is not None) == (depth < 10)
