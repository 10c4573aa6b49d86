"""`livo store serve`: run the embedded SeaweedFS object store in the foreground for local work."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path


def cmd_serve(args: argparse.Namespace) -> int:
    from livo.registry.store import EmbeddedSeaweedFS

    with EmbeddedSeaweedFS(Path(args.data_dir), bucket=args.bucket) as server:
        print("# embedded SeaweedFS is running; in another shell:")
        for key, value in server.env().items():
            print(f"export {key}={shlex.quote(value)}")
        print(f"# data: {server.data_dir}  log: {server.log_path}  pid: {server.pid}  (Ctrl-C stops it)", flush=True)
        try:
            while server.running():
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        if not server.running():
            print(f"weed exited; see {server.log_path}")
            return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("store", help="local object store (embedded SeaweedFS)",
                                   description="The embedded SeaweedFS S3 server livo starts for local runs.")
    sub = parser.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    serve = sub.add_parser("serve", help="run it in the foreground and print the LIVO_S3_* variables",
                           description="Start SeaweedFS on free loopback ports with generated credentials and print "
                                       "the LIVO_S3_* exports; stops on Ctrl-C. Data persists in --data-dir.")
    serve.add_argument("--data-dir", default="runs/store", help="data directory (default: runs/store)")
    serve.add_argument("--bucket", default="livo", help="bucket to create (default: livo)")
    serve.set_defaults(func=cmd_serve)
