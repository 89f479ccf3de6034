"""A container as the kubelet would run it, for one rendered container spec: run as
``ip netns exec NETNS python sandbox.py SPEC.json``.

In a new mount and UTS namespace: the hostname, a root filesystem that is this
machine's own (an overlay over ``/``, so nothing written lands on the machine), the
Pod's volumes bind-mounted at the rendered ``mountPath``s (read-only where rendered so),
the Pod's ``/etc/hosts``, the root made read-only for ``readOnlyRootFilesystem``; then
``chroot`` and ``exec`` of the rendered command through ``setpriv`` with the rendered
user, group and no capability at all (``capabilities: drop: [ALL]``,
``allowPrivilegeEscalation: false``). Every step execs, so the PID the harness holds is
the container's process: it can stop, kill and wait for it as the kubelet does.

Standard library only: it runs before anything else in the new namespaces.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    def enc(v: str | None) -> bytes | None:
        return v.encode() if v is not None else None

    _check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def bind(source: str, target: str, *, readonly: bool, recursive: bool = False) -> None:
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0), None)
    if readonly:
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)


def inside(root: str, target: str) -> str:
    """``target`` as it resolves under ``root`` after the chroot: symbolic links are
    followed *within* ``root`` (``/var/run`` -> ``/run`` must not reach the machine's)."""
    parts = [p for p in target.split("/") if p]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        if part == ".":
            continue
        candidate = os.path.join(root, *resolved, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise OSError(40, f"too many links resolving {target}")
            link = os.readlink(candidate)
            if link.startswith("/"):
                resolved = []
            parts = [p for p in link.split("/") if p] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def place(root: str, target: str, *, file: bool) -> str:
    """The mount point inside ``root``, made in the overlay (never on the machine)."""
    path = inside(root, target)
    if not path.startswith(root.rstrip("/") + "/"):
        raise OSError(1, f"{target} resolves outside the container")
    if file:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            open(path, "a").close()
    else:
        os.makedirs(path, exist_ok=True)
    return path


def open_interpreter_path(root: str) -> None:
    """The image's interpreter is this machine's, which may live under a directory only
    root may enter (``/root/.pyenv``); let others through, in the overlay only, as the
    image's ``/opt/shoal`` lets them."""
    path = os.path.dirname(os.path.realpath(sys.executable))
    while path != "/":
        there = inside(root, path)
        mode = os.stat(there).st_mode
        if not mode & 0o001:
            os.chmod(there, (mode & 0o7777) | 0o011)
        path = os.path.dirname(path)


def main() -> None:
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    socket.sethostname(spec["hostname"])
    scratch = spec["scratch"]
    mount("tmpfs", scratch, "tmpfs", 0, "mode=0755")
    upper, work, root = (os.path.join(scratch, d) for d in ("upper", "work", "root"))
    for d in (upper, work, root):
        os.mkdir(d)
    mount("overlay", root, "overlay", 0, f"lowerdir=/,upperdir={upper},workdir={work}")
    for special in ("/proc", "/dev", "/sys"):
        bind(special, inside(root, special), readonly=False, recursive=True)
    # outer mounts first, all writable while inner mount points are made (the
    # p2p secret's mount point is inside the config volume's), then read-only ones
    readonly = []
    for m in sorted(spec["mounts"], key=lambda m: m["target"].rstrip("/").count("/")):
        target = place(root, m["target"], file=os.path.isfile(m["source"]))
        bind(m["source"], target, readonly=False)
        if m["readonly"]:
            readonly.append(target)
    for target in readonly:
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
    bind(spec["hosts"], place(root, "/etc/hosts", file=True), readonly=True)
    if spec["uid"] != 0:
        open_interpreter_path(root)
    if spec["read_only_root"]:
        mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
    os.chroot(root)
    os.chdir(spec.get("workdir") or "/")
    argv = [
        "setpriv",
        f"--reuid={spec['uid']}",
        f"--regid={spec['gid']}",
    ]
    argv.append(
        f"--groups={','.join(map(str, spec['groups']))}" if spec["groups"] else "--clear-groups"
    )
    if spec["drop_caps"]:
        argv += ["--inh-caps=-all", "--bounding-set=-all"]
    if spec["no_new_privs"]:
        argv.append("--no-new-privs")
    argv += ["--", *spec["argv"]]
    os.execvpe("setpriv", argv, spec["env"])


if __name__ == "__main__":
    try:
        main()
    except OSError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        sys.exit(127)
