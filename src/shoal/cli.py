"""The one command, ``shoal``, with a subcommand per role and per tool.

Every failure a user can cause (a bad config, a bad flag, a port in use, a file that
cannot be written, a missing tool) ends in one line on stderr, ``shoal <command>:
<what>``, and a non-zero exit: 2 for anything the user can fix, 130 after Ctrl-C. A
traceback means a bug in shoal (``SHOAL_TRACEBACK=1`` shows one for an OS error too).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from shoal import __version__
from shoal.errors import ConfigInvalidError, ShoalError

if TYPE_CHECKING:
    from shoal.config import Config

Handler = Callable[[argparse.Namespace], int]

log = logging.getLogger("shoal")

#: set to show the traceback of an OS error instead of its one line
TRACEBACK_ENV = "SHOAL_TRACEBACK"

#: modules of the optional extras (pyproject.toml) -> the extra that brings them
OPTIONAL_MODULES = {"matplotlib": "bench", "kubernetes_asyncio": "kubeconfig"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


_PORT_HELP = {
    "agent": (
        "registry mirror port, ProxyConfig.port (default 65001)",
        "peer port, P2PConfig.p2pPort (default 65002)",
    ),
    "root": (
        "control API port agents join at, ProxyConfig.port (default 65001)",
        "port serving pieces to agents, P2PConfig.p2pPort (default 65002)",
    ),
}


def _add_role_args(p: argparse.ArgumentParser, role: str) -> None:
    proxy_help, p2p_help = _PORT_HELP[role]
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config file (see docs/config.md)")
    p.add_argument(
        "--listen",
        metavar="ADDR",
        help="listen address for every port (default: all IPv4 and IPv6)",
    )
    p.add_argument("--proxy-port", type=int, metavar="PORT", help=proxy_help)
    p.add_argument("--p2p-port", type=int, metavar="PORT", help=p2p_help)
    p.add_argument(
        "--exporter-port",
        type=int,
        metavar="PORT",
        help="/metrics port, ExporterConfig.port (default 65003)",
    )
    p.add_argument("--advertise", metavar="ADDR", help="address peers dial (P2PConfig.advertise)")


def _start_role(args: argparse.Namespace, role: str) -> Config:
    """The config (flags over file), logging set up from it, and a first line saying
    what this process will use."""
    from shoal.lifecycle import config_from_args
    from shoal.observability.logs import setup_logging

    config = config_from_args(args, role)
    setup_logging(config.deploy.log_level, config.deploy.log_format)
    store = config.cache.path or "none (a relay)"
    if args.config:
        log.info("%s: config %s; piece store %s", role, args.config, store)
    else:
        log.warning(
            "%s: no --config: every key at its default; piece store %s (CacheConfig.path)",
            role,
            store,
        )
    return config


def _run_agent(args: argparse.Namespace) -> int:
    from shoal.agent.main import run_agent

    return run_agent(_start_role(args, "agent"))


def _run_root(args: argparse.Namespace) -> int:
    from shoal.root.main import run_root

    return run_root(_start_role(args, "root"))


def _run_webhook(args: argparse.Namespace) -> int:
    from shoal.webhook.main import run_webhook

    return run_webhook(args)


def _run_node_setup(args: argparse.Namespace) -> int:
    from shoal.webhook.nodesetup import run_node_setup

    return run_node_setup(args)


def _run_pull(args: argparse.Namespace) -> int:
    from shoal.registry.pull import run_pull

    if args.mirror and not re.match(r"^https?://[^/]", args.mirror):
        raise ConfigInvalidError(
            f"--mirror must be a URL like http://127.0.0.1:65001, not {args.mirror!r}"
        )
    dest = Path(args.dest)
    if dest.exists() and not dest.is_dir():
        raise ConfigInvalidError(f"{dest} exists and is not a directory")
    return run_pull(args)


def _run_preheat(args: argparse.Namespace) -> int:
    from shoal.control.preheat_cli import run_preheat

    return run_preheat(args)


def _run_demo(args: argparse.Namespace) -> int:
    from shoal.demo.main import run_demo

    return run_demo(args)


def _run_bench(args: argparse.Namespace) -> int:
    from shoal.bench.main import run_bench

    return run_bench(args)


def _run_sim(args: argparse.Namespace) -> int:
    from shoal.sim.main import run_sim

    return run_sim(args)


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand's parser; with ``only``, the options of that one alone.

    The options of ``node-setup``, ``preheat`` and ``sim`` live in their own modules,
    which import what those commands need (rich, aiohttp's client, the simulator):
    importing them for an agent or root start cost each node a third of its start-up
    CPU, so they are added only when their command is the one run (or for ``--help``).
    """

    def wanted(command: str) -> bool:
        return only is None or only == command

    parser = _Parser(prog="shoal", description="Peer-to-peer container image distribution.")
    parser.add_argument("--version", action="version", version=f"shoal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "agent",
        help="run the node agent (registry mirror and peer)",
        description="Run the node agent: the registry mirror the container runtime pulls "
        "through, the peer server, and /metrics. Stops on SIGTERM or SIGINT.",
    )
    _add_role_args(p, "agent")
    p.set_defaults(handler=_run_agent)

    p = sub.add_parser(
        "root",
        help="run a root (seed and scheduler)",
        description="Run a root: the control API agents join at (ProxyConfig.port, "
        "GET /healthz), the piece server (P2PConfig.p2pPort) and /metrics "
        "(ExporterConfig.port). The config needs DeployConfig.mode: root. "
        "Stops on SIGTERM or SIGINT.",
    )
    _add_role_args(p, "root")
    p.set_defaults(handler=_run_root)

    p = sub.add_parser("webhook", help="run the mutating admission webhook")
    p.add_argument("--config", "-c", metavar="FILE", help="YAML webhook config file")
    p.set_defaults(handler=_run_webhook)

    p = sub.add_parser("node-setup", help="write containerd hosts.toml files for the agent")
    if wanted("node-setup"):
        from shoal.webhook.nodesetup import add_arguments as add_node_setup_arguments

        add_node_setup_arguments(p)
    p.set_defaults(handler=_run_node_setup)

    p = sub.add_parser("pull", help="pull an image into an OCI layout directory")
    p.add_argument("image", help="image reference, e.g. 127.0.0.1:5000/library/app:1")
    p.add_argument("dest", help="OCI layout directory to write")
    p.add_argument(
        "--mirror", metavar="URL", help="pull through this mirror (e.g. http://127.0.0.1:65001)"
    )
    p.add_argument("--plain-http", action="store_true", help="origin speaks plain HTTP")
    p.add_argument("--user", metavar="USER:PASSWORD", help="registry credentials")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    p.set_defaults(handler=_run_pull)

    p = sub.add_parser(
        "preheat",
        help="put an image on nodes before a rollout (a job at the roots)",
        description="Start a preheat job at the roots: the agents named (--nodes), N of "
        "them (--count), P% (--percent) or all fetch IMAGE through the swarm and keep it "
        "until the TTL. --status/--cancel/--list act on jobs instead. See docs/preheat.md.",
    )
    if wanted("preheat"):
        from shoal.control.preheat_cli import add_arguments as add_preheat_arguments

        add_preheat_arguments(p)
    p.set_defaults(handler=_run_preheat)

    p = sub.add_parser("demo", help="run the whole system on this machine and pull an image")
    p.add_argument("--layers", type=int, default=4, help="layers in the generated image")
    p.add_argument("--layer-mib", type=int, default=16, help="MiB per layer")
    p.add_argument("--nodes", type=int, default=8, help="agents (nodes) pulling at once")
    p.add_argument(
        "--origin-mib", type=float, default=32, help="the origin's egress, MiB/s (a busy registry)"
    )
    p.add_argument("--workdir", metavar="DIR", help="keep files here (default: a temp dir)")
    p.set_defaults(handler=_run_demo)

    p = sub.add_parser(
        "bench",
        help="multi-host benchmark in network namespaces (root)",
        description="Emulate --nodes hosts (network namespaces, links shaped with tc) and "
        "time every node's pull of a generated image in each mode: direct from the "
        "origin, through one caching proxy, BitTorrent, shoal. Needs root.",
        epilog="Results go to --out: bench.json (the options, then per mode every node's "
        "pull seconds or error, the bytes that left the origin by its link counters and "
        "by its log, wall time, CPU use and notes), bench.md (a table made from the "
        "JSON) and bench.png (completion-time CDFs); the table is also printed. "
        "Exit 1 when any node failed in any mode.",
    )
    p.add_argument("--nodes", "-n", type=int, default=16, help="node hosts (default 16)")
    p.add_argument("--rate", type=float, default=100.0, metavar="MBIT", help="node link B")
    p.add_argument("--origin-rate", type=float, default=100.0, metavar="MBIT", help="origin link")
    p.add_argument("--layers", type=int, default=4, help="layers in the generated image")
    p.add_argument("--layer-mib", type=float, default=16.0, help="MiB per layer")
    p.add_argument("--roots", type=int, default=1, help="root hosts for the shoal mode")
    p.add_argument(
        "--piece-kib", type=int, default=0, help="swarm piece size for the shoal mode (0: auto)"
    )
    p.add_argument(
        "--stripes",
        type=int,
        default=0,
        metavar="K",
        help="shoal and preheat modes: the roots' stripe trees per blob "
        "(SwarmConfig.scheduler.stripes; 0: the default)",
    )
    p.add_argument(
        "--modes", default="direct,proxy,bittorrent,shoal", help="comma-separated modes to run"
    )
    p.add_argument(
        "--queue-ms",
        default="20",
        metavar="MS[,MS...]",
        help="every link's queue (tbf latency), ms of traffic; a switch port holds a few. "
        "Several depths (5,20,50) run every mode at each, in one run",
    )
    p.add_argument(
        "--burst-ms", type=float, default=4.0, metavar="MS", help="tbf burst, ms of traffic"
    )
    p.add_argument(
        "--by-address",
        action="store_true",
        help="shoal mode: skopeo pulls docker://127.0.0.1:65001/... instead of via a mirror",
    )
    p.add_argument("--exporter", action="store_true", help="shoal mode: agents' exporter on")
    p.add_argument(
        "--capacity-gib",
        type=float,
        default=0.0,
        metavar="GIB",
        help="shoal mode: each store's capacity (0: 4x the image)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default="bench-out",
        help="report directory: bench.json (options, per-mode and per-node results), "
        "bench.md, bench.png",
    )
    p.add_argument("--timeout", type=float, default=600.0, metavar="S", help="per mode")
    p.add_argument("--keep", action="store_true", help="keep the run's files (logs) after it")
    p.add_argument("--cleanup", action="store_true", help="remove crashed runs' leftovers, exit")
    p.set_defaults(handler=_run_bench)

    p = sub.add_parser("sim", help="simulate the scheduler at thousands of nodes")
    if wanted("sim"):
        from shoal.sim.main import add_arguments as _add_sim_arguments

        _add_sim_arguments(p)
    p.set_defaults(handler=_run_sim)
    return parser


