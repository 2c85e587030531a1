"""Bundle loader and validator: YAML or JSON bytes in, a validated :class:`Bundle` out.

Raises only :class:`pdp.errors.BundleError` (``BundleTooLargeError`` for limits), whatever it gets.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any, NoReturn

import yaml

from pdp.errors import BundleError, BundleTooLargeError
from pdp.policy import conditions
from pdp.policy._json import Key as _Key
from pdp.policy._json import canonical_rules as _canonical_rules
from pdp.policy._json import pairs_to_dict as _json_pairs  # refuses a repeated key
from pdp.policy._json import quick_rule as _quick_rule
from pdp.policy._json import rule_types as _rule_types
from pdp.policy.model import Bundle, Effect, Limits, ResourceMatch, Rule, SubjectMatch
from pdp.policy.patterns import glob_error, pause_gc

__all__ = ["canonical_bytes", "load_bundle", "load_bundle_file"]

_DEFAULT_LIMITS = Limits()
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_RULE_KEYS = frozenset(("id", "effect", "description", "subjects", "actions", "resources", "when"))
_RESOURCE_KEYS = frozenset(("type", "ids"))
_NOTHING: dict[str, Any] = {}  # read only: what a rule without "subjects" or "resources" means
_MEMO_LIMIT = 16_384  # distinct parts of each kind remembered while loading one bundle


class _Refused(Exception):
    """A YAML construct the loader refuses (alias, anchor, merge key, duplicate key)."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


