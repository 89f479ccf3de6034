"""What the chart cluster is asked, and the checks that say whether it answered right.

``pull_everywhere`` is the user's story: a Deployment's Pod with a public and a private
image is admitted by the webhook and pulled on every node. ``check_pulls`` then finds
everything that went wrong, from the outside: a failed pull; a blob missing from a
node's containerd; a registry that sent more than ``MAX_COPIES`` copies of an image's
blobs; a blob fetched from a registry by a node (containerd itself or the agent
falling back) instead of by a root; an agent that is not ready or counted fallbacks; a
root whose control API does not speak TLS with the CA the agents' Pods mount.
The negative control is the same checks against the old roots' port: they must find
it.

``pull_without_agent`` and ``pull_with_hung_agent`` are the faults: the node's agent
dead (killed, or not started yet), and stopped (SIGSTOP: it accepts connections and
answers nothing), each timed against a direct pull of an image of the same size.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from shoal.lab.image import BuiltImage
from tests.cluster.cluster import (
    LABEL,
    PRIVATE,
    PUBLIC,
    ChartCluster,
    NodeRuntime,
    Pulled,
)
from tests.cluster.manifests import Doc, container_port

#: copies of an image's blobs the registries may send for all nodes together
MAX_COPIES = 1.05
FALLBACK_LINE = "from the origin"


@dataclass
class Story:
    images: dict[str, BuiltImage]
    pod: Doc
    pulls: list[Pulled]
    findings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


def mib(n: float) -> int:
    return int(n * (1 << 20))


async def pull_everywhere(
    c: ChartCluster,
    tag: str,
    *,
    seed: int,
    private: bool = True,
    nodes: list[NodeRuntime] | None = None,
    layer_mib: float = 0,
) -> Story:
    """``layer_mib``: 4 public and 2 private layers of that size (footprint runs), else
    a few MiB in all."""
    public = [mib(layer_mib)] * 4 if layer_mib else [mib(2), mib(1)]
    images = {PUBLIC: c.image(f"pub-{tag}", "library/app", tag, public, seed)}
    if private:
        secret = [mib(layer_mib)] * 2 if layer_mib else [mib(2)]
        images[PRIVATE] = c.image(f"priv-{tag}", "team/secret", tag, secret, seed + 1)
    for registry, image in images.items():
        await c.push(registry, image)
    refs = [f"{registry}/{image.repo}:{image.tag}" for registry, image in images.items()]
    pod = await c.admit(c.workload(f"app-{tag}", refs), namespace_labels={LABEL: "p2p"})
    targets = nodes if nodes is not None else c.nodes
    pulls = [p for batch in await asyncio.gather(*(c.pull(n, pod) for n in targets)) for p in batch]
    return Story(images, pod, pulls)


def admitted(story: Story, port: int = 65001) -> list[str]:
    """What the webhook should have done to the Pod, and did not."""
    out = []
    for ctr, (registry, image) in zip(
        story.pod["spec"]["containers"], story.images.items(), strict=True
    ):
        a, _, b = registry.partition(".")
        want = f"{a}.distributed.{b}:{port}/{image.repo}:{image.tag}"
        if ctr["image"] != want:
            out.append(f"container {ctr['name']}: image {ctr['image']}, not {want}")
    names = [s["name"] for s in story.pod["spec"].get("imagePullSecrets") or []]
    if "acr-credential-regcred-p2p" not in names:
        out.append(f"no pull-secret clone on the Pod: {names}")
    return out


async def check_pulls(
    c: ChartCluster, story: Story, *, nodes: list[NodeRuntime] | None = None
) -> list[str]:
    findings = admitted(story)
    targets = nodes if nodes is not None else c.nodes
    for p in story.pulls:
        if not p.ok:
            findings.append(f"{p.node}: pull of {p.image} failed: {p.output[-400:]}")
    for runtime in targets:
        _, content = await c.ctr(runtime, "content", "ls")
        for image in story.images.values():
            missing = [b.digest for b in image.blobs() if b.digest not in content]
            if missing:
                findings.append(
                    f"{runtime.node.name}: containerd lacks {len(missing)} blobs of {image.repo}"
                )
    node_ips = c.node_ips()
    for registry, image in story.images.items():
        served = c.registries[registry].served()
        digests = {b.digest for b in image.blobs()}
        got = [s for s in served if s.method == "GET" and s.blob in digests and s.written]
        sent = sum(s.written for s in got)
        copies = sent / image.total_size
        story.facts[f"{registry} copies"] = round(copies, 3)
        if copies > MAX_COPIES:
            name = f"{image.repo}:{image.tag}"
            findings.append(f"{registry} sent {copies:.2f} copies of {name} (at most {MAX_COPIES})")
        direct = sorted({s.remote for s in got if s.remote in node_ips})
        if direct:
            agents = sorted({s.agent.split()[0] for s in got if s.remote in node_ips})
            findings.append(
                f"{registry}: nodes {direct} fetched blobs themselves ({', '.join(agents)})"
            )
    for runtime in targets:
        findings += await check_agent(c, runtime)
    findings += await check_control_tls(c)
    return findings


async def check_control_tls(c: ChartCluster) -> list[str]:
    """The control API as agents reach it: TLS that verifies against the CA mounted in
    an agent's Pod, for each root's StatefulSet name; no HTTP answer in clear; and no
    Pod logged the plain development mode."""
    out = []
    agent = next(n.agent for n in c.nodes if n.agent is not None)
    ca = agent.volumes.get("control-ca")
    if ca is None:
        return ["the agent Pod mounts no control CA (volume control-ca)"]
    ctx = ssl.create_default_context(cafile=str(ca / "ca.crt"))
    port = container_port(c.roots[0].spec, "control")
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for name, ip in c.root_names.items():
            try:
                async with session.get(
                    f"https://{ip}:{port}/healthz", ssl=ctx, server_hostname=name
                ) as resp:
                    if resp.status != 200:
                        out.append(f"root {name}: GET /healthz over TLS answered {resp.status}")
            except aiohttp.ClientError as exc:
                out.append(f"root {name}: no TLS with the agents' CA: {exc}")
            try:
                async with session.get(f"http://{ip}:{port}/healthz") as resp:
                    out.append(f"root {name}: answers in clear (HTTP {resp.status})")
            except aiohttp.ClientError:
                pass  # not HTTP in clear: as it should be
    for pod in [*c.roots, agent]:
        if "PLAIN HTTP" in pod.containers[0].tail(200_000):
            out.append(f"{pod.name}: logged the plain development mode")
    return out


async def check_agent(c: ChartCluster, runtime: NodeRuntime) -> list[str]:
    """The agent's own word: readiness, its metrics where exported, its log."""
    out = []
    assert runtime.agent is not None
    name = runtime.node.name
    status, body = await c.agent_readyz(runtime)
    if status != 200:
        out.append(f"{name}: agent not ready: {body.strip()}")
    text = await c.agent_metrics(runtime)
    if text:
        values = metric_values(text)
        fallbacks = values.get("shoal_origin_fallback_total", {}).get((), 0.0)
        if fallbacks:
            out.append(f"{name}: {fallbacks:g} blobs fetched from the origin by the agent itself")
        for labels, value in values.get("shoal_root_reachable", {}).items():
            if value != 1.0:
                out.append(f"{name}: shoal_root_reachable{dict(labels)} = {value:g}")
    log = runtime.agent.containers[0].tail(200_000)
    fell_back = [line for line in log.splitlines() if "myself" in line and FALLBACK_LINE in line]
    if fell_back:
        out.append(
            f"{name}: {len(fell_back)} fallbacks in the agent's log, first: {fell_back[0][-200:]}"
        )
    return out


