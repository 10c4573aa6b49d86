"""The `livo` command. Subcommands live in `livo/commands/`, one module each, discovered at start-up.

Command modules import nothing heavy at module level, so `livo --help` answers in well under a second.

The failure contract (docs/failure_contract.md): bad input exits 2, a fault of the environment (object store down,
disk full, permission denied, a failed training rank) exits 1, training preempted by SIGTERM exits 143, Ctrl-C
exits 130 — each with exactly one `livo: error: ...` line on stderr and no traceback. A reader that closes our
stdout early (`livo lineage show m | head -1`) is not an error: livo stops writing quietly and exits 141
(128 + SIGPIPE), as a Unix tool killed by SIGPIPE would.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from typing import NoReturn

from livo import __version__
from livo.errors import LivoError, one_line

BROKEN_PIPE_EXIT_CODE = 141  # 128 + SIGPIPE: what the shell reports for `yes | head -1`
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT


class LivoArgumentParser(argparse.ArgumentParser):
    """argparse with the contract's one-line errors: `livo: error: <cause>; see `livo CMD --help``, exit 2.

    `add_subparsers` builds sub-parsers of the parent's class, so every subcommand (and nested action) uses it."""

    def error(self, message: str) -> NoReturn:
        print(f"livo: error: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = LivoArgumentParser(
        prog="livo",
        description="LiVO value alignment for text-to-image diffusion models: data, training, evaluation, registry.",
        epilog="Exit codes: 0 done, 2 bad input, 1 environment fault, 143 training preempted by SIGTERM "
               "(rerun with --resume), 130 interrupted; see docs/failure_contract.md.",
    )
    parser.add_argument("--version", action="version", version=f"livo {__version__}")
    parser.add_argument("--log-json", action="store_true", help="structured JSON logs on stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import livo.commands as commands_pkg

    for module_info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"livo.commands.{module_info.name}")
        module.register(subparsers)
    return parser


def _missing_action(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The choices of the chosen command's action when none was given (`livo data`), else ""."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and args.command in action.choices:
            for inner in action.choices[args.command]._actions:
                if (isinstance(inner, argparse._SubParsersAction) and inner.dest != argparse.SUPPRESS
                        and getattr(args, inner.dest, None) is None):
                    return ", ".join(inner.choices)
    return ""


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout already closed or not a real file
        pass


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            if args.command is None:  # bare `livo`: the overview
                parser.print_help()
                return 0
            print(f"livo: error: `livo {args.command}` needs an action; see `livo {args.command} --help`",
                  file=sys.stderr)
            return 2
        missing = _missing_action(parser, args)
        if missing:
            print(f"livo: error: `livo {args.command}` needs an action ({missing}); see `livo {args.command} --help`",
                  file=sys.stderr)
            return 2
        from livo.log import configure_logging

        configure_logging(json_format=True if args.log_json else None)
        try:
            code = int(args.func(args) or 0)
        except LivoError as exc:
            code = _report(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            code = _report("interrupted", INTERRUPTED_EXIT_CODE)
        except BrokenPipeError as exc:
            if _stdout_reader_gone():
                raise
            code = _report(f"connection closed by the other side ({exc})", 1)  # a socket, not our stdout
        except OSError as exc:  # the environment: permission denied, disk full, a network socket refused us
            code = _report(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), 1)
        sys.stdout.flush()  # inside the try: a reader that went away shows up here, not at interpreter exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE_EXIT_CODE


def _stdout_reader_gone() -> bool:
    """True when stdout is a pipe whose reading end is closed (poll reports POLLERR on the writing end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return True  # stdout is closed or not a file: nothing more can be written to it anyway


def _report(message: str, code: int) -> int:
    """Print the one stderr line of a failure (a multi-line cause is joined into one line) and return `code`."""
    print(f"livo: error: {one_line(str(message))}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
