"""`sparsegate admin …`: the admin API from a shell. Every command is one HTTP call with an admin key.

    sparsegate admin tenants list
    sparsegate admin tenants set acme --models glm-5.1 --rpm 600 --tokens-per-day 2000000
    sparsegate admin keys create acme [--tokens-per-day N] [--expires-in-s S]
    sparsegate admin keys list acme
    sparsegate admin keys revoke key-0123abcd
    sparsegate admin keys rotate key-0123abcd --overlap-s 3600
    sparsegate admin usage --tenant acme --since 2026-12-01 --until 2026-12-02 [--csv]

The gateway's URL and the admin key come from `--url` / `--admin-key`, or `SPARSEGATE_URL` /
`SPARSEGATE_ADMIN_KEY` (better: the key stays out of the shell history).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


def _limits(args: argparse.Namespace) -> dict[str, int]:
    fields = {"rpm": args.rpm, "tpm": args.tpm, "max_concurrent": args.max_concurrent, "max_tokens": args.max_tokens}
    return {k: v for k, v in fields.items() if v is not None}


def _budgets(args: argparse.Namespace) -> dict[str, int]:
    fields = {"tokens_per_day": args.tokens_per_day, "tokens_per_month": args.tokens_per_month}
    return {k: v for k, v in fields.items() if v is not None}


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None, dict[str, str] | None]:
    """The call a command makes: method, path, JSON body, query."""
    if args.area == "tenants":
        if args.action == "list":
            return "GET", "/admin/v1/tenants", None, None
        body: dict[str, Any] = {"name": args.name, "models": args.models.split(","), "limits": _limits(args)}
        body["budgets"] = _budgets(args)
        if args.priority is not None:
            body["priority"] = args.priority
        return "POST", "/admin/v1/tenants", body, None
    if args.area == "keys":
        if args.action == "create":
            key_body: dict[str, Any] = {"budgets": _budgets(args)}
            if args.expires_in_s is not None:
                key_body["expires_in_s"] = args.expires_in_s
            return "POST", f"/admin/v1/tenants/{args.tenant}/keys", key_body, None
        if args.action == "list":
            return "GET", f"/admin/v1/tenants/{args.tenant}/keys", None, None
        if args.action == "revoke":
            return "DELETE", f"/admin/v1/keys/{args.id}", None, None
        return "POST", f"/admin/v1/keys/{args.id}/rotate", {"overlap_s": args.overlap_s}, None
    query = {"format": "csv" if args.csv else "jsonl"}
    for name in ("tenant", "since", "until"):
        if getattr(args, name) is not None:
            query[name] = getattr(args, name)
    return "GET", "/admin/v1/usage", None, query


def run_admin(
    args: argparse.Namespace, client: httpx.Client, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """Make the command's call on `client` (whose base URL and auth are set) and print the answer."""
    method, path, body, query = _request(args)
    try:
        response = client.request(method, path, json=body, params=query)
    except httpx.HTTPError as exc:
        print(f"sparsegate admin: cannot reach the gateway: {exc}", file=err)
        return 1
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        print(f"sparsegate admin: {response.status_code}: {message}", file=err)
        return 1
    if args.area == "usage":
        out.write(response.text)
    else:
        out.write(json.dumps(response.json(), indent=2) + "\n")
    return 0


def add_parser(sub: Any) -> None:
    """Add `admin` and its commands to the `sparsegate` parser's subcommands."""
    admin = sub.add_parser("admin", help="manage tenants, keys and usage through the admin API")
    admin.add_argument("--url", default=None, help=f"the gateway (default $SPARSEGATE_URL or {DEFAULT_URL})")
    admin.add_argument("--admin-key", default=None, help="an admin key (default $SPARSEGATE_ADMIN_KEY)")
    areas = admin.add_subparsers(dest="area", required=True)

    tenants = areas.add_parser("tenants").add_subparsers(dest="action", required=True)
    tenants.add_parser("list")
    put = tenants.add_parser("set", help="create a tenant or update the one of that name")
    put.add_argument("name")
    put.add_argument("--models", required=True, help='comma-separated; "*" for every model')
    for flag in ("--rpm", "--tpm", "--max-concurrent", "--max-tokens", "--priority"):
        put.add_argument(flag, type=int)
    _budget_flags(put)

    keys = areas.add_parser("keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="issue a key; it is printed once")
    create.add_argument("tenant")
    create.add_argument("--expires-in-s", type=float)
    _budget_flags(create)
    keys.add_parser("list").add_argument("tenant")
    keys.add_parser("revoke").add_argument("id")
    rotate = keys.add_parser("rotate", help="issue a replacement; the old key keeps working for --overlap-s")
    rotate.add_argument("id")
    rotate.add_argument("--overlap-s", type=float, default=3600.0)

    usage = areas.add_parser("usage", help="the ledger as JSON lines (or CSV)")
    usage.add_argument("--tenant")
    usage.add_argument("--since", help="unix seconds or ISO 8601 (UTC when no offset)")
    usage.add_argument("--until", help="unix seconds or ISO 8601, exclusive")
    usage.add_argument("--csv", action="store_true")
    admin.set_defaults(func=main)


def _budget_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens-per-day", type=int)
    parser.add_argument("--tokens-per-month", type=int)


def main(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get("SPARSEGATE_URL") or DEFAULT_URL
    key = args.admin_key or os.environ.get("SPARSEGATE_ADMIN_KEY")
    if not key:
        print("sparsegate admin: give an admin key (--admin-key or SPARSEGATE_ADMIN_KEY)", file=sys.stderr)
        return 2
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30.0) as client:
        return run_admin(args, client)