class _Loader(yaml.SafeLoader):
    """Safe YAML without anchors, aliases, merge keys, duplicate keys or timestamps."""

    # Dates stay strings: a bundle's values are JSON-like, and `revision: 2024-06-01` is text.
    yaml_implicit_resolvers = {  # noqa: RUF012
        first: [(tag, rx) for tag, rx in resolvers if tag != _TIMESTAMP]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.lines: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise _Refused("YAML aliases are not allowed (they can expand without bound)", line)
        if getattr(event, "anchor", None) is not None:
            raise _Refused("YAML anchors are not allowed", line)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    line = key_node.start_mark.line + 1
                    raise _Refused("YAML merge keys ('<<') are not allowed", line)
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    raise _Refused(
                        f"keys must be strings, got {key!r}", key_node.start_mark.line + 1
                    )
                if key in seen:
                    raise _Refused(f"duplicate key {key!r}", key_node.start_mark.line + 1)
                seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        obj = super().construct_object(node, deep)
        if isinstance(obj, dict | list):
            self.lines[id(obj)] = node.start_mark.line + 1
        return obj


# The fast path for a rule whose parts were all validated before (see _json.c, quick_rule).
_rule_types(Rule, ResourceMatch, Effect.ALLOW, Effect.DENY, _RULE_KEYS, _RESOURCE_KEYS, _NOTHING)


def _json_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number a bundle may hold")


def _text(data: bytes | bytearray | str, source: str, limits: Limits) -> str:
    if isinstance(data, str):
        size = len(data) if len(data) > limits.max_bytes else len(data.encode("utf-8", "replace"))
    elif isinstance(data, bytes | bytearray):
        size = len(data)
    else:
        raise BundleError(f"expected bytes or text, got {type(data).__name__}", source=source)
    if size > limits.max_bytes:
        raise BundleTooLargeError(
            f"bundle is {size} bytes, more than the limit of {limits.max_bytes}", source=source
        )
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    try:
        return bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BundleError(
            f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=source
        ) from None


def _parse(text: str, source: str) -> tuple[Any, dict[int, int]]:
    json_error: BundleError | None = None
    if text.lstrip()[:1] in ("{", "["):
        try:
            parsed = json.loads(text, object_pairs_hook=_json_pairs, parse_constant=_json_constant)
            return parsed, {}
        except json.JSONDecodeError as exc:  # maybe YAML flow style: try that, report this
            json_error = BundleError(f"invalid JSON: {exc.msg}", source=source, line=exc.lineno)
        except (ValueError, RecursionError) as exc:
            raise BundleError(
                f"invalid JSON: {exc or 'nested too deeply'}", source=source
            ) from None
    try:
        return _parse_yaml(text, source)
    except BundleError:
        if json_error is not None:
            raise json_error from None
        raise


_DECODER = json.JSONDecoder(object_pairs_hook=_json_pairs, parse_constant=_json_constant)
_SPACE = re.compile(r"[ \t\n\r]*")  # what JSON calls whitespace
_NEXT = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*").match  # after a list item


def _skip_space(text: str, i: int) -> int:
    found = _SPACE.match(text, i)
    return found.end() if found is not None else i


class _NotStreamed(Exception):
    """The document is not a JSON bundle the streaming path takes; the full path decides."""


def _stream_json(text: str, source: str, limits: Limits) -> Bundle | None:
    """Load a JSON bundle whose "rules" come last, rule by rule, or return None.

    Same parser, same validation, same bundle as the full path, but one rule's parsed
    mapping is alive at a time instead of the whole document (at 100,000 rules: 150 MB
    less at the peak, and the rules are not scattered among freed parse objects). Any fault
    returns None, and the full path then finds and reports it exactly as it always has.
    """
    scan: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
    pos = _skip_space(text, 0)
    if text[pos : pos + 1] != "{":
        return None

    def skip(i: int, expected: str) -> int:
        i = _skip_space(text, i)
        if text[i : i + 1] != expected:
            raise _NotStreamed
        return _skip_space(text, i + 1)

    def rules(i: int) -> Iterator[Any]:
        nonlocal pos
        count = 0
        i = _skip_space(text, i + 1)
        if text[i : i + 1] != "]":
            while True:
                value, i = scan(text, i)
                count += 1
                if count > limits.max_rules:
                    raise _NotStreamed
                yield value
                after = _NEXT(text, i)
                if after is None:
                    raise _NotStreamed
                if after.group(1) == "]":
                    i = after.start(1)
                    break
                i = after.end()
        pos = skip(i + 1, "}")
        if pos != len(text):
            raise _NotStreamed

    try:
        top: dict[str, Any] = {}
        pos = _skip_space(text, pos + 1)
        while True:
            if text[pos : pos + 1] != '"':
                return None
            key, pos = scan(text, pos)
            pos = skip(pos, ":")
            if key in top:
                return None
            if key == "rules":
                if text[pos : pos + 1] != "[":
                    return None
                top["rules"] = []  # the header checks see a list; the rules stream below
                validator = _Validator(source, limits, {})
                name, revision = validator.header(top)
                return validator.build(name, revision, rules(pos), None)
            top[key], pos = scan(text, pos)
            pos = _skip_space(text, pos)
            if text[pos : pos + 1] != ",":
                return None
            pos = _skip_space(text, pos + 1)
    except (_NotStreamed, BundleError, ValueError, StopIteration, RecursionError):
        return None


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[int, int]]:
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # the reader already refuses some characters here
        return loader.get_single_data(), loader.lines
    except _Refused as exc:
        raise BundleError(exc.message, source=source, line=exc.line) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise BundleError(
            f"invalid YAML: {exc.problem or exc.context}", source=source, line=line
        ) from None
    except RecursionError:
        raise BundleError("invalid YAML: nested too deeply", source=source) from None
    except Exception as exc:  # the YAML library's own odd corners (e.g. reader errors)
        raise BundleError(f"invalid YAML: {type(exc).__name__}: {exc}", source=source) from None
    finally:
        if loader is not None:
            loader.dispose()


