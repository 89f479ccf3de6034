"""``shoal preheat``: start a preheat job at the roots, follow it, or cancel it.

The command reads what an agent's config already says (``--config``: the roots in
``P2PConfig.roots``, the control API's TLS in ``ControlConfig``, the operator credential
in ``PreheatConfig.secret``/``secretFile``), and flags override it. The image's registry
credentials come from ``--user`` or from ``--pull-secret`` (a docker config or a
Kubernetes Secret, as kubelet reads it), and travel to the root only; agents get what
the root resolved from them.

The progress display (rich, on stderr) follows the job until it is done with
``--wait``; ``--json`` prints the job's state on stdout (the created state, or with
``--wait`` the final one) for scripts. A job that failed, expired or was cancelled
while waited for exits 1 with its reason; bad input exits 2 with one line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import msgspec
import yaml
from msgspec.structs import replace
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from shoal.config import Config, ControlConfig, load_config
from shoal.control.preheat import FINAL, Credentials, JobSpec, JobState
from shoal.control.preheat_client import PreheatClient, operator_secret
from shoal.control.preheat_creds import credentials_for
from shoal.errors import ConfigInvalidError
from shoal.oci.reference import split_image

#: the operator credential from the environment, when no file or config gives one
SECRET_ENV = "SHOAL_PREHEAT_SECRET"
#: seconds between looks at a job while waiting
POLL_S = 0.5


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 100: {text}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", nargs="?", help="image reference, e.g. registry.example/app:1.4")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--nodes", metavar="A,B,...", help="these nodes (names or IPs) only")
    where.add_argument("--count", type=_positive_int, metavar="N", help="N agents")
    where.add_argument("--percent", type=_percent, metavar="P", help="P %% of the agents")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends")
    p.add_argument("--json", action="store_true", help="print the job's state as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    p.add_argument(
        "--timeout",
        type=_non_negative,
        default=1800.0,
        metavar="S",
        help="give up waiting after S seconds (the job goes on)",
    )
    p.add_argument(
        "--ttl",
        type=_non_negative,
        default=0.0,
        metavar="S",
        help="seconds the blobs stay kept (default: the root's defaultTTL)",
    )
    p.add_argument(
        "--rate",
        type=_non_negative,
        default=0.0,
        metavar="MB",
        help="MB/s per node for this job (under PreheatConfig.rateLimitMB)",
    )
    p.add_argument("--platform", default="linux/amd64", help="os/arch picked from an index")
    p.add_argument("--user", metavar="USER:PASSWORD", help="registry credentials")
    p.add_argument(
        "--pull-secret",
        metavar="FILE",
        help="registry credentials from a docker config or a Secret (JSON/YAML)",
    )
    p.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="an agent's or root's YAML config: roots, control TLS, operator secret",
    )
    p.add_argument(
        "--root",
        action="append",
        metavar="HOST:PORT",
        help="a root's control API (repeat; default P2PConfig.roots)",
    )
    p.add_argument(
        "--secret-file",
        metavar="FILE",
        help=f"the operator credential (default PreheatConfig, or ${SECRET_ENV})",
    )
    p.add_argument("--ca-file", metavar="FILE", help="CA of the roots' certificates")
    p.add_argument("--plain", action="store_true", help="the control API speaks plain HTTP")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--status", metavar="JOB", help="show a job instead of starting one")
    act.add_argument("--cancel", metavar="JOB", help="cancel a job instead of starting one")
    act.add_argument("--list", action="store_true", help="list the roots' jobs")


def _credentials(args: argparse.Namespace) -> Credentials:
    if args.user and args.pull_secret:
        raise ConfigInvalidError("give --user or --pull-secret, not both")
    if args.user:
        user, sep, password = args.user.partition(":")
        if not sep or not user:
            raise ConfigInvalidError("--user must be USER:PASSWORD")
        return Credentials(user, password)
    if args.pull_secret:
        host = split_image(args.image)[0]
        try:
            doc = yaml.safe_load(Path(args.pull_secret).read_text())
        except yaml.YAMLError as exc:
            raise ConfigInvalidError(f"{args.pull_secret}: not JSON or YAML") from exc
        creds = credentials_for(doc, host)
        if creds is None:
            raise ConfigInvalidError(f"{args.pull_secret} holds no credentials for {host}")
        return creds
    return Credentials()


def _client(args: argparse.Namespace) -> PreheatClient:
    config = load_config(args.config) if args.config else Config()
    roots = args.root or list(config.p2p.roots)
    if not roots:
        raise ConfigInvalidError("no roots: give --root HOST:PORT or --config with P2PConfig.roots")
    if args.secret_file:
        secret = operator_secret(replace(config.preheat, secret_file=args.secret_file))
    else:
        secret = operator_secret(config.preheat)
        if secret is None and os.environ.get(SECRET_ENV):
            secret = operator_secret(replace(config.preheat, secret=os.environ[SECRET_ENV]))
    if secret is None:
        raise ConfigInvalidError(
            f"no operator credential: --secret-file, ${SECRET_ENV}, or PreheatConfig.secretFile"
        )
    control: ControlConfig = config.control
    if args.plain:
        control = replace(control, tls=False)
    elif args.ca_file:
        control = replace(control, ca_file=args.ca_file)
    if control.tls and not Path(control.ca_file).is_file():
        raise ConfigInvalidError(
            f"no CA file {control.ca_file} (ControlConfig.caFile): give --ca-file, or --plain"
        )
    return PreheatClient(roots, secret, control=control)


def _spec(args: argparse.Namespace) -> JobSpec:
    if not args.image:
        raise ConfigInvalidError("which image? shoal preheat IMAGE (or --status/--cancel JOB)")
    split_image(args.image)  # a bad reference says so before any root is asked
    nodes = [n.strip() for n in (args.nodes or "").split(",") if n.strip()]
    if args.nodes is not None and not nodes:
        raise ConfigInvalidError("--nodes names no node")
    return JobSpec(
        args.image,
        credentials=_credentials(args),
        nodes=nodes,
        count=args.count or 0,
        percent=args.percent or 0.0,
        ttl=args.ttl,
        rate=args.rate,
        platform=args.platform,
        origin="shoal preheat",
    )


def summary(state: JobState) -> str:
    """One line: the job, its nodes and bytes, and why it ended if it did badly."""
    total = state.bytes_total
    done = state.count("done")
    wanted = state.wanted if state.wanted >= 0 else len(state.nodes)
    moved = sum(n.bytes_done for n in state.nodes)
    line = (
        f"preheat {state.id} {state.image}: {state.state}, {done}/{wanted} nodes done, "
        f"{len(state.blobs)} blobs, {total / (1 << 20):.1f} MiB each, "
        f"{moved / (1 << 20):.1f} MiB moved ({state.targets})"
    )
    return f"{line}: {state.reason}" if state.reason else line


class Display:
    """Two bars on stderr: nodes done of nodes wanted, and bytes on the nodes."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description:>8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[extra]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.nodes: TaskID = self.progress.add_task("nodes", total=None, extra="")
        self.bytes: TaskID = self.progress.add_task("bytes", total=None, extra="", visible=False)

    def update(self, state: JobState) -> None:
        wanted = state.wanted if state.wanted >= 0 else max(len(state.nodes), 1)
        failed = state.count("failed")
        extra = f"[red]{failed} failed[/]" if failed else state.state
        self.progress.update(self.nodes, completed=state.count("done"), total=wanted, extra=extra)
        total = state.bytes_total * wanted
        moved = sum(n.bytes_done for n in state.nodes)
        mib = f"{moved / (1 << 20):.1f}/{total / (1 << 20):.1f} MiB"
        self.progress.update(
            self.bytes, completed=moved, total=max(total, 1), extra=mib, visible=True
        )


