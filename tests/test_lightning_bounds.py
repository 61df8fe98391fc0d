"""The lightning releases lit_vit is tested with: pyproject.toml bounds them from above, the installed one is in the
range, and the CLI stops with a one-line error outside it (lit_vit relies on a few private Lightning names)."""

import re
from pathlib import Path

import lightning
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from lit_vit.cli import main
from lit_vit.errors import ConfigError
from lit_vit.lightning_compat import TESTED_LIGHTNING, UNTESTED_LIGHTNING_ENV, check_lightning_version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
CONSTRAINTS = PYPROJECT.parent / ".ci" / "constraints.txt"
# dependencies whose private names or message texts lit_vit relies on (see lit_vit/lightning_compat.py)
RELIED_ON = ("lightning", "jsonargparse", "torchmetrics")


def lightning_requirement() -> Requirement:
    """pyproject.toml's lightning dependency (read as text: tomllib needs Python 3.11, lit_vit supports 3.10)."""
    deps = re.search(r"(?ms)^dependencies\s*=\s*\[(.*?)^\]", PYPROJECT.read_text()).group(1)
    (req,) = [r for r in map(Requirement, re.findall(r'"([^"]+)"', deps)) if r.name == "lightning"]
    return req


def test_pyproject_bounds_lightning_from_above_and_the_cli_checks_the_same_range():
    spec = lightning_requirement().specifier
    assert any(s.operator in ("<", "<=", "==", "===", "~=") for s in spec), f"no upper bound on lightning: {spec}"
    assert spec == SpecifierSet(TESTED_LIGHTNING)


def test_the_installed_lightning_is_in_the_tested_range():
    assert Version(lightning.__version__) in lightning_requirement().specifier
    check_lightning_version()


@pytest.mark.parametrize("version", ["2.7.0", "3.0.0", "2.5.5", "not-a-version"])
def test_an_untested_lightning_is_refused_unless_asked_for(version, monkeypatch):
    monkeypatch.delenv(UNTESTED_LIGHTNING_ENV, raising=False)
    with pytest.raises(ConfigError, match=re.escape(f"lightning {version} is installed")) as err:
        check_lightning_version(version)
    assert f"pip install 'lightning{TESTED_LIGHTNING}'" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setenv(UNTESTED_LIGHTNING_ENV, "1")
    check_lightning_version(version)


def test_the_cli_stops_with_one_line_before_it_parses_anything(monkeypatch, capsys):
    monkeypatch.delenv(UNTESTED_LIGHTNING_ENV, raising=False)
    monkeypatch.setattr(lightning, "__version__", "2.7.0")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: lightning 2.7.0 is installed") and UNTESTED_LIGHTNING_ENV in line


@pytest.mark.slow  # a python subprocess importing lit_vit (about 10 s on 2 busy cores)
def pinned_versions() -> dict[str, Version]:
    lines = CONSTRAINTS.read_text().splitlines()
    pins = [line.split("#")[0].strip().split("==") for line in lines if "==" in line.split("#")[0]]
    return {canonicalize_name(name.split("[")[0].strip()): Version(v.strip()) for name, v in pins}


def test_every_dependency_whose_internals_we_rely_on_has_an_upper_bound_that_holds_the_pinned_release():
    """lightning, jsonargparse (cli_parser.py parses its error texts) and torchmetrics (lightning_compat restores a
    private metric counter): each bounded from above in pyproject.toml, and the CI pin (.ci/constraints.txt) inside
    every bound."""
    deps = re.search(r"(?ms)^dependencies\s*=\s*\[(.*?)^\]", PYPROJECT.read_text()).group(1)
    reqs = {canonicalize_name(r.name): r for r in map(Requirement, re.findall(r'"([^"]+)"', deps))}
    pins = pinned_versions()
    for name in RELIED_ON:
        spec = reqs[name].specifier
        assert any(s.operator in ("<", "<=", "==", "~=") for s in spec), f"no upper bound on {name}: {spec}"
    for name, req in reqs.items():
        if name in pins:
            assert pins[name] in req.specifier, f"{name}=={pins[name]} (.ci/constraints.txt) is outside {req}"


def test_an_int_of_an_int_or_float_option_stays_an_int_whatever_was_imported_first():
    """typing caches Union[...] by equality (order ignored): after rich created Optional[Union[float, int]], Lightning's
    Optional[Union[int, float]] is that float-first object and jsonargparse read `limit_val_batches: 1` (one batch) as
    1.0 (all batches). patch_lightning() rewrites such annotations int-first (lit_vit.lightning_compat)."""
    import typing

    from jsonargparse import ArgumentParser

    from lit_vit.lightning_compat import int_before_float

    def option(batches: float = 1.0) -> None:
        pass

    # float first, as typing's cache can hand it out (a typing.Union: PEP 604 unions are not cached)
    option.__annotations__["batches"] = typing.Union[float, int, str]  # noqa: UP007

    def parsed(value: str):
        parser = ArgumentParser(exit_on_error=False)
        parser.add_function_arguments(option)
        return parser.parse_args([f"--batches={value}"]).batches

    assert repr(parsed("1")) == "1.0"  # the bug: an int read as a float
    assert int_before_float(option) == ["batches"]
    assert repr(parsed("1")) == "1" and repr(parsed("0.5")) == "0.5" and repr(parsed("1.0")) == "1.0"
    assert int_before_float(option) == []  # idempotent
    from lightning import Trainer

    import lit_vit

    lit_vit.patch_lightning()
    hints = typing.get_type_hints(Trainer.__init__)
    for name in ("limit_train_batches", "limit_val_batches", "val_check_interval", "overfit_batches"):
        args = typing.get_args(hints[name])
        assert args.index(int) < args.index(float), (name, args)
