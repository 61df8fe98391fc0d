"""The CLI's argument parser: jsonargparse's type errors as one `error:` line naming the option, what it accepts and
what it got, instead of the usage text and a nested report of every type tried."""

import argparse
import re
import sys
from typing import Any, NoReturn

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser

_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS = re.compile(r"Problem with given class_path '([^']+)'")
_GOT = re.compile(r"Got value: (.*)$")
_GIVEN = re.compile(r"^\s*Given value: (.*)$")
_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_LITERAL = re.compile(r"typing\.Literal\[(.*)\]")
_NESTED = re.compile(r"NestedArg\(key='[^']*', val=(.*)\)$")
_EXPECTED = re.compile(r"Expected a (.*?)(?:\. Got value: .*)?$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" -"))


def _type_name(text: str) -> str:
    literal = _LITERAL.search(text)
    if literal:
        return "one of " + ", ".join(c.strip().strip("'\"") for c in literal.group(1).split(","))
    name = re.sub(r"<class '(?:[\w]+\.)*([\w]+)'>", r"\1", text)
    return "null" if name == "NoneType" else name


def condense(message: str) -> str:
    """One line out of jsonargparse's report: the dotted option, the accepted values and the given one, e.g.
    "--model.backbone.pos_embed: expected one of none, learned_1d, ...; got 'rope3'", or the option a class does not
    have. A message it cannot read is joined into one line as it is."""
    lines = [line for line in message.splitlines() if line.strip()]
    hit = next((i for i, line in enumerate(lines) if _GOT.search(line) or _NOT_ACCEPTED.search(line)), None)
    if hit is None:  # a union of plain types: "- Expected a <class 'int'>" lines, then "Given value: abc"
        hit = next((i for i, line in enumerate(lines) if _EXPECTED.search(line)), None)
    if hit is None:
        return " ".join(line.strip() for line in lines)
    keys, classes, depth = [], [], _indent(lines[hit])
    for line in reversed(lines[:hit]):  # the Parser-key lines enclosing the rejected value, innermost first
        if _indent(line) < depth and (_KEY.search(line) or _CLASS.search(line)):
            if _KEY.search(line):
                keys.append(_KEY.search(line).group(1))
            else:
                classes.append(_CLASS.search(line).group(1))
            depth = _indent(line)
    key = "--" + ".".join(reversed(keys)) if keys else "a value"
    not_accepted = _NOT_ACCEPTED.search(lines[hit])
    if not_accepted:
        owner = classes[0] if classes else "the class"
        return (
            f"{key}: {owner.rsplit('.', 1)[-1]} has no option {not_accepted.group(1)!r}; "
            f"see {key}.help {owner} for its options"
        )
    got = _GOT.search(lines[hit])
    if got:
        expected, value = _type_name(_EXPECTED.search(lines[hit]).group(1)), got.group(1).strip()
    else:  # every "Expected a ..." line at the hit's level, and the value given below them
        level = _indent(lines[hit])
        siblings = [line for line in lines[hit:] if _indent(line) == level and _EXPECTED.search(line)]
        expected = " or ".join(_type_name(_EXPECTED.search(line).group(1)) for line in siblings)
        given = [_GIVEN.match(line).group(1).strip() for line in lines[hit:] if _GIVEN.match(line)]
        value = given[-1] if given else "?"
        nested = _NESTED.match(value)  # a value given to a class's option: NestedArg(key=..., val='x')
        value = nested.group(1).strip("'\"") if nested else value
    return f"{key}: expected {expected}; got {value!r} (see --help)"


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
