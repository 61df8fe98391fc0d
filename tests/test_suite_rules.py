"""Rules for the docs and the test suite itself: every list of position-embedding kinds in README.md and docs/*.md names
every registered kind (or is the variant list of a named sweep YAML, checked against it), and no test module sets
torch's thread count at import (it would change the whole session: the `one_thread` fixture does it per module)."""

import ast
import re
from pathlib import Path

import pytest
import yaml

from lit_vit.models.layers import POS_EMBED_KINDS

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# A paragraph naming this many registered kinds in backticks is a list of kinds.
LIST_MIN = 4
# `<!-- kinds: experiments/x.yaml -->` before a list: the list is that sweep's variants, not every kind.
SOURCE = re.compile(r"<!--\s*kinds:\s*(\S+?)\s*-->")
# what a kind's name looks like: a token of this shape in backticks that is not registered is a stale or mistyped kind
KIND_LIKE = re.compile(r"^(?:learned|sincos|rope|relative)(?:_\w+)?$")


def paragraphs(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each prose paragraph: code blocks and table rows left out (tables are written
    from result CSVs, one kind a row)."""
    out, block, start, fenced = [], [], 0, False
    for i, line in enumerate([*text.splitlines(), ""], 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.lstrip().startswith("|"):
            continue
        if line.strip():
            start = start or i
            block.append(line)
        elif block:
            out.append((start, "\n".join(block)))
            block, start = [], 0
    return out


def kind_lists(path: Path) -> list[tuple[int, list[str], str | None]]:
    """(line, kinds named in backticks in order, declared source or None) of each list of kinds in a markdown file."""
    found = []
    for line, para in paragraphs(path.read_text()):
        named = [k for k in re.findall(r"`([^`\s]+)`", para) if k in POS_EMBED_KINDS]
        if len(set(named)) >= LIST_MIN:
            source = SOURCE.search(para)
            found.append((line, list(dict.fromkeys(named)), source.group(1) if source else None))
    return found


def sweep_variants(yaml_path: Path) -> list[str]:
    return [v["name"] for v in yaml.safe_load(yaml_path.read_text())["ablation"]["variants"]]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_list_of_kinds_in_the_docs_names_every_registered_kind(path):
    problems = []
    for line, named, source in kind_lists(path):
        if source is None:
            missing = [k for k in POS_EMBED_KINDS if k not in named]
            if missing:
                problems.append(f"{path.name}:{line}: names {', '.join(named)} but not {', '.join(missing)}")
        elif sorted(named) != sorted(sweep_variants(REPO / source)):
            problems.append(
                f"{path.name}:{line}: names {', '.join(named)}, {source} sweeps {sweep_variants(REPO / source)}"
            )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_no_doc_names_a_kind_that_is_not_registered(path):
    unknown = {k for k in re.findall(r"`([^`\s]+)`", path.read_text()) if KIND_LIKE.match(k)} - set(POS_EMBED_KINDS)
    assert not unknown, f"{path.name} names kinds that are not registered: {sorted(unknown)}"


def test_the_docs_scan_finds_a_list_that_misses_a_kind(tmp_path):
    """Self-test: a planted list without rope_2d is found and reported; a complete one and a declared sweep are not."""
    complete = ", ".join(f"`{k}`" for k in POS_EMBED_KINDS)
    partial = ", ".join(f"`{k}`" for k in POS_EMBED_KINDS if k != "rope_2d")
    doc = tmp_path / "doc.md"
    doc.write_text(
        f"Intro.\n\nKinds: {partial}.\n\nAll: {complete}.\n\n"
        "| `none` | `learned_1d` |\n| `learned_2d` | `relative` |\n\n"
        "<!-- kinds: experiments/ablation_pos.yaml -->\nHere `none`, `learned_1d`, `learned_2d`, `sincos_2d`,\n"
        "`relative`.\n\n```\n`none` `learned_1d` `learned_2d` `sincos_2d`\n```\n"
    )
    lists = kind_lists(doc)
    assert [(line, source) for line, _, source in lists] == [
        (3, None),
        (5, None),
        (10, "experiments/ablation_pos.yaml"),
    ]
    assert "rope_2d" not in lists[0][1] and lists[1][1] == list(POS_EMBED_KINDS)
    assert sorted(lists[2][1]) == sorted(sweep_variants(REPO / "experiments/ablation_pos.yaml"))


def test_no_test_module_sets_torch_threads_at_import():
    """torch.set_num_threads at module level runs at collection and changes every test after it."""
    offenders = []
    for path in sorted((REPO / "tests").glob("*.py")):
        for node in ast.parse(path.read_text()).body:  # module-level statements only; fixtures and tests are defs
            for call in ast.walk(node):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    break
                if isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "set_num_threads":
                    offenders.append(f"{path.name}:{call.lineno}")
    assert not offenders, f"set torch's threads in a fixture (conftest's one_thread), not at import: {offenders}"
