"""The `livo` command. Subcommands live in `livo/commands/`, one module each, discovered at start-up.

Command modules import nothing heavy at module level, so `livo --help` answers in well under a second.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from livo import __version__
from livo.errors import LivoError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livo",
        description="LiVO value alignment for text-to-image diffusion models: data, training, evaluation, registry.",
    )
    parser.add_argument("--version", action="version", version=f"livo {__version__}")
    parser.add_argument("--log-json", action="store_true", help="structured JSON logs on stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import livo.commands as commands_pkg

    for module_info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"livo.commands.{module_info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    from livo.log import configure_logging

    configure_logging(json_format=True if args.log_json else None)
    try:
        return int(args.func(args) or 0)
    except LivoError as exc:
        print(f"livo: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("livo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
