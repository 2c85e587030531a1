"""CLI commands for keys: `pdp keys rotate|list|prune|retire` (service-token signing keys) and
`pdp bundle keygen|sign` (bundle signing keys and detached signatures)."""

from __future__ import annotations

import argparse
import datetime
import importlib
import sys
from pathlib import Path

from pdp.clock import system_clock
from pdp.errors import PdpError
from pdp.security.keys import KeyConfig, KeyStore
from pdp.security.signing import SignatureFile, generate_bundle_key, sign_digest, valid_key_id

__all__ = ["register", "register_bundle_signing"]


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _store(args: argparse.Namespace) -> KeyStore:
    config = KeyConfig(
        dir=args.dir,
        algorithm=getattr(args, "algorithm", "ES256"),
        max_token_ttl=getattr(args, "max_token_ttl", 300.0),
        leeway=getattr(args, "leeway", 30.0),
    )
    return KeyStore(config, clock=system_clock)


def _fail(prog: str, exc: Exception) -> int:
    print(f"pdp {prog}: error: {exc}", file=sys.stderr)
    return 1


def _rotate(args: argparse.Namespace) -> int:
    try:
        store = _store(args)
        had_key = any(i.status == "active" for i in store.key_infos())
        kid = store.rotate() if had_key else store.ensure_active()
    except (PdpError, OSError, ValueError) as exc:
        return _fail("keys rotate", exc)
    print(f"active key: {kid}" if had_key else f"created first key: {kid}")
    return 0


def _list(args: argparse.Namespace) -> int:
    try:
        infos = _store(args).key_infos()
    except (PdpError, OSError, ValueError) as exc:
        return _fail("keys list", exc)
    print(f"{'KID':<18} {'ALG':<6} {'STATUS':<9} {'CREATED':<21} {'VERIFIES UNTIL':<21}")
    for i in infos:
        until = "-" if i.status == "active" else _when(i.not_used_after)
        print(f"{i.kid:<18} {i.alg:<6} {i.status:<9} {_when(i.created_at):<21} {until:<21}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    try:
        retired = _store(args).prune()
    except (PdpError, OSError, ValueError) as exc:
        return _fail("keys prune", exc)
    for kid in retired:
        print(f"retired: {kid}")
    if not retired:
        print("nothing to retire")
    return 0


def _retire(args: argparse.Namespace) -> int:
    try:
        _store(args).retire(args.kid)
    except (PdpError, OSError, ValueError) as exc:
        return _fail("keys retire", exc)
    print(f"retired now: {args.kid} (its tokens no longer verify)")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `pdp keys rotate|list|prune|retire`."""
    keys = subparsers.add_parser("keys", help="service-token signing keys")
    sub = keys.add_subparsers(dest="keys_command", required=True)

    rotate = sub.add_parser("rotate", help="make a new active signing key (or the first one)")
    rotate.add_argument("--dir", type=Path, required=True, help="the key directory")
    rotate.add_argument("--algorithm", choices=("ES256", "RS256"), default="ES256")
    rotate.add_argument(
        "--max-token-ttl", type=float, default=300.0, help="must match [keys].max_token_ttl"
    )
    rotate.add_argument("--leeway", type=float, default=30.0, help="must match [keys].leeway")
    rotate.set_defaults(func=_rotate)

    lst = sub.add_parser("list", help="show keys: active, previous (still verifies), retired")
    lst.add_argument("--dir", type=Path, required=True, help="the key directory")
    lst.set_defaults(func=_list)

    prune = sub.add_parser("prune", help="retire previous keys whose tokens have all expired")
    prune.add_argument("--dir", type=Path, required=True, help="the key directory")
    prune.set_defaults(func=_prune)

    retire = sub.add_parser("retire", help="retire a previous key now (compromised key)")
    retire.add_argument("kid", help="the key id, from `pdp keys list`")
    retire.add_argument("--dir", type=Path, required=True, help="the key directory")
    retire.set_defaults(func=_retire)


def _keygen(args: argparse.Namespace) -> int:
    prefix = str(args.out)
    private, public = Path(prefix + ".key"), Path(prefix + ".pub")
    try:
        fingerprint = generate_bundle_key(private, public)
    except PdpError as exc:
        return _fail("bundle keygen", exc)
    print(f"private key: {private} (keep secret, mode 0600)")
    print(f"public key:  {public} (add to [bundles.trusted_keys])")
    print(f"fingerprint: {fingerprint}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    try:  # imported here: only signing needs the policy package
        load_bundle = importlib.import_module("pdp.policy").load_bundle
    except (ImportError, AttributeError) as exc:
        return _fail("bundle sign", RuntimeError(f"policy package unavailable: {exc}"))

    out = args.out or Path(str(args.bundle) + ".sig")
    if not valid_key_id(args.key_id):
        return _fail("bundle sign", ValueError(f"bad key id {args.key_id!r}"))
    try:
        digest = str(load_bundle(args.bundle.read_bytes(), source=str(args.bundle)).digest)
        signature = sign_digest(digest, args.key)
        out.write_bytes(SignatureFile(signature, args.key_id, digest).to_bytes())
    except (PdpError, OSError, ValueError) as exc:
        return _fail("bundle sign", exc)
    print(f"signed {args.bundle} (digest {digest}) with key id {args.key_id}: {out}")
    return 0


def register_bundle_signing(
    bundle_subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add `pdp bundle keygen --out PREFIX` and `pdp bundle sign BUNDLE --key KEY --key-id ID`."""
    keygen = bundle_subparsers.add_parser("keygen", help="create an Ed25519 bundle signing key")
    keygen.add_argument("--out", type=Path, required=True, help="writes PREFIX.key and PREFIX.pub")
    keygen.set_defaults(func=_keygen)

    sign = bundle_subparsers.add_parser("sign", help="write a detached signature of a bundle")
    sign.add_argument("bundle", type=Path, help="the bundle file (YAML or JSON)")
    sign.add_argument("--key", type=Path, required=True, help="the private key (PREFIX.key)")
    sign.add_argument("--key-id", required=True, help="the key id the server trusts it under")
    sign.add_argument("--out", type=Path, help="signature file (default: BUNDLE.sig)")
    sign.set_defaults(func=_sign)
