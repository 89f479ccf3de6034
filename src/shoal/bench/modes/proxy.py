"""``proxy``: every node pulls through one pull-through cache, what many teams run today.

The cache is the origin's own binary in proxy mode, on a host whose link is shaped like
a node's, so its bound is N copies through one node link. skopeo silently falls back to
the origin when a mirror fails, so the proof that the bytes came through the cache is the
cache's own log: blob bytes it served to the nodes, against N copies of the layers.
"""

from __future__ import annotations

from shoal.bench.modes.base import BenchContext, ModeRun, mirror_share, run_skopeo
from shoal.bench.workload import REGISTRY_PORT, wait_http
from shoal.lab.origin import OriginRegistry


async def run_proxy(ctx: BenchContext) -> ModeRun:
    host = ctx.cluster.proxy
    assert host is not None
    cache = OriginRegistry(
        ctx.mode_dir("proxy") / "cache",
        host=host.ip,
        port=REGISTRY_PORT,
        netns=host.netns,
        proxy_remote=ctx.origin.url,
    )
    await cache.start()
    try:
        await wait_http(host.netns, f"{cache.url}/v2/")
        # distribution's pull-through cache now and then answers 500 to one of several
        # first requests for the same blob at once: such a node pulls again (timed)
        nodes, cpu = await run_skopeo(ctx, "proxy", lambda node: cache.address, retries=1)
    finally:
        await cache.stop()
    served = cache.blob_bytes_served()
    want = len(ctx.nodes) * ctx.workload.layer_bytes
    share = served / want if want else 0.0
    notes = [
        "skopeo copy with the pull-through cache as [[registry.mirror]]; "
        "time = release to skopeo exit",
        f"the cache served {share:.0%} of the nodes' layer bytes (from its own log)",
    ]
    again = sum(1 for n in nodes if n.retried)
    if again:
        notes.append(f"{again} node(s) pulled again after a failed first pull (time included)")
    via = mirror_share(nodes, lambda node: cache.address)
    if via < 1.0:
        notes.append(f"only {via:.0%} of the nodes took every blob from the cache (skopeo logs)")
    return ModeRun(
        "proxy",
        nodes,
        cpu,
        notes=notes,
        extra={"mirror_blob_bytes": served, "via_mirror": via},
    )