#: a directory: the command runs under cProfile and writes <command>-<pid>.prof there
PROFILE_ENV = "SHOAL_PROFILE"


def _profiled(handler: Handler, args: argparse.Namespace) -> int:
    """For finding where a process's CPU goes in a real run (bench agents, the root).
    The clock is the main thread's CPU time: in a run that saturates the machine, wall
    time would charge each function for the time other processes held the cores."""
    import cProfile
    import time

    out = Path(os.environ[PROFILE_ENV]) / f"{args.command}-{os.getpid()}.prof"
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    try:
        return handler(args)
    finally:
        profile.disable()
        out.parent.mkdir(parents=True, exist_ok=True)
        profile.dump_stats(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(_command_of(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the subcommand, which is where the flag was misplaced
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    handler: Handler = args.handler
    try:
        return _profiled(handler, args) if os.environ.get(PROFILE_ENV) else handler(args)
    except ShoalError as exc:
        print(f"shoal {args.command}: {_one_line(exc.message)}", file=sys.stderr)
        return 2
    except OSError as exc:
        if os.environ.get(TRACEBACK_ENV):
            raise
        from shoal.lifecycle import describe_os_error

        print(f"shoal {args.command}: {_one_line(describe_os_error(exc))}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        wanted = OPTIONAL_MODULES.get((exc.name or "").split(".")[0])
        if wanted is None:
            raise  # a module shoal cannot do without: a broken install, show it
        print(
            f"shoal {args.command}: this needs {exc.name}, which is not installed: "
            f"pip install 'shoal[{wanted}]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"shoal {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "failed"


if __name__ == "__main__":
    sys.exit(main())
