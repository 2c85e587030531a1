"""`pdp certs init-ca | issue | renew | revoke | crl | status`: the CA on the command line.

Thin argument handling over pdp.security.pki; every failure prints one line to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import get_args

from pdp.security import pki

__all__ = ["register"]

Handler = Callable[[argparse.Namespace], int]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``certs`` command group to the `pdp` command line."""
    certs = subparsers.add_parser("certs", help="manage the CA, certificates and the CRL")
    sub = certs.add_subparsers(dest="certs_command", required=True, metavar="COMMAND")

    p = sub.add_parser("init-ca", help="create a new CA directory")
    _ca_dir(p)
    p.add_argument("--common-name", "--cn", default="pdp CA", help="the CA's subject CN")
    p.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    _key_type(p)
    _passphrase(p)
    p.set_defaults(func=_wrap(_init_ca))

    p = sub.add_parser("issue", help="issue a server and/or client certificate")
    _ca_dir(p)
    p.add_argument("--out", required=True, type=Path,
                   help="output prefix: writes PREFIX.key (0600) and PREFIX.crt")
    p.add_argument("--common-name", "--cn", required=True, help="subject CN")
    p.add_argument("--spiffe-id", help="URI SAN, e.g. spiffe://example.org/svc/search")
    p.add_argument("--dns", action="append", default=[], help="DNS SAN (repeatable)")
    p.add_argument("--ip", action="append", default=[], help="IP SAN (repeatable)")
    p.add_argument("--server", action="store_true", help="for server authentication")
    p.add_argument("--client", action="store_true",
                   help="for client authentication (the default if --server is not given)")
    p.add_argument("--days", type=int, default=90, help="validity in days (default 90)")
    _key_type(p)
    _passphrase(p)
    p.set_defaults(func=_wrap(_issue))

    p = sub.add_parser("renew", help="re-issue a certificate: same names, new key and serial")
    _ca_dir(p)
    p.add_argument("cert", type=Path, help="the certificate to renew (rewritten in place)")
    p.add_argument("--key", type=Path, help="its key file (default: CERT with suffix .key)")
    p.add_argument("--days", type=int, help="validity in days (default: the old lifetime)")
    p.add_argument("--key-type", choices=get_args(pki.KeyType),
                   help="key type (default: as before)")
    _passphrase(p)
    p.set_defaults(func=_wrap(_renew))

    p = sub.add_parser("revoke", help="revoke a certificate and publish a new CRL")
    _ca_dir(p)
    p.add_argument("target", help="a serial (0x-hex or decimal) or a certificate file")
    p.add_argument("--reason", choices=list(pki.REASONS), default="unspecified")
    p.add_argument("--no-crl", action="store_true", help="only record it; publish later")
    p.add_argument("--crl-days", type=int, default=7, help="CRL validity in days (default 7)")
    _passphrase(p)
    p.set_defaults(func=_wrap(_revoke))

    p = sub.add_parser("crl", help="sign and publish CA_DIR/crl.pem")
    _ca_dir(p)
    p.add_argument("--days", type=int, default=7, help="CRL validity in days (default 7)")
    _passphrase(p)
    p.set_defaults(func=_wrap(_crl))

    p = sub.add_parser("status", help="show certificates: subject, SPIFFE ID, days left")
    p.add_argument("paths", nargs="*", type=Path, help="certificate files (default: the CA)")
    p.add_argument("--ca-dir", type=Path, help="the CA directory (lists all it issued)")
    p.set_defaults(func=_wrap(_status))


def _ca_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca-dir", required=True, type=Path, help="the CA directory")


def _key_type(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key-type", choices=get_args(pki.KeyType), default="ec-p256",
                   help="ec-p256 (default), rsa-2048 or rsa-3072")


def _passphrase(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--passphrase-file", type=Path,
                   help="file whose first line is the CA key passphrase")
    g.add_argument("--passphrase-env", metavar="VAR",
                   help="environment variable holding the CA key passphrase")


def _pass(args: argparse.Namespace) -> bytes | None:
    return pki.load_passphrase(file=args.passphrase_file, env=args.passphrase_env)


def _wrap(fn: Handler) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except pki.PKIError as exc:
            print(f"pdp certs: {exc}", file=sys.stderr)
        except OSError as exc:
            print(f"pdp certs: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 1
    return handler


def _init_ca(args: argparse.Namespace) -> int:
    path = pki.init_ca(args.ca_dir, common_name=args.common_name, days=args.days,
                       key_type=args.key_type, passphrase=_pass(args))
    print(f"CA created: {path} (key {args.ca_dir / 'ca.key'}, CRL {args.ca_dir / 'crl.pem'})")
    return 0


def _issue(args: argparse.Namespace) -> int:
    issued = pki.issue(
        args.ca_dir, args.out, common_name=args.common_name, spiffe_id=args.spiffe_id,
        dns=args.dns, ips=args.ip, server=args.server, client=args.client or not args.server,
        days=args.days, key_type=args.key_type, passphrase=_pass(args))
    print(f"issued {issued.cert_path} (key {issued.key_path}), serial {issued.serial:#x}")
    return 0


def _renew(args: argparse.Namespace) -> int:
    issued = pki.renew(args.ca_dir, args.cert, key_path=args.key, days=args.days,
                       key_type=args.key_type, passphrase=_pass(args))
    print(f"renewed {issued.cert_path} (key {issued.key_path}), new serial {issued.serial:#x}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    target: int | Path
    text = args.target
    if Path(text).is_file():
        target = Path(text)
    else:
        try:
            target = int(text, 16) if text.lower().startswith("0x") else int(text)
        except ValueError:
            print(f"pdp certs: {text!r} is neither a serial nor a certificate file",
                  file=sys.stderr)
            return 2
    serial = pki.revoke(args.ca_dir, target, reason=args.reason)
    print(f"revoked serial {serial:#x} ({args.reason})")
    if not args.no_crl:
        crl = pki.make_crl(args.ca_dir, days=args.crl_days, passphrase=_pass(args))
        print(f"published {crl}")
    return 0


def _crl(args: argparse.Namespace) -> int:
    crl = pki.make_crl(args.ca_dir, days=args.days, passphrase=_pass(args))
    print(f"published {crl}")
    return 0


def _status(args: argparse.Namespace) -> int:
    if args.paths:
        rows = pki.status(args.paths, ca_dir=args.ca_dir, clock=time.time)
    elif args.ca_dir is not None:
        rows = pki.status(args.ca_dir, clock=time.time)
    else:
        print("pdp certs: give certificate files or --ca-dir", file=sys.stderr)
        return 2
    print(f"{'DAYS LEFT':>9}  {'REVOKED':<7}  {'SERIAL':<42}  {'SPIFFE ID':<32}  SUBJECT")
    for r in rows:
        print(f"{r.days_left:>9.1f}  {'yes' if r.revoked else 'no':<7}  {r.serial:<#42x}  "
              f"{r.spiffe_id or '-':<32}  {r.subject}")
    return 0
