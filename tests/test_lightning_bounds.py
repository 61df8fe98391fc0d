"""The lightning releases lit_vit is tested with: pyproject.toml bounds them from above, the installed one is in the
range, and the CLI stops with a one-line error outside it (lit_vit relies on a few private Lightning names)."""

import re
from pathlib import Path

import lightning
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from lit_vit.cli import main
from lit_vit.errors import ConfigError
from lit_vit.lightning_fixes import TESTED_LIGHTNING, UNTESTED_LIGHTNING_ENV, check_lightning_version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


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
