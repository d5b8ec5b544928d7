"""The ``dsdn`` command line. Subcommands: ``identity`` (print a data dir's public key, creating the
key if needed, for CLUSTER_MEMBER_KEYS), ``namespace NAME`` (a valid Celestia namespace for DA_NAMESPACE),
``version``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from node import identity
from node.coordinator import VERSION
from node.da.namespace import namespace_from_name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dsdn", description="DSDN coordinator tools")
    sub = parser.add_subparsers(dest="command", required=True)
    ident = sub.add_parser("identity", help="print the coordinator public key of a data dir (creating it)")
    ident.add_argument("--data-dir", default=".dsdn/coordinator-0", help="coordinator data dir")
    ns = sub.add_parser("namespace", help="print a valid Celestia v0 namespace (for DA_NAMESPACE) derived from NAME")
    ns.add_argument("name")
    sub.add_parser("version", help="print the version")
    args = parser.parse_args(argv)
    if args.command == "version":
        print(VERSION)
    elif args.command == "namespace":
        try:
            print(namespace_from_name(args.name).hex())
        except ValueError as exc:
            print(f"dsdn namespace: {exc}", file=sys.stderr)
            sys.exit(2)
    elif args.command == "identity":
        try:
            key = identity.load_or_create(Path(args.data_dir))
        except (OSError, ValueError) as exc:
            print(f"dsdn identity: {exc}", file=sys.stderr)
            sys.exit(2)
        print(bytes(key.verify_key).hex())


if __name__ == "__main__":
    main()
