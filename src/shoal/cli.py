"""The one command, ``shoal``, with a subcommand per role and per tool.

Every failure a user can cause (a bad config, a port in use, a missing tool) ends in one
line on stderr and a non-zero exit; a traceback means a bug in shoal.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from shoal import __version__
from shoal.errors import ShoalError

Handler = Callable[[argparse.Namespace], int]


def _add_role_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config file")
    p.add_argument(
        "--listen",
        metavar="ADDR",
        help="listen address for every port (default: all IPv4 and IPv6)",
    )
    p.add_argument("--proxy-port", type=int, metavar="PORT", help="registry mirror port")
    p.add_argument("--p2p-port", type=int, metavar="PORT", help="peer port")
    p.add_argument("--exporter-port", type=int, metavar="PORT", help="metrics port")
    p.add_argument("--advertise", metavar="ADDR", help="address peers dial (P2PConfig.advertise)")


def _run_agent(args: argparse.Namespace) -> int:
    from shoal.agent.main import run_agent
    from shoal.lifecycle import config_from_args, setup_logging

    config = config_from_args(args, "agent")
    setup_logging()
    return run_agent(config)


def _run_root(args: argparse.Namespace) -> int:
    from shoal.lifecycle import config_from_args, setup_logging
    from shoal.root.main import run_root

    config = config_from_args(args, "root")
    setup_logging()
    return run_root(config)


def _run_webhook(args: argparse.Namespace) -> int:
    from shoal.webhook.main import run_webhook

    return run_webhook(args)


def _run_node_setup(args: argparse.Namespace) -> int:
    from shoal.webhook.nodesetup import run_node_setup

    return run_node_setup(args)


def _run_pull(args: argparse.Namespace) -> int:
    from shoal.registry.pull import run_pull

    return run_pull(args)


def _run_demo(args: argparse.Namespace) -> int:
    from shoal.demo.main import run_demo

    return run_demo(args)


def _run_bench(args: argparse.Namespace) -> int:
    from shoal.bench.main import run_bench

    return run_bench(args)


def _run_sim(args: argparse.Namespace) -> int:
    from shoal.sim.main import run_sim

    return run_sim(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal", description="Peer-to-peer container image distribution."
    )
    parser.add_argument("--version", action="version", version=f"shoal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("agent", help="run the node agent (registry mirror and peer)")
    _add_role_args(p)
    p.set_defaults(handler=_run_agent)

    p = sub.add_parser("root", help="run a root (seed and scheduler)")
    _add_role_args(p)
    p.set_defaults(handler=_run_root)

    p = sub.add_parser("webhook", help="run the mutating admission webhook")
    p.add_argument("--config", "-c", metavar="FILE", help="YAML webhook config file")
    p.set_defaults(handler=_run_webhook)

    from shoal.webhook.nodesetup import add_arguments as add_node_setup_arguments

    p = sub.add_parser("node-setup", help="write containerd hosts.toml files for the agent")
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

    p = sub.add_parser("demo", help="run the whole system on this machine and pull an image")
    p.add_argument("--layers", type=int, default=4, help="layers in the generated image")
    p.add_argument("--layer-mib", type=int, default=16, help="MiB per layer")
    p.add_argument("--nodes", type=int, default=8, help="agents (nodes) pulling at once")
    p.add_argument(
        "--origin-mib", type=float, default=32, help="the origin's egress, MiB/s (a busy registry)"
    )
    p.add_argument("--workdir", metavar="DIR", help="keep files here (default: a temp dir)")
    p.set_defaults(handler=_run_demo)

    p = sub.add_parser("bench", help="multi-host benchmark in network namespaces (root)")
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
        "--modes", default="direct,proxy,bittorrent,shoal", help="comma-separated modes to run"
    )
    p.add_argument("--out", metavar="DIR", default="bench-out", help="report directory")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S", help="per mode")
    p.add_argument("--keep", action="store_true", help="keep the run's files (logs) after it")
    p.add_argument("--cleanup", action="store_true", help="remove crashed runs' leftovers, exit")
    p.set_defaults(handler=_run_bench)

    p = sub.add_parser("sim", help="simulate the scheduler at thousands of nodes")
    from shoal.sim.main import add_arguments as _add_sim_arguments

    _add_sim_arguments(p)
    p.set_defaults(handler=_run_sim)
    return parser


#: a directory: the command runs under cProfile and writes <command>-<pid>.prof there
PROFILE_ENV = "SHOAL_PROFILE"


def _profiled(handler: Handler, args: argparse.Namespace) -> int:
    """For finding where a process's CPU goes in a real run (bench agents, the root)."""
    import cProfile

    out = Path(os.environ[PROFILE_ENV]) / f"{args.command}-{os.getpid()}.prof"
    profile = cProfile.Profile()
    profile.enable()
    try:
        return handler(args)
    finally:
        profile.disable()
        out.parent.mkdir(parents=True, exist_ok=True)
        profile.dump_stats(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return _profiled(handler, args) if os.environ.get(PROFILE_ENV) else handler(args)
    except ShoalError as exc:
        print(f"shoal {args.command}: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"shoal {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
