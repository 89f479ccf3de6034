"""A managed block in the node's ``/etc/hosts``: ``.distributed.`` names -> 127.0.0.1.

Why a hosts file and not DNS: containerd resolves registry hosts itself, on the node,
through the node's resolver, which reads ``/etc/hosts`` first; the names must point at
*this* node's agent, which no cluster DNS record can express. The block is delimited by
marker lines and rewritten whole, so lines outside it (the node's own entries) are never
touched, and an empty list removes the block.

The file is rewritten in place rather than replaced: inside the init container it is a
bind mount of the node's file, and a rename onto a bind-mounted file fails (EBUSY).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

BEGIN = "# BEGIN shoal: .distributed. registry names served by the node's own agent"
END = "# END shoal"
LOOPBACK = "127.0.0.1"


def render_block(names: Iterable[str]) -> str:
    hosts = sorted(dict.fromkeys(n.rsplit(":", 1)[0] for n in names))
    if not hosts:
        return ""
    return "\n".join([BEGIN, *(f"{LOOPBACK} {h}" for h in hosts), END]) + "\n"


def with_block(text: str, names: Iterable[str]) -> str:
    """``text`` with shoal's block replaced by one for ``names`` (or removed if none)."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    inside = False
    for line in lines:
        stripped = line.strip()
        if stripped == BEGIN:
            inside = True
            continue
        if inside:
            if stripped == END:
                inside = False
            continue
        out.append(line)
    kept = "".join(out)
    if kept and not kept.endswith("\n"):
        kept += "\n"
    return kept + render_block(names)


def update_hosts_file(path: Path, names: Iterable[str]) -> bool:
    """Write the block into ``path`` in place; True when the file changed."""
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    wanted = with_block(current, names)
    if wanted == current:
        return False
    with path.open("r+" if path.exists() else "w", encoding="utf-8") as fh:
        fh.seek(0)
        fh.write(wanted)
        fh.truncate()
    return True