def metric_values(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            labels = tuple(
                sorted((k, v) for k, v in sample.labels.items() if k not in ("node", "mode"))
            )
            out.setdefault(sample.name, {})[labels] = sample.value
    return out


# --- faults -------------------------------------------------------------------------------


@dataclass
class Timed:
    what: str
    direct: float
    faulty: float
    ok: bool
    output: str
    events: list[str]

    @property
    def added(self) -> float:
        return self.faulty - self.direct


async def direct_pull(c: ChartCluster, runtime: NodeRuntime, tag: str, seed: int) -> Pulled:
    """The yardstick: a private image of the same size, from the registry, no mirror."""
    image = c.image(f"direct-{tag}", "team/direct", tag, [mib(1)], seed)
    await c.push(PRIVATE, image)
    empty = c.workdir / "no-hosts"
    empty.mkdir(exist_ok=True)
    from tests.cluster.cluster import PASSWORD, USER

    return await c.pull_image(
        runtime, f"{PRIVATE}/{image.repo}:{image.tag}", (USER, PASSWORD), hosts_dir=empty
    )


async def private_pod(c: ChartCluster, tag: str, seed: int) -> tuple[Doc, BuiltImage]:
    image = c.image(f"fault-{tag}", "team/secret", tag, [mib(1)], seed)
    await c.push(PRIVATE, image)
    pod = await c.admit(
        c.workload(f"fault-{tag}", [f"{PRIVATE}/{image.repo}:{image.tag}"]),
        namespace_labels={LABEL: "p2p"},
    )
    return pod, image


async def pull_without_agent(
    c: ChartCluster, runtime: NodeRuntime, *, seed: int, kill: bool
) -> Timed:
    """``kill``: the running agent is SIGKILLed (and kept dead); else the node is one
    whose agent has not started yet (its init container ran)."""
    assert runtime.agent is not None
    agent = runtime.agent.containers[0]
    what = "agent killed" if kill else "agent not started yet"
    if kill:
        await runtime.agent.unwatch()  # no kubelet restart while we measure
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGKILL)
        await agent.proc.wait()
    base = await direct_pull(c, runtime, f"{'k' if kill else 'n'}{seed}", seed)
    pod, _ = await private_pod(c, f"{'killed' if kill else 'notyet'}{seed}", seed + 1)
    pulled = (await c.pull(runtime, pod))[0]
    return Timed(what, base.seconds, pulled.seconds, pulled.ok and base.ok, pulled.output, [])


async def pull_with_hung_agent(
    c: ChartCluster, runtime: NodeRuntime, *, seed: int, limit: float = 60
) -> Timed:
    """SIGSTOP the agent, pull, and let the kubelet's probes (as rendered) deal with it."""
    assert runtime.agent is not None and c.cluster is not None
    agent = runtime.agent.containers[0]
    base = await direct_pull(c, runtime, f"h{seed}", seed)
    pod, _ = await private_pod(c, f"hung{seed}", seed + 1)
    loop = asyncio.get_running_loop()
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGSTOP)
    t0 = loop.time()
    c.cluster.record(runtime.agent.name, agent.name, "SIGSTOP")
    pulled = (await c.pull(runtime, pod, limit=limit + 30))[0]
    events = [
        f"{e.at - t0:6.2f} s  {e.what}"
        for e in c.cluster.events
        if e.pod == runtime.agent.name and e.at >= t0 - 0.01
    ]
    return Timed(
        "agent hung (SIGSTOP)",
        base.seconds,
        pulled.seconds,
        pulled.ok and base.ok,
        pulled.output,
        events,
    )
