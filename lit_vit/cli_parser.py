"""The CLI's argument parser: jsonargparse's type errors as one `error:` line naming the option, what it accepts and
what it got, instead of the usage text and a nested report of every type tried."""

import argparse
import re
import sys
from typing import Any, NoReturn

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser

_KEY = re.compile(r'Parser key "([^"]+)"')
_GOT = re.compile(r"Got value: (.*)$")
_LITERAL = re.compile(r"Expected a typing\.Literal\[(.*)\]\.")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" -"))


def condense(message: str) -> str:
    """One line out of jsonargparse's report: the dotted option, the accepted values and the given one, e.g.
    "--model.backbone.pos_embed: expected one of none, learned_1d, ...; got 'rope3'". A message it cannot read is
    joined into one line as it is."""
    lines = [line for line in message.splitlines() if line.strip()]
    hit = next((i for i, line in enumerate(lines) if _GOT.search(line)), None)
    if hit is None:
        return " ".join(line.strip() for line in lines)
    keys, depth = [], _indent(lines[hit])
    for line in reversed(lines[:hit]):  # the Parser-key lines enclosing the first rejected value, innermost first
        match = _KEY.search(line)
        if match and _indent(line) < depth:
            keys.append(match.group(1))
            depth = _indent(line)
    key = ".".join(reversed(keys))
    detail = lines[hit].strip(" -")
    literal = _LITERAL.search(detail)
    got = _GOT.search(detail).group(1).strip()
    if literal:
        choices = ", ".join(c.strip().strip("'\"") for c in literal.group(1).split(","))
        expected = f"expected one of {choices}"
    else:
        expected = detail.split(". Got value")[0].replace("Expected a ", "expected ")
        expected = re.sub(r"<class '([\w.]+)'>", r"\1", expected)
    return f"--{key}: {expected}; got {got!r} (see --help)" if key else f"{expected}; got {got!r} (see --help)"


class EpilogFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help formatter (types and defaults) that keeps the line breaks of the description and epilog
    (lists of subcommands, examples)."""


class OneLineErrors:
    """Mixin for a jsonargparse parser: its errors are one `error:` line on stderr, exit status 2 (an override of
    argparse's public `error`); with exit_on_error=False it raises as jsonargparse does."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        print(f"error: {condense(str(message))}", file=sys.stderr)
        sys.exit(2)


class LitViTParser(OneLineErrors, LightningArgumentParser):
    """LightningCLI's parser with one-line errors, named `python -m lit_vit` also in the parsers jsonargparse makes
    from it as `type(parser)(...)` (--model.help CLASS), whose usage lines would name __main__.py otherwise."""

    def __init__(self, *args: Any, prog: str = "python -m lit_vit", **kwargs: Any) -> None:
        super().__init__(*args, prog=prog, **kwargs)
