"""``shoal bench``: refuse without root, run the modes with a progress display, report.

Ctrl-C and SIGTERM cancel the run; the runner's ``finally`` then removes every
namespace, link, process and file it made before the command exits non-zero. Both
signals get the event loop's own handler, SIGINT included: a command started in the
background by a non-interactive shell (``make test &``, a CI step) inherits SIGINT
*ignored*, Python then installs no KeyboardInterrupt handler, and asyncio.run's Ctrl-C
handling never sees the signal: the run went on and exited 0 (the flake of
tests/bench/test_interrupt.py). A second signal during the cleanup is ignored, so the
cleanup itself is not cut short.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from shoal.bench.errors import BenchError, NotRootError
from shoal.bench.netns import cleanup_leftovers
from shoal.bench.report import markdown, plot, print_report, to_json, write_json
from shoal.bench.runner import BenchOptions, BenchResult, run_benchmark

#: what stops a run (and its cleanup runs): Ctrl-C and a polite kill
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    modes = tuple(m.strip() for m in str(args.modes).split(",") if m.strip())
    if args.nodes < 1 or args.layers < 1 or args.roots < 0:
        raise BenchError("--nodes and --layers must be at least 1, --roots at least 0")
    if args.rate <= 0 or args.origin_rate <= 0 or args.layer_mib <= 0:
        raise BenchError("--rate, --origin-rate and --layer-mib must be positive")
    if args.piece_kib < 0 or args.stripes < 0:
        raise BenchError("--piece-kib and --stripes must not be negative")
    try:
        depths = tuple(float(x) for x in str(args.queue_ms).split(",") if x.strip())
    except ValueError:
        raise BenchError(f"--queue-ms: {args.queue_ms!r} is not a list of numbers") from None
    if not depths or min(depths) <= 0 or args.burst_ms <= 0 or args.capacity_gib < 0:
        raise BenchError("--queue-ms and --burst-ms must be positive, --capacity-gib not negative")
    return BenchOptions(
        nodes=args.nodes,
        roots=args.roots,
        rate_mbit=args.rate,
        origin_rate_mbit=args.origin_rate,
        layers=args.layers,
        layer_mib=args.layer_mib,
        piece_kib=args.piece_kib,
        stripes=args.stripes,
        modes=modes,
        timeout_s=args.timeout,
        keep_workdir=args.keep,
        queue_ms=depths,
        burst_ms=args.burst_ms,
        by_address=args.by_address,
        exporter=args.exporter,
        capacity_gib=args.capacity_gib,
    )


def run_bench(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise NotRootError("needs root: it builds network namespaces and shapes links with tc")
    if args.cleanup:
        removed = cleanup_leftovers()
        print(f"removed {len(removed)} leftover run(s): {' '.join(removed) or '-'}")
        return 0
    opts = options_from_args(args)
    _write_bytecode()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    result = asyncio.run(_main(opts, console))
    write_json(result, out / "bench.json")
    (out / "bench.md").write_text(markdown(to_json(result)))
    written = [out / "bench.json", out / "bench.md"]
    try:
        plot(result, out / "bench.png")
        written.append(out / "bench.png")
    except ModuleNotFoundError as exc:  # matplotlib is the optional extra shoal[bench]
        print(f"shoal bench: no bench.png: {exc.name} is missing (pip install 'shoal[bench]')")
    out_console = Console()
    if not out_console.is_terminal:
        out_console = Console(width=150)  # a file or a pipe gets the whole table
    print_report(result, out_console)
    print(f"wrote {', '.join(str(p) for p in written)}")
    failed = [
        m.run.mode for m in result.modes if m.skipped or any(n.seconds is None for n in m.run.nodes)
    ]
    if failed:
        print(f"shoal bench: nodes failed in {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _write_bytecode() -> None:
    """Installed (the image, a wheel) shoal runs from bytecode; run from a checkout under
    ``PYTHONDONTWRITEBYTECODE`` every agent of the run would compile its hundred modules
    itself (0.17 s of CPU each, 5 s in a 32-node run, counted in the mode's own CPU). The
    bytecode is written once here; an unwritable tree only costs that time."""
    import compileall

    import shoal

    compileall.compile_dir(Path(shoal.__file__).parent, quiet=2)


async def _main(opts: BenchOptions, console: Console) -> BenchResult:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    stopping: list[int] = []

    def stop(sig: int) -> None:
        if not stopping:
            stopping.append(sig)
            task.cancel()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop, sig)
    progress = Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        console=console,
    )
    current: list[TaskID] = []

    def on_mode(mode: str) -> None:
        current.append(progress.add_task(mode, total=opts.nodes, last=""))

    def on_node(node: str, seconds: float | None) -> None:
        if current:
            last = f"{node} {seconds:.2f}s" if seconds is not None else f"{node} failed"
            progress.update(current[-1], advance=1, last=last)

    console.print(
        f"shoal bench: {opts.nodes} nodes, {opts.rate_mbit:g}/{opts.origin_rate_mbit:g} Mbit/s, "
        f"{opts.layers}x{opts.layer_mib:g} MiB, modes {','.join(opts.modes)}"
    )
    try:
        with progress:
            return await run_benchmark(opts, on_mode=on_mode, on_node_done=on_node)
    except asyncio.CancelledError:
        raise BenchError("stopped by a signal; everything it made was removed") from None
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
