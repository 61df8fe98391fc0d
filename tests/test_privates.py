"""No private Lightning / jsonargparse / torchmetrics name outside lit_vit/lightning_compat.py.

lit_vit relies on a few private names of those packages where no public API exists; each lives in
lit_vit/lightning_compat.py with why and the release it was checked with, so a new release breaks in one place.

The rule (pragmatic: Python has no types at this point, so "a Lightning object" is decided by names):
- importing a name that starts with one underscore from those packages (`from lightning... import _x`, or a module
  path with such a part) is a violation;
- `<root>...._x` (an attribute that starts with one underscore, not a dunder, anywhere in an attribute chain) is a
  violation when the chain starts at a name imported from those packages, at one of TRACKED_NAMES (the names lit_vit
  gives Lightning objects: trainer, pl_module, cli, parser, loggers, metrics, ...), or at `self.<one of
  TRACKED_SELF_ATTRIBUTES>` (self.trainer, self.logger, ...);
- in a class that subclasses a class of those packages, `self._x` is a violation when `_x` is an attribute of the
  base class, or when the class body never sets or defines `_x` itself (an instance attribute the base sets), and
  `def _x` is a violation when it overrides an attribute of the base class.
"""

import ast
import importlib
import inspect
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lit_vit"
ALLOWED = {PACKAGE / "lightning_compat.py"}
FOREIGN = ("lightning", "pytorch_lightning", "lightning_fabric", "jsonargparse", "torchmetrics")
TRACKED_NAMES = {
    "trainer", "pl_module", "lightning_module", "cli", "parser", "logger", "loggers", "metric", "metrics",
    "callback", "connector", "strategy", "fit_loop", "datamodule",
}  # fmt: skip
TRACKED_SELF_ATTRIBUTES = {"trainer", "logger", "loggers", "parser", "fit_loop", "strategy", "lightning_module"}


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def is_foreign(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in FOREIGN


def chain(node: ast.AST) -> tuple[ast.AST, list[str]]:
    """The root of an attribute chain (through calls and subscripts) and the attribute names along it, root first."""
    names: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            names.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Subscript):
            node = node.value
        else:
            return node, names[::-1]


def foreign_bases(cls: ast.ClassDef, imported: dict[str, str]) -> list[type]:
    """The classes of those packages that `cls` subclasses directly (imported here to look at their attributes)."""
    found = []
    for base in cls.bases:
        root, names = chain(base)
        if isinstance(root, ast.Name) and root.id in imported:
            target = imported[root.id]
            module, _, attr = target.rpartition(".") if not names else (target, "", "")
            try:
                obj = importlib.import_module(module) if module else None
                obj = getattr(obj, attr) if attr else importlib.import_module(target)
                for name in names:
                    obj = getattr(obj, name)
            except (ImportError, AttributeError):
                continue
            if isinstance(obj, type):
                found.append(obj)
    return found


_BASE_PRIVATES: dict[type, set[str]] = {}


def base_privates(base: type) -> set[str]:
    """The private names a foreign class and its foreign ancestors define or set on `self` (instance attributes are
    not attributes of the class)."""
    if base not in _BASE_PRIVATES:
        names = {n for n in dir(base) if is_private(n)}
        for klass in base.__mro__:
            if not is_foreign(klass.__module__):
                continue
            try:
                tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
            except (OSError, TypeError, SyntaxError):
                continue
            names |= {
                n.attr
                for n in ast.walk(tree)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"
                and is_private(n.attr)
            }  # fmt: skip
        _BASE_PRIVATES[base] = names
    return _BASE_PRIVATES[base]