class _Validator:
    """Walks the parsed document, raising BundleError at the first fault."""

    def __init__(self, source: str, limits: Limits, lines: dict[int, int]) -> None:
        self.source = source
        self.limits = limits
        self.lines = lines
        self.segments: dict[str, tuple[str, ...]] = {}
        self.roles: dict[str, tuple[str, ...]] = {}
        # Rule parts spelled alike in many rules (actions, subjects, ids, conditions) are
        # validated once and then shared by every rule that repeats them: keyed by kind and
        # _Key (equal when the parts' repr()s would be, which tells 1, 1.0, True and "1"
        # apart). Only parts that passed go in, so every fault is still found (and named) by
        # the full path.
        self.actions_seen: dict[_Key, tuple[str, ...]] = {}
        self.subjects_seen: dict[_Key, SubjectMatch] = {}
        self.ids_seen: dict[_Key, tuple[str, ...]] = {}
        self.when_seen: dict[_Key, tuple[dict[str, Any], bool, bool]] = {}
        self.memo: dict[str, dict[_Key, Any]] = {
            "actions": self.actions_seen,
            "subjects": self.subjects_seen,
            "ids": self.ids_seen,
            "when": self.when_seen,
        }
        # One string object per distinct resource type (many rules name the same type);
        # unlike sys.intern, nothing of it outlives the load.
        self.types_seen: dict[str, str] = {}

    def fail(
        self, where: str, message: str, node: object = None, *, too_large: bool = False
    ) -> NoReturn:
        cls = BundleTooLargeError if too_large else BundleError
        raise cls(message, source=self.source, location=where, line=self.lines.get(id(node)))

    def mapping(
        self, value: Any, where: str, allowed: tuple[str, ...], node: object
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where, f"expected a mapping, got {kind_of(value)}", node)
        for key in value:
            if key not in allowed:
                self.fail(where, f'unknown key "{key}" (allowed: {", ".join(allowed)})', value)
        return value

    def string(self, value: Any, where: str, node: object, *, allow_int: bool = False) -> str:
        if allow_int and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str) or value == "":
            self.fail(where, f"expected a non-empty string, got {kind_of(value)}", node)
        return value

    def strings(self, value: Any, where: str, node: object, *, globs: bool) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.fail(where, f"expected a non-empty list of strings, got {kind_of(value)}", node)
        out = []
        for i, item in enumerate(value):
            item = self.string(item, f"{where}[{i}]", value)
            if globs and (problem := glob_error(item)) is not None:
                self.fail(f"{where}[{i}]", problem, value)
            out.append(item)
        return tuple(out)

    def bundle(self, doc: Any) -> Bundle:
        name, revision = self.header(doc)
        return self.build(name, revision, doc["rules"], doc["rules"])

    def header(self, doc: Any) -> tuple[str, str]:
        """Validate all but the rules (checking that they are a list within the limit);
        return the bundle's name and revision."""
        doc = self.mapping(doc, "bundle", ("metadata", "segments", "roles", "rules"), doc)
        if "metadata" not in doc or "rules" not in doc:
            self.fail("bundle", 'missing key "metadata" or "rules"', doc)
        meta = self.mapping(doc["metadata"], "metadata", ("name", "revision", "description"), doc)
        name = self.string(meta.get("name"), "metadata.name", meta)
        revision = self.string(meta.get("revision"), "metadata.revision", meta, allow_int=True)
        self.segments = self.segment_table(doc.get("segments", {}))
        self.roles = self.role_table(doc.get("roles", {}))
        raw_rules = doc["rules"]
        if not isinstance(raw_rules, list):
            self.fail("rules", f"expected a list, got {kind_of(raw_rules)}", doc)
        if len(raw_rules) > self.limits.max_rules:
            self.fail(
                "rules",
                f"{len(raw_rules)} rules, more than the limit of {self.limits.max_rules}",
                raw_rules,
                too_large=True,
            )
        return name, revision

    def build(self, name: str, revision: str, raw_rules: Iterable[Any], parent: object) -> Bundle:
        """Validate the rules (after the metadata, segments and roles) and make the bundle."""
        seen: dict[str, int] = {}
        rules = []
        flags = conditions.Flags()
        quick = self.quick_rule
        for i, raw in enumerate(raw_rules):
            rule = quick(raw, flags) or self.rule(raw, i, parent, flags)
            if rule.id in seen:
                self.fail(
                    f'rules[{i}] (id "{rule.id}").id',
                    f'duplicate rule id "{rule.id}" (first at rules[{seen[rule.id]}])',
                    raw,
                )
            seen[rule.id] = i
            rules.append(rule)
        for memo in self.memo.values():
            memo.clear()
        self.types_seen.clear()
        frozen = tuple(rules)
        del rules
        # The canonical form is hashed, not kept (it is as big as the bundle again):
        # Bundle.canonical_bytes() builds it anew when asked.
        digest = _digest(name, revision, self.segments, self.roles, frozen)
        return Bundle(
            name=name,
            revision=revision,
            segments=self.segments,
            roles=self.roles,
            rules=frozen,
            digest=digest,
            reads_clock=flags.clock,
            reads_peer=flags.peer,
        )

    def share(self, rtype: str) -> str:
        return self.types_seen.setdefault(rtype, rtype)

    def remember(self, kind: str, value: Any, validated: Any) -> Any:
        """The validated form of a rule part: the one met before when there is one, else
        ``validated``, now remembered (within a limit)."""
        memo = self.memo[kind]
        try:
            key = _Key(value)
        except (ValueError, RecursionError):  # not a JSON value, or absurdly deep
            return validated
        found = memo.get(key)
        if found is not None:
            return found
        if len(memo) < _MEMO_LIMIT:
            memo[key] = validated
        return validated

    def quick_rule(self, raw: Any, flags: conditions.Flags) -> Rule | None:
        """The rule when all its repeated parts were validated before; None sends it down
        the full path (:meth:`rule`), which also finds and names any fault. In C
        (_json.c): per rule, it was half the time a 100,000-rule bundle took to load."""
        return _quick_rule(
            raw, flags, self.actions_seen, self.subjects_seen, self.ids_seen, self.when_seen,
            self.types_seen,
        )

    def segment_table(self, value: Any) -> dict[str, tuple[str, ...]]:
        if not isinstance(value, dict):
            self.fail("segments", f"expected a mapping, got {kind_of(value)}", value)
        out = {}
        for name, cidrs in value.items():
            where = f'segments["{name}"]'
            nets = []
            for i, text in enumerate(self.strings(cidrs, where, value, globs=False)):
                try:
                    nets.append(str(ipaddress.ip_network(text, strict=True)))
                except ValueError as exc:
                    self.fail(f"{where}[{i}]", f"bad CIDR {text!r}: {exc}", cidrs)
            out[name] = tuple(nets)
        return out

    def role_table(self, value: Any) -> dict[str, tuple[str, ...]]:
        if not isinstance(value, dict):
            self.fail("roles", f"expected a mapping, got {kind_of(value)}", value)
        return {
            name: self.strings(m, f'roles["{name}"]', value, globs=True)
            for name, m in value.items()
        }

    def rule(self, raw: Any, i: int, parent: object, flags: conditions.Flags) -> Rule:
        where = f"rules[{i}]"
        if isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"]:
            where = f'rules[{i}] (id "{raw["id"]}")'
        keys = ("id", "effect", "description", "subjects", "actions", "resources", "when")
        raw = self.mapping(raw, where, keys, parent)
        rule_id = self.string(raw.get("id"), f"{where}.id", raw)
        effect_text = raw.get("effect")
        if effect_text not in ("allow", "deny"):
            self.fail(f"{where}.effect", f'expected "allow" or "deny", got {effect_text!r}', raw)
        description = raw.get("description", "")
        if not isinstance(description, str):
            self.fail(f"{where}.description", f"expected a string, got {kind_of(description)}", raw)
        if "actions" not in raw:
            self.fail(where, 'missing key "actions" (use ["*"] for every action)', raw)
        actions = self.strings(raw["actions"], f"{where}.actions", raw, globs=True)
        subj = self.mapping(
            raw.get("subjects", {}), f"{where}.subjects", ("type", "ids", "roles"), raw
        )
        roles: tuple[str, ...] = ()
        if "roles" in subj:
            roles = self.strings(subj["roles"], f"{where}.subjects.roles", subj, globs=False)
            for j, role in enumerate(roles):
                if role not in self.roles:
                    self.fail(f"{where}.subjects.roles[{j}]", f'unknown role "{role}"', subj)
        subjects = SubjectMatch(
            type=self.glob(subj.get("type", "*"), f"{where}.subjects.type", subj),
            ids=self.strings(subj["ids"], f"{where}.subjects.ids", subj, globs=True)
            if "ids" in subj
            else (),
            roles=roles,
        )
        res = self.mapping(raw.get("resources", {}), f"{where}.resources", ("type", "ids"), raw)
        resources = ResourceMatch(
            type=self.share(self.glob(res.get("type", "*"), f"{where}.resources.type", res)),
            ids=self.strings(res["ids"], f"{where}.resources.ids", res, globs=True)
            if "ids" in res
            else (),
        )
        when = None
        if "when" in raw:
            local = conditions.Flags()
            checker = conditions.Checker(
                where=f"{where}.when",
                segments=self.segments,
                max_depth=self.limits.max_depth,
                flags=local,
                fail=self.fail,
            )
            when = checker.check(raw["when"], f"{where}.when", raw, 1)
            flags.clock = flags.clock or local.clock
            flags.peer = flags.peer or local.peer
            when = self.remember("when", raw["when"], (when, local.clock, local.peer))[0]
        # Valid: from now on shared with every rule that spells these parts alike.
        return Rule(
            id=rule_id,
            effect=Effect.ALLOW if effect_text == "allow" else Effect.DENY,
            actions=self.remember("actions", raw["actions"], actions),
            subjects=self.remember("subjects", raw.get("subjects", _NOTHING), subjects),
            resources=ResourceMatch(
                type=resources.type,
                ids=self.remember("ids", res["ids"], resources.ids) if "ids" in res else (),
            ),
            when=when,
            description=description,
        )

    def glob(self, value: Any, where: str, node: object) -> str:
        text = self.string(value, where, node)
        if (problem := glob_error(text)) is not None:
            self.fail(where, problem, node)
        return text


