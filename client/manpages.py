"""``python -m client.manpages [DIR]``: write attestgate.1 and attestgate-admin.1 (default
DIR: man/) from the two command lines' parsers, so the pages list every subcommand."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from shared.cli_conventions import Parser
from shared.manpage import render


def pages() -> dict[str, str]:
    """File name -> page text, for both CLIs."""
    from client.cli import build_parser as client_parser  # noqa: PLC0415
    from services.registry.admin import build_parser as admin_parser  # noqa: PLC0415

    today = datetime.datetime.now(datetime.UTC).date()
    parsers: list[tuple[Parser, str]] = [
        (client_parser(), "talk to an attestgate server over a TPM-attested Noise channel"),
        (admin_parser(), "operate an attestgate server"),
    ]
    return {f"{p.prog}.1": render(p, summary, today) for p, summary in parsers}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0] if args else "man")
    target.mkdir(parents=True, exist_ok=True)
    for name, text in pages().items():
        (target / name).write_text(text)
        print(target / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