async def _follow(client: PreheatClient, state: JobState, args: argparse.Namespace) -> JobState:
    console = Console(stderr=True)
    show = not args.quiet and console.is_terminal
    display = Display(console) if show else None
    deadline = time.monotonic() + args.timeout
    with display.progress if display is not None else _nothing():
        while state.state not in FINAL:
            if display is not None:
                display.update(state)
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL_S)
            state = await client.get(state.id)
        if display is not None:
            display.update(state)
    return state


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


async def _main(args: argparse.Namespace) -> tuple[int, JobState | list[JobState]]:
    spec = None if (args.status or args.cancel or args.list) else _spec(args)
    async with _client(args) as client:
        if args.list:
            return 0, await client.list()
        if args.cancel:
            return 0, await client.cancel(args.cancel)
        if args.status:
            state = await client.get(args.status)
        else:
            assert spec is not None
            state = await client.create(spec)
        if args.wait:
            state = await _follow(client, state, args)
            if state.state not in FINAL:
                return 1, state
            return (0 if state.state == "done" else 1), state
        return 0, state


def run_preheat(args: argparse.Namespace) -> int:
    code, result = asyncio.run(_main(args))
    if args.json:
        print(json.dumps(msgspec.to_builtins(result), indent=2))
    elif isinstance(result, list):
        for state in result:
            print(summary(state))
    else:
        print(summary(result))
    if code and isinstance(result, JobState):
        why = result.reason or f"still {result.state} after --timeout {args.timeout:g} s"
        print(f"shoal preheat: job {result.id} {result.state}: {why}", file=sys.stderr)
    return code
