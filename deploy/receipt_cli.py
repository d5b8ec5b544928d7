"""``dsdn receipt make|submit|get|verify``: try receipts by hand, and verify a signed one offline.

* ``make``: a node key (created in ``--node-key`` if missing, 0600) and a receipt it signs, as JSON on stdout;
  the node's public key goes to stderr (register the node with it: ``POST /register {"public_key": …}``).
* ``submit FILE|-``: POST it to a coordinator (``--url``, ``--wait-ms``, ``--token`` or COORDINATOR_API_TOKEN).
* ``get ID``: fetch a receipt from a coordinator.
* ``verify FILE|- --group-key HEX``: check a signed document with nothing but the group key (exit 0 valid,
  1 invalid, 2 bad input). No coordinator is contacted.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import nacl.signing

from consensus import receipts as rc


def _read_json(source: str) -> Any:
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    return json.loads(text)


def _node_key(path: Path) -> nacl.signing.SigningKey:
    if path.exists():
        raw = path.read_bytes()
        if len(raw) != 32:
            raise ValueError(f"{path}: expected a 32-byte Ed25519 seed")
        return nacl.signing.SigningKey(raw)
    key = nacl.signing.SigningKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(bytes(key))
    return key


def make(args: argparse.Namespace) -> dict[str, Any]:
    key = _node_key(Path(args.node_key))
    epoch = args.epoch or int(time.time() // args.epoch_length) + 1
    commitment = None
    subject = args.subject
    if args.type == "compute":
        subject = subject or secrets.token_hex(32)
        commitment = [subject, *(secrets.token_hex(32) for _ in range(5))]
    receipt = rc.sign_as_node(key, receipt_type=args.type, node_id=args.node, subject=subject, epoch=epoch,
                              usage_proof_hash=args.proof or secrets.token_hex(32), execution_commitment=commitment,
                              reward_base=args.reward, submitter_address=args.submitter, timestamp=int(time.time()))
    print(f"node public key: {bytes(key.verify_key).hex()}", file=sys.stderr)
    return receipt.to_json()


def _headers(args: argparse.Namespace) -> dict[str, str]:
    token = args.token or os.environ.get("COORDINATOR_API_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="dsdn receipt", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    mk = sub.add_parser("make", help="a node key and a receipt it signs (JSON on stdout)")
    mk.add_argument("--node-key", default=".dsdn/node.key", help="the node's Ed25519 seed (created if missing)")
    mk.add_argument("--node", required=True, help="the node's registry id")
    mk.add_argument("--type", choices=rc.TYPES, default="storage")
    mk.add_argument("--subject", help="storage: a registered object hash; compute: a workload id (64 hex)")
    mk.add_argument("--epoch", type=int, help="default: the current epoch")
    mk.add_argument("--epoch-length", type=int, default=3600, help="EPOCH_LENGTH_S of the cluster")
    mk.add_argument("--reward", type=int, default=1000)
    mk.add_argument("--submitter", default="00" * 20, help="40 hex characters")
    mk.add_argument("--proof", help="usage proof hash (64 hex; default random)")
    for name in ("submit", "get"):
        p = sub.add_parser(name, help=f"{name} a receipt ({'FILE or -' if name == 'submit' else 'ID'})")
        p.add_argument("target")
        p.add_argument("--url", default="http://127.0.0.1:8080")
        p.add_argument("--token", help="default: COORDINATOR_API_TOKEN")
        p.add_argument("--timeout", type=float, default=35.0)
        if name == "submit":
            p.add_argument("--wait-ms", type=int, default=5000, help="wait for the threshold signature (≤ 30000)")
    vf = sub.add_parser("verify", help="verify a signed document offline")
    vf.add_argument("target", help="the document: FILE or -")
    vf.add_argument("--group-key", required=True, help="the cluster's group public key (64 hex)")
    args = parser.parse_args(argv)
    try:
        if args.action == "make":
            if args.type == "storage" and not args.subject:
                parser.error("--subject is required for a storage receipt")
            print(json.dumps(make(args), indent=2))
        elif args.action == "verify":
            valid, reason = rc.verify_document(_read_json(args.target), bytes.fromhex(args.group_key))
            print(json.dumps({"valid": valid, "reason": reason}))
            sys.exit(0 if valid else 1)
        else:
            with httpx.Client(timeout=args.timeout) as http:
                if args.action == "submit":
                    response = http.post(f"{args.url}/receipts", params={"wait_ms": args.wait_ms},
                                         json=_read_json(args.target), headers=_headers(args))
                else:
                    response = http.get(f"{args.url}/receipts/{args.target}", headers=_headers(args))
            print(json.dumps(response.json(), indent=2))
            sys.exit(0 if response.status_code < 300 else 1)
    except (OSError, ValueError, rc.ReceiptError, httpx.HTTPError) as exc:
        print(f"dsdn receipt {args.action}: {exc}", file=sys.stderr)
        sys.exit(2)