def kind_of(value: Any) -> str:
    """How an error message names an unexpected value: 'a mapping', 'a list', 'nothing'..."""
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value)[:60]
    return type(value).__name__


_dumps = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def canonical_bytes(
    name: str,
    revision: str,
    segments: Mapping[str, tuple[str, ...]],
    roles: Mapping[str, tuple[str, ...]],
    rules: tuple[Rule, ...] | list[Rule],
) -> bytes:
    """The canonical JSON form a bundle's digest is taken over.

    Byte for byte ``json.dumps(doc, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)`` of the document with every field spelled out.
    """
    return "".join(_canonical_parts(name, revision, segments, roles, rules)).encode("utf-8")


def _digest(
    name: str,
    revision: str,
    segments: Mapping[str, tuple[str, ...]],
    roles: Mapping[str, tuple[str, ...]],
    rules: tuple[Rule, ...],
) -> str:
    """sha256 hex of :func:`canonical_bytes`, hashed a few thousand rules at a time."""
    digest = hashlib.sha256()
    for text in _canonical_parts(name, revision, segments, roles, rules):
        digest.update(text.encode("utf-8"))
    return digest.hexdigest()


def _canonical_parts(
    name: str,
    revision: str,
    segments: Mapping[str, tuple[str, ...]],
    roles: Mapping[str, tuple[str, ...]],
    rules: tuple[Rule, ...] | list[Rule],
) -> Iterator[str]:
    """The canonical form in pieces, up to 4,096 rules each (_json.c, canonical_rules): parts
    that rules share (the same actions, subjects, ids or condition object) are encoded once."""
    parts: dict[int, str] = {}  # id(shared part) -> its JSON; the parts outlive this call

    def make(value: Any, kind: int) -> str:
        if kind == 0:  # actions or ids
            plain: Any = list(value)
        elif kind == 1:
            plain = {"type": value.type, "ids": list(value.ids), "roles": list(value.roles)}
        else:
            plain = conditions.canonical(value)
        text: str = _dumps(plain)
        parts[id(value)] = text
        return text

    yield '{"metadata":' + _dumps({"name": name, "revision": revision})
    yield ',"roles":' + _dumps({k: list(v) for k, v in roles.items()}) + ',"rules":['
    for start in range(0, len(rules), 4096):
        yield _canonical_rules(rules, start, start + 4096, parts, make, encode_basestring)
    yield '],"segments":' + _dumps({k: list(v) for k, v in segments.items()}) + "}"


def load_bundle(
    data: bytes | str, *, source: str = "<bundle>", limits: Limits = _DEFAULT_LIMITS
) -> Bundle:
    """Parse and validate a YAML or JSON bundle (detected by its first character).

    Raises BundleTooLargeError past a limit and BundleError for anything else that is wrong,
    naming ``source``, the rule (index and id) and the field.
    """
    try:
        with pause_gc():
            text = _text(data, source, limits)
            bundle = _stream_json(text, source, limits)
            if bundle is not None:
                return bundle
            document, lines = _parse(text, source)
            return _Validator(source, limits, lines).bundle(document)
    except RecursionError:
        raise BundleError("bundle is nested too deeply", source=source) from None


def load_bundle_file(path: str | os.PathLike[str], *, limits: Limits = _DEFAULT_LIMITS) -> Bundle:
    """Read and load the bundle at ``path``; raises BundleError (also when it cannot be read)."""
    source = os.fspath(path)
    try:
        with Path(source).open("rb") as fh:
            data = fh.read(limits.max_bytes + 1)
    except OSError as exc:
        raise BundleError(f"cannot read bundle: {exc.strerror or exc}", source=source) from None
    return load_bundle(data, source=source, limits=limits)
