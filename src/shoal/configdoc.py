"""``docs/config.md``, generated from the config classes so that it cannot drift.

Every key of the agent's and root's file (``shoal.config.Config``) and of the webhook's
(``shoal.webhook.config.WebhookConfig``) is listed with its type, its default and its
meaning. The meaning is the ``#:`` comment above the field in the class (the same
comment a reader of the code sees); a field without one stops the generator, so a new
key cannot arrive undocumented. ``tests/test_configdoc.py`` fails when the committed
file differs from what this module writes; ``make docs`` rewrites it.

    python -m shoal.configdoc > docs/config.md
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from collections.abc import Iterator
from typing import Any

import msgspec
import msgspec.inspect as mi

from shoal.config import Config, GiB, MiB
from shoal.webhook.config import WebhookConfig

_FIELD = re.compile(r"^\s+(\w+)\s*:")
#: a YAML scalar that needs no quotes
_PLAIN = re.compile(r"[A-Za-z0-9_./-][A-Za-z0-9_./:-]*")

HEADER = """\
# Configuration reference

Generated from the config classes (`src/shoal/config.py`,
`src/shoal/webhook/config.py`) by `make docs`; do not edit by hand:
`tests/test_configdoc.py` fails when this file and the classes disagree.

Every key is optional. An unknown key or a bad value stops the process at start with
one line naming the key (`shoal agent: config: unknown key DeployConfig.logAuditMod`).
Sizes are bytes, times seconds, unless a key says otherwise.
"""

AGENT_INTRO = """\
## Agent and root: `shoal agent --config FILE`, `shoal root --config FILE`

One file format for both roles; `DeployConfig.mode` says which one the file is for.
A root uses `ProxyConfig.port` for its control API (agents' joins, progress reports,
requests for parents, `GET /healthz`), `P2PConfig.p2pPort` to serve pieces,
`ExporterConfig` for `/metrics`, `CacheConfig` for its store and `UpstreamConfig` to
reach the origins; it ignores `P2PConfig.roots`, `AcceleratorConfig` and the mirror's
keys. Flags override the file: `--listen` (`ProxyConfig.listen` and
`P2PConfig.listen`), `--proxy-port`, `--p2p-port`, `--exporter-port`.
"""

WEBHOOK_INTRO = """\
## Webhook: `shoal webhook --config FILE`

The webhook runs as its own Deployment with its own file; it reads none of the agent's
keys and the agent none of these.
"""


class UndocumentedKeyError(Exception):
    """A config field has no ``#:`` comment: document it where it is declared."""


def field_comments(cls: type) -> dict[str, str]:
    """The ``#:`` comment block above each field of ``cls``, joined into one line."""
    out: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = _FIELD.match(line)
        if match and pending:
            out[match.group(1)] = " ".join(pending)
        if stripped:
            pending = []
    return out


def type_text(t: mi.Type) -> str:
    """A type as a user writes the value in YAML."""
    if isinstance(t, mi.BoolType):
        return "bool"
    if isinstance(t, mi.IntType | mi.FloatType):
        word = "integer" if isinstance(t, mi.IntType) else "number"
        bounds = [
            f"{op} {_num(v)}"
            for op, v in ((">", t.gt), ("≥", t.ge), ("<", t.lt), ("≤", t.le))
            if v is not None
        ]
        return f"{word} {', '.join(bounds)}" if bounds else word
    if isinstance(t, mi.StrType):
        return "string"
    if isinstance(t, mi.LiteralType):
        return " | ".join(f"`{v}`" for v in t.values)
    if isinstance(t, mi.UnionType):
        return " or ".join(type_text(x) for x in t.types)
    if isinstance(t, mi.ListType | mi.TupleType | mi.VarTupleType | mi.SetType):
        item = t.item_type if not isinstance(t, mi.TupleType) else t.item_types[0]
        if isinstance(item, mi.StructType):
            return "list of mappings (below)"
        return f"list of {type_text(item)}"
    return type(t).__name__.removesuffix("Type").lower()


def default_text(field: mi.Field) -> str:
    if field.required:
        return "(required)"
    value: Any = field.default
    if value is msgspec.NODEFAULT:
        value = field.default_factory()
    text = f"`{_yaml(value)}`"
    if isinstance(value, int) and not isinstance(value, bool) and value >= MiB and not value % MiB:
        text += f" ({value // GiB} GiB)" if not value % GiB else f" ({value // MiB} MiB)"
    return text


def _yaml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if _PLAIN.fullmatch(value) else json.dumps(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, float):
        return _num(value)
    return str(value)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _cell(text: str) -> str:
    """Markdown for one table cell: the comments' ``literal`` is `literal` here."""
    return text.replace("``", "`").replace("|", "\\|").replace("\n", " ")


def section(title: str, struct: mi.StructType) -> Iterator[str]:
    """One table: every key of ``struct``; then a table for each list of mappings."""
    cls = struct.cls
    comments = field_comments(cls)
    yield f"### `{title}`"
    yield ""
    doc = inspect.getdoc(cls)
    if doc:
        yield _cell(" ".join(doc.split()))
        yield ""
    yield "| key | type | default | meaning |"
    yield "|---|---|---|---|"
    nested: list[tuple[str, mi.StructType]] = []
    missing = []
    for f in struct.fields:
        meaning = comments.get(f.name)
        if meaning is None:
            missing.append(f.name)
            continue
        yield (
            f"| `{f.encode_name}` | {_cell(type_text(f.type))} | {_cell(default_text(f))} "
            f"| {_cell(meaning)} |"
        )
        item = getattr(f.type, "item_type", None)
        if isinstance(item, mi.StructType):
            nested.append((f"{title}.{f.encode_name}[]", item))
    if missing:
        raise UndocumentedKeyError(f"{cls.__name__}: no #: comment for {', '.join(missing)}")
    yield ""
    for sub_title, sub in nested:
        yield from section(sub_title, sub)


def document(root: type, intro: str) -> Iterator[str]:
    info = mi.type_info(root)
    assert isinstance(info, mi.StructType)
    yield intro
    for f in info.fields:
        assert isinstance(f.type, mi.StructType)
        yield from section(f.encode_name, f.type)


def render() -> str:
    lines = [HEADER, *document(Config, AGENT_INTRO), *document(WebhookConfig, WEBHOOK_INTRO)]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