def violations(source: str, filename: str = "<source>") -> list[str]:
    tree = ast.parse(source)
    imported: dict[str, str] = {}  # local name -> the dotted foreign name it stands for
    found = []

    def report(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_foreign(alias.name):
                    imported[(alias.asname or alias.name).split(".")[0]] = alias.name if alias.asname else alias.name
                    if any(is_private(p) for p in alias.name.split(".")):
                        report(node, f"import of private {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and is_foreign(node.module):
            for alias in node.names:
                imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                if is_private(alias.name) or any(is_private(p) for p in node.module.split(".")):
                    report(node, f"import of private {node.module}.{alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            root, names = chain(node)
            if not isinstance(root, ast.Name):
                continue
            tracked = root.id in imported or root.id in TRACKED_NAMES
            tracked |= root.id == "self" and bool(names) and names[0] in TRACKED_SELF_ATTRIBUTES
            tracked |= any(n in TRACKED_NAMES for n in names[:-1])
            if tracked:
                report(node, f"private attribute {'.'.join([root.id, *names])}")
        elif isinstance(node, ast.ClassDef):
            bases = foreign_bases(node, imported)
            if not bases:
                continue
            own = set()
            for sub in ast.walk(node):
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and sub is not node:
                    own.add(sub.name)
                elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    own.add(sub.id)
                elif isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store):
                    if isinstance(sub.value, ast.Name) and sub.value.id == "self":
                        own.add(sub.attr)
            base_names = {b.__module__ + "." + b.__qualname__ for b in bases}
            for sub in ast.walk(node):
                if (
                    isinstance(sub, ast.FunctionDef)
                    and is_private(sub.name)
                    and any(hasattr(b, sub.name) for b in bases)
                ):
                    report(sub, f"override of private {sub.name} of {', '.join(sorted(base_names))}")
                elif (
                    isinstance(sub, ast.Attribute)
                    and is_private(sub.attr)
                    and isinstance(sub.value, ast.Name)
                    and sub.value.id == "self"
                    and (any(sub.attr in base_privates(b) for b in bases) or sub.attr not in own)
                ):
                    report(sub, f"private attribute self.{sub.attr} of {', '.join(sorted(base_names))}")
    return sorted(set(found), key=lambda s: (s.split(":")[0], int(s.split(":")[1]), s))


def test_no_private_lightning_jsonargparse_or_torchmetrics_name_outside_lightning_compat():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path not in ALLOWED:
            found += violations(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    assert not found, "private names of Lightning / jsonargparse / torchmetrics (move them to lightning_compat):\n" + (
        "\n".join(found)
    )


PLANTED = """
import lightning as L
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from torchmetrics import Metric


class Writer(ExperimentWriter):
    def _check_log_dir_exists(self):
        self._mine = 1
        return self._fs, self._mine


class Module(L.LightningModule):
    def hook(self):
        self._fabric = None
        return self._trainer, self.trainer._signal_connector, self.__class__, self._own

    def _own(self):
        return self.trainer.fit_loop.epoch_loop.batch_progress


def restore(trainer, metric: Metric, cli):
    trainer._signal_connector.received_sigterm = True
    metric._update_count = 3
    return cli.parser._actions, L._version, trainer.callbacks[0]._state, trainer.__dict__
"""


def test_the_check_finds_planted_violations_and_nothing_public():
    found = sorted(line.split(": ", 1)[1] for line in violations(PLANTED))
    assert found == sorted(
        [
            "import of private lightning.pytorch.core.mixins.hparams_mixin._given_hyperparameters",
            "override of private _check_log_dir_exists of lightning.pytorch.loggers.csv_logs.ExperimentWriter",
            "private attribute self._fs of lightning.pytorch.loggers.csv_logs.ExperimentWriter",
            "private attribute self._fabric of lightning.pytorch.core.module.LightningModule",
            "private attribute self._trainer of lightning.pytorch.core.module.LightningModule",
            "private attribute self.trainer._signal_connector",
            "private attribute trainer._signal_connector",
            "private attribute metric._update_count",
            "private attribute cli.parser._actions",
            "private attribute L._version",
            "private attribute trainer.callbacks._state",
        ]
    ), found
