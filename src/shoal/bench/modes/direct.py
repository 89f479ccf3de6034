"""``direct``: every node pulls from the origin, the standard pull without any help.

Its bound is the origin's link: N copies of the image through B_origin.
"""

from __future__ import annotations

from shoal.bench.modes.base import BenchContext, ModeRun, run_skopeo


async def run_direct(ctx: BenchContext) -> ModeRun:
    nodes, cpu = await run_skopeo(ctx, "direct", lambda node: None)
    return ModeRun(
        "direct",
        nodes,
        cpu,
        notes=["skopeo copy from the origin; time = release to skopeo exit"],
    )
