"""Conventions both command lines share (clig.dev, tpm2-tools), in one place.

``Parser`` is the ``ArgumentParser`` of ``attestgate`` and ``attestgate-admin``; every
subparser made from it (``sub.add_parser(...)``) is a ``Parser`` too and so inherits:

- **global flags before and after the subcommand**: the options given as
  ``global_options`` to the top parser are added to every subparser (with a suppressed
  default, so ``prog --json cmd`` and ``prog cmd --json`` both work);
- **an example in every --help**: ``examples=[...]`` for ``add_parser``; a subparser
  without one gets one built from its required arguments;
- **usage errors as an exception** (``UsageError``, exit 2) instead of ``sys.exit``, so
  that the caller prints them as JSON under ``--json``;
- **"did you mean"** for a mistyped subcommand or flag.

``report_crash`` writes an unexpected exception's traceback to the state directory's log
and returns one line for the user (never a traceback on the terminal).
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import json
import os
import re
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
STATE_SUBDIR = "attestgate"

GlobalOption = tuple[tuple[str, ...], dict[str, Any]]

_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")
_UNRECOGNIZED = "unrecognized arguments: "


class UsageError(Exception):
    """A command line that does not parse or a local check that fails: exit 2."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.message, self.usage = message, usage


def package_version() -> str:
    import importlib.metadata  # noqa: PLC0415 (for --version only: 25 ms at start-up)

    try:
        return importlib.metadata.version("attestgate")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class LazyVersion(argparse._VersionAction):
    """``--version`` (``action=LazyVersion``): "PROG VERSION", the version looked up only
    when asked (package_version), not whenever the parser is built."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        self.version = f"%(prog)s {package_version()}"
        super().__call__(parser, namespace, values, option_string)


class _Subcommands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Subparsers that inherit the parent's global options and conventions."""

    global_options: Sequence[GlobalOption] = ()

    def add_parser(self, name: str, **kwargs: Any) -> Parser:
        kwargs.setdefault("global_options", self.global_options)
        kwargs["_child"] = True
        parser: Parser = super().add_parser(name, **kwargs)
        return parser


