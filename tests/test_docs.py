"""README.md and docs/: the run-result tables equal their CSVs in docs/, the README is short and starts with the two
commands and the main result, the README's test command is the one CI runs, and relative links resolve."""

import re
import shutil
from pathlib import Path

from lit_vit.ablation.report import docs_table, update_docs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_readme_and_docs_tables_equal_their_csvs():
    """Every table between `<!-- table: x.csv -->` and `<!-- end table -->` is what the generator makes of docs/x.csv
    (fix: python -m lit_vit.ablation.report --docs)."""
    assert update_docs(ROOT, check=True) == []
    marked = [
        m for p in [ROOT / "README.md", *DOCS.glob("*.md")] for m in re.findall(r"<!-- table: (\S+)", p.read_text())
    ]
    assert "ablation_pos_results.csv" in marked and "ablation_hybrid_results.csv" in marked


def test_a_table_edited_by_hand_is_found_stale(tmp_path):
    shutil.copytree(DOCS, tmp_path / "docs", ignore=shutil.ignore_patterns("*.md"))
    table = docs_table(DOCS, "ablation_pos_results.csv")
    readme = f"# x\n<!-- table: ablation_pos_results.csv -->\n{table.replace('81.8', '81.9')}\n<!-- end table -->\n"
    (tmp_path / "README.md").write_text(readme)
    assert update_docs(tmp_path, check=True) == [tmp_path / "README.md"]
    update_docs(tmp_path)
    assert "81.8 +- 2.6" in (tmp_path / "README.md").read_text() and update_docs(tmp_path, check=True) == []


def test_readme_is_short_with_the_two_commands_and_the_main_result_on_its_first_screen():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 250
    first = "\n".join(lines[:60])
    main_job = (
        "python3 -m venv .venv && . .venv/bin/activate && pip install -c .ci/constraints.txt -e . && "
        "python -m lit_vit fit --config experiments/ablation_pos.yaml"
    )
    assert main_job in first
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    test_command = ci[ci.index("# The README's test command (keep the two in sync):") + 1]
    assert test_command.startswith("python3 -m venv .venv") and test_command in first
    assert "<!-- table: ablation_pos_results.csv" in first and "| `learned_1d` |" in first
    assert "docs/ablation_pos.png" in first


def test_docs_links_point_at_files_that_exist():
    for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name} links {target}, which does not exist"


def test_the_digits_split_sizes_the_docs_state_are_the_real_ones():
    from lit_vit.data import DigitsDataModule

    sizes = {split: len(targets) for split, (_, targets) in DigitsDataModule().arrays().items()}
    assert sizes == {"train": 1259, "val": 269, "test": 269}
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *DOCS.glob("*.md")])
    assert "1,259" in text and "1,257" not in text
