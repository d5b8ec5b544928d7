"""The ``dsdn`` command line.

``cluster up`` (a local cluster: devnet + emergency blob store + N coordinators), ``devnet`` (the local
Celestia-compatible DA node), ``blobstore`` (the blob-store service), ``keys show`` / ``identity`` (print a
data dir's public key, creating the key if needed, for the cluster config), ``namespace NAME`` (a valid
Celestia namespace for DA_NAMESPACE), ``receipt make|submit|get|list|verify`` (usage receipts by hand, offline
verification), ``simulate`` (seeded fault schedules with safety/liveness/convergence checkers), ``nemesis`` (faults
against a real local cluster under load, then a check of the history), ``status`` / ``nodes`` / ``objects`` /
``placement`` (the cluster's HTTP API as a client, deploy/ctl.py), ``version``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in ("status", "nodes", "objects", "placement"):  # before the imports below: a
        from deploy import ctl  # client command starts without loading the coordinator's modules

        ctl.main(argv)
        return
    if argv[:1] == ["receipt"]:  # a client command too (deploy/receipt_cli.py, on ctl's machinery)
        from deploy import receipt_cli

        receipt_cli.main(argv[1:])
        return
    from node import identity
    from node.coordinator import VERSION
    from node.da.namespace import namespace_from_name

    # Services parse their own flags: everything after the subcommand goes to them.
    if argv[:2] == ["cluster", "up"]:
        from deploy import cluster

        cluster.main(argv[2:])
        return
    if argv[:1] == ["nemesis"]:
        from deploy import nemesis

        nemesis.main(argv[1:])
        return
    if argv[:1] == ["simulate"]:
        from deploy import simulate

        simulate.main(argv[1:])
        return
    if argv[:1] in (["devnet"], ["blobstore"]):
        from deploy import blobstore, devnet

        (devnet if argv[0] == "devnet" else blobstore).main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="dsdn", description="DSDN coordinator tools")
    sub = parser.add_subparsers(dest="command", required=True)
    cl = sub.add_parser("cluster", help="local cluster: `dsdn cluster up [-n N] [--base-port P] [--data-dir D] "
                                        "[--block-interval-ms MS]` (`dsdn cluster up --help`)")
    cl.add_argument("action", choices=["up"])
    sub.add_parser("devnet", help="run the local Celestia-compatible devnet (`dsdn devnet --help`)")
    sub.add_parser("blobstore", help="run the blob-store service (`dsdn blobstore --help`)")
    ident = sub.add_parser("identity", help="print the coordinator public key of a data dir (creating it)")
    ident.add_argument("--data-dir", default=".dsdn/coordinator-0", help="coordinator data dir")
    keys = sub.add_parser("keys", help="`dsdn keys show [--data-dir D]`: the same as identity")
    keys.add_argument("action", choices=["show"])
    keys.add_argument("--data-dir", default=".dsdn/coordinator-0", help="coordinator data dir")
    ns = sub.add_parser("namespace", help="print a valid Celestia v0 namespace (for DA_NAMESPACE) derived from NAME")
    ns.add_argument("name")
    sub.add_parser("receipt", help="usage receipts: `dsdn receipt make|submit|get|list|verify --help`")
    sub.add_parser("simulate", help="seeded fault schedules against a simulated cluster (`dsdn simulate --help`)")
    sub.add_parser("nemesis", help="faults against a real local cluster under load (`dsdn nemesis --help`)")
    sub.add_parser("status", help="one row per coordinator of the cluster (`dsdn status --help`)")
    sub.add_parser("nodes", help="`dsdn nodes list|get|register` (client of the HTTP API)")
    sub.add_parser("objects", help="`dsdn objects register|get`")
    sub.add_parser("placement", help="`dsdn placement HASH [--rf N]`")
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
    elif args.command in ("identity", "keys"):
        try:
            key = identity.load_or_create(Path(args.data_dir))
        except (OSError, ValueError) as exc:
            print(f"dsdn identity: {exc}", file=sys.stderr)
            sys.exit(2)
        print(bytes(key.verify_key).hex())


if __name__ == "__main__":
    main()
