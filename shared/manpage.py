"""Man pages generated from an argparse parser (roff, man(7) macros): one page per program,
with every subcommand (nested ones too) as a subsection with its usage, description,
options and examples. ``python -m client.manpages`` writes man/*.1 for both CLIs."""

from __future__ import annotations

import argparse
import datetime

from shared.cli_conventions import Parser, package_version


def _roff(text: str) -> str:
    """Escape text for roff: backslashes, hyphens, and a leading dot or quote."""
    out = []
    for line in text.replace("\\", "\\e").replace("-", "\\-").splitlines():
        out.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(out)


def _options(parser: argparse.ArgumentParser) -> list[str]:
    lines: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            takes = action.nargs != 0
            meta = f" {action.metavar or action.dest.upper()}" if takes else ""
            head = ", ".join(f"\\fB{_roff(s)}\\fR{_roff(str(meta))}"
                             for s in action.option_strings)
        else:
            head = f"\\fI{_roff(str(action.metavar or action.dest))}\\fR"
        lines += [".TP", head, _roff(action.help or "")]
    return lines


def _section(parser: Parser, level: str) -> list[str]:
    usage = parser.format_usage().removeprefix("usage: ").strip()
    lines = [f".{level} {_roff(parser.prog)}", ".nf", _roff(" ".join(usage.split())), ".fi"]
    if parser.description:
        lines += [".PP", _roff(parser.description)]
    lines += _options(parser)
    examples = parser.example_lines()
    if examples:
        lines += [".PP", "Examples:", ".RS", ".nf", *(_roff(e) for e in examples), ".fi", ".RE"]
    return lines


def _commands(parser: Parser) -> list[str]:
    lines: list[str] = []
    for child in parser.subcommands().values():
        lines += _section(child, "SS")
        lines += _commands(child)
    return lines


def render(parser: Parser, summary: str, date: datetime.date) -> str:
    """The man page of ``parser`` (section 1)."""
    name = parser.prog
    lines = [
        f'.TH {name.upper()} 1 "{date.isoformat()}" "attestgate {package_version()}" '
        '"User Commands"',
        ".SH NAME", f"{_roff(name)} \\- {_roff(summary)}",
        ".SH SYNOPSIS", ".nf",
        _roff(" ".join(parser.format_usage().removeprefix("usage: ").split())), ".fi",
        ".SH DESCRIPTION", _roff(parser.description or summary),
        ".SH OPTIONS", *_options(parser),
        ".SH COMMANDS", *_commands(parser),
    ]
    if parser.epilog:
        lines += [".SH NOTES", ".nf", _roff(parser.epilog), ".fi"]
    return "\n".join(lines) + "\n"
