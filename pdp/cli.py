"""The `pdp` command line: serve, run, check, bundle, certs, keys, audit, quarantine, status.

Each command group registers itself from the package that owns it; this module only
assembles them and turns a PdpError into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pdp.errors import PdpError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The full `pdp` argument parser."""
    from pdp.audit.commands import register as register_audit
    from pdp.policy.commands import register_bundle_tools
    from pdp.security.cert_commands import register as register_certs
    from pdp.security.key_commands import register as register_keys
    from pdp.security.key_commands import register_bundle_signing
    from pdp.server.commands import register as register_server
    from pdp.server.commands import register_bundle_admin

    parser = argparse.ArgumentParser(prog="pdp", description="A zero-trust policy decision point.")
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    register_server(sub)
    bundle = sub.add_parser("bundle", help="lint, test, sign, push and manage policy bundles")
    bundle_sub = bundle.add_subparsers(dest="bundle_command", required=True)
    register_bundle_tools(bundle_sub)
    register_bundle_signing(bundle_sub)
    register_bundle_admin(bundle_sub)
    register_certs(sub)
    register_keys(sub)
    register_audit(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pdp` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
    except PdpError as exc:
        print(f"pdp: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pdp: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