class Parser(argparse.ArgumentParser):
    """See the module docstring."""

    def __init__(self, *args: Any, examples: Sequence[str] = (),
                 global_options: Sequence[GlobalOption] = (), _child: bool = False,
                 **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.examples = list(examples)
        self.global_options = list(global_options)
        for flags, options in self.global_options:
            if any(f in self._option_string_actions for f in flags):
                continue  # already given (e.g. through parents=[...])
            self.add_argument(*flags, **({**options, "default": argparse.SUPPRESS}
                                         if _child else options))

    def add_subparsers(self, **kwargs: Any) -> _Subcommands:
        kwargs.setdefault("action", _Subcommands)
        action = super().add_subparsers(**kwargs)
        assert isinstance(action, _Subcommands)
        action.global_options = self.global_options
        return action

    # -- help -----------------------------------------------------------------------------
    def example_lines(self) -> list[str]:
        """The examples shown in --help: the given ones, else one built from the usage."""
        if self.examples:
            return self.examples
        subs = self.subcommands()
        if subs:
            return [line for child in subs.values() for line in child.example_lines()[:1]]
        words = [self.prog]
        for action in self._actions:
            if action.option_strings and action.required:
                words += [action.option_strings[-1], str(action.metavar or action.dest.upper())]
            elif not action.option_strings and action.nargs not in ("?", "*"):
                words.append(str(action.metavar or action.dest.upper()))
        return [" ".join(words)]

    def format_help(self) -> str:
        text = super().format_help().rstrip("\n")
        examples = "\n".join(f"  {line}" for line in self.example_lines())
        return f"{text}\n\nexamples:\n{examples}\n"

    def subcommands(self) -> dict[str, Parser]:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return {name: p for name, p in action.choices.items() if isinstance(p, Parser)}
        return {}

    def all_option_strings(self) -> set[str]:
        found = {s for a in self._actions for s in a.option_strings}
        for child in self.subcommands().values():
            found |= child.all_option_strings()
        return found

    # -- errors ---------------------------------------------------------------------------
    def error(self, message: str) -> Any:  # argparse declares NoReturn
        raise UsageError(message + self._suggestion(message), self.format_usage().strip())

    def _suggestion(self, message: str) -> str:
        wrong: list[str] = []
        known: list[str] = []
        m = _INVALID_CHOICE.search(message)
        if m:
            wrong = [m.group(1)]
            known = re.findall(r"'([^']*)'", m.group(2))
        elif message.startswith(_UNRECOGNIZED):
            wrong = [w.split("=")[0] for w in message[len(_UNRECOGNIZED):].split()
                     if w.startswith("-")]
            known = sorted(self.all_option_strings())
        hints = []
        for w in wrong:
            close = difflib.get_close_matches(w, known, n=1, cutoff=0.6)
            if close:
                hints.append(f"did you mean {close[0]!r} for {w!r}?")
        return ("; " + "; ".join(hints)) if hints else ""


def wants_json(argv: Sequence[str]) -> bool:
    """Whether --json is on a command line that may not parse (flags end at ``--``)."""
    for word in argv:
        if word == "--":
            return False
        if word == "--json":
            return True
    return False


def print_usage_error(prog: str, err: UsageError, as_json: bool, stdout: TextIO,
                      stderr: TextIO) -> int:
    """Print a usage error as argparse would (usage line, then the error), or as JSON."""
    if as_json:
        print(json.dumps({"ok": False, "error": "usage", "message": err.message}),
              file=stdout, flush=True)
    else:
        if err.usage:
            print(err.usage, file=stderr)
        print(f"{prog}: error: {err.message}", file=stderr, flush=True)
    return EXIT_USAGE


def state_dir(env: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/attestgate``, by default ``~/.local/state/attestgate``."""
    base = env.get("XDG_STATE_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path("~/.local/state").expanduser()
    return root / STATE_SUBDIR


def report_crash(prog: str, exc: BaseException, env: Mapping[str, str],
                 now: float) -> str:
    """Append ``exc``'s traceback to ``<state dir>/<prog>.log`` (0600); one line for the user.

    The line names the exception type (never its text, which may hold data) and the log.
    """
    path = state_dir(env) / f"{prog}.log"
    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(timespec="seconds")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(f"--- {stamp} {prog} internal error\n")
            f.write("".join(traceback.format_exception(exc)))
        where = f"details in {path}"
    except OSError:
        where = f"no log written ({path} is not writable)"
    return f"internal error ({type(exc).__name__}); {where}"


def completion_script(prog: str, shell: str) -> str:
    """The shell code that makes ``prog`` complete with argcomplete, or raises UsageError."""
    try:
        import argcomplete  # noqa: PLC0415 - optional: completion only
    except ImportError:
        raise UsageError("shell completion needs argcomplete: pip install argcomplete") from None
    script: str = argcomplete.shellcode([prog], shell=shell)  # type: ignore[attr-defined]
    return script


def enable_completion(parser: argparse.ArgumentParser) -> None:
    """Answer a completion request from the shell (no-op otherwise, or without argcomplete)."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete  # noqa: PLC0415
    except ImportError:
        return
    argcomplete.autocomplete(parser)


COMPLETION_SHELLS = ("bash", "zsh", "fish", "tcsh")


def add_completion_command(sub: _Subcommands, prog: str) -> Parser:
    """The ``completion SHELL`` subcommand (its handler is set by the caller)."""
    p = sub.add_parser(
        "completion", help="print the shell code for tab completion",
        description=f"Print the code that makes your shell complete {prog}'s commands and "
                    "flags (argcomplete). Or, once for all argcomplete programs: "
                    f"eval \"$(register-python-argcomplete {prog})\".",
        examples=[f"eval \"$({prog} completion bash)\"",
                  f"{prog} completion zsh > ~/.zfunc/_{prog}"])
    p.add_argument("shell", choices=COMPLETION_SHELLS, nargs="?", default="bash",
                   help="bash (default), zsh, fish or tcsh")
    return p
