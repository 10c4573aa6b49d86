"""`livo store serve`: run the embedded SeaweedFS object store in the foreground for local work."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C (exit 0), SIGTERM or SIGHUP (exit 128 + signal: 143, 129); the server is stopped in every
    case. Exit 1 when weed itself dies."""
    from livo.store import EmbeddedSeaweedFS, Terminated, stop_on_signals

    try:
        with stop_on_signals(), EmbeddedSeaweedFS(Path(args.data_dir), bucket=args.bucket) as server:
            print("# embedded SeaweedFS is running; in another shell:")
            for key, value in server.env().items():
                print(f"export {key}={shlex.quote(value)}")
            print(f"# data: {server.data_dir}  log: {server.log_path}  pid: {server.pid}  (Ctrl-C or SIGTERM stops "
                  "it)", flush=True)
            try:
                while server.running():
                    time.sleep(1.0)
            except KeyboardInterrupt:
                pass
            if not server.running():
                print(f"weed exited; see {server.log_path}", file=sys.stderr)
                return 1
    except Terminated as exc:
        print(f"livo: {exc.signal_name}: the embedded SeaweedFS server in {Path(args.data_dir)} was stopped",
              file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("store", help="local object store (embedded SeaweedFS)",
                                   description="The embedded SeaweedFS S3 server livo starts for local runs.")
    sub = parser.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    serve = sub.add_parser("serve", help="run it in the foreground and print the LIVO_S3_* variables",
                           description="Start SeaweedFS on free loopback ports with generated credentials and print "
                                       "the LIVO_S3_* exports; stops on Ctrl-C, SIGTERM or SIGHUP (exit 143 / "
                                       "129). Data persists in --data-dir; a server whose owner died is replaced, "
                                       "one still owned by a live process is refused.")
    serve.add_argument("--data-dir", default="runs/store", help="data directory (default: runs/store)")
    serve.add_argument("--bucket", default="livo", help="bucket to create (default: livo)")
    serve.set_defaults(func=cmd_serve)
