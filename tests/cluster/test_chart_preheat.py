"""The workload preheater as the chart installs it (``preheat.enabled``), in the chart
cluster (``cluster.py``), with the API server refusing what the rendered RBAC does not
grant (``rbac.py``).

The webhook, the roots and the agents are the rendered Pods, with the rendered config
files and the Secrets the bootstrap Job made (the operator credential among them); the
stand-in API server serves the Node objects of the cluster's nodes (their InternalIP is
the address their agent advertises) and the Deployments a user would create. Three
nodes, two of them labelled ``pool=web``; a Deployment labelled ``shoal.io/preheat``
whose Pod template selects that pool:

1. its image's blobs land complete, each matching its digest, in the stores of exactly
   the two ``pool=web`` nodes' agents, and nothing lands on the third;
2. through the swarm: the registry sent one copy of the blobs, all of it to the roots,
   none to a node;
3. ``PreheatStarted`` and then ``PreheatDone`` are Events on the Deployment;
4. the rollout's pull (``ctr``, the Pod as the webhook rewrote it) on a ``pool=web`` node
   is served from that node's store: the agent counts the blob bytes as ``store``, none
   as ``p2p`` or ``origin``, and the registry sends no blob again;
5. every API call the webhook made was granted by the chart's RBAC.

Then the negative: a Deployment whose pull secret does not grant access gets
``PreheatSkipped`` with the registry's refusal, no ``PreheatStarted``, and nothing of
its image is fetched from the registry or stored on any node.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shoal.cache.blob import load_blob
from shoal.cache.journal import blob_dir
from shoal.lab.image import BuiltImage
from shoal.webhook.workloads import PREHEAT_KEY
from tests.cluster.cluster import APPS, LABEL, PRIVATE, PULL_SECRET, USER, ChartCluster, NodeRuntime
from tests.cluster.manifests import Rendered
from tests.cluster.scenario import metric_values, mib
from tests.webhook.workload_objects import container, workload

pytestmark = [pytest.mark.e2e, pytest.mark.netns, pytest.mark.slow]

DEPLOYMENTS = "/apis/apps/v1/deployments"
WEBHOOK_SA = "shoal-system:shoal-webhook"
SETS = [
    "preheat.enabled=true",
    "preheat.resyncPeriod=1",
    "root.replicas=2",
    "webhook.replicas=1",
    "p2p.v2.exporter.enable=true",
]
#: copies of the image's blobs the registry may send for all nodes together
MAX_COPIES = 1.05


def stored(c: ChartCluster, runtime: NodeRuntime, image: BuiltImage) -> list[str]:
    """The image's blobs complete in the node's agent store, each read back and hashed."""
    assert c.rendered is not None
    ds = c.rendered.workload("DaemonSet", "agent")
    (cache,) = [v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "cache"]
    root = runtime.node.host_path(cache["hostPath"]["path"])
    out = []
    for blob in image.blobs():
        directory = blob_dir(root, blob.digest)
        if not directory.is_dir() or not load_blob(directory).complete:
            continue
        data = (directory / "data").read_bytes()
        if "sha256:" + hashlib.sha256(data).hexdigest() == blob.digest:
            out.append(blob.digest)
    return out


def store_has_anything(c: ChartCluster, runtime: NodeRuntime) -> bool:
    assert c.rendered is not None
    ds = c.rendered.workload("DaemonSet", "agent")
    (cache,) = [v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "cache"]
    blobs = runtime.node.host_path(cache["hostPath"]["path"]) / "blobs" / "sha256"
    return blobs.is_dir() and any(blobs.iterdir())


def blob_gets(c: ChartCluster, image: BuiltImage) -> list[tuple[str, int]]:
    """(remote address, bytes) of each blob body the registry sent."""
    digests = {b.digest for b in image.blobs()}
    return [
        (s.remote, s.written)
        for s in c.registries[PRIVATE].served()
        if s.method == "GET" and s.blob in digests and s.written
    ]


def events_of(c: ChartCluster, name: str) -> list[dict[str, Any]]:
    assert c.api is not None
    return [e for e in c.api.created_events if e["involvedObject"]["name"] == name]


async def wait_event(c: ChartCluster, name: str, reasons: set[str], limit: float) -> dict[str, Any]:
    async with asyncio.timeout(limit):
        while True:
            for e in events_of(c, name):
                if e["reason"] in reasons:
                    return e
            await asyncio.sleep(0.2)


async def until(done: Callable[[], bool], limit: float) -> None:
    async with asyncio.timeout(limit):
        while True:
            if done():
                return
            await asyncio.sleep(0.2)


async def agent_bytes(c: ChartCluster, runtime: NodeRuntime) -> dict[str, float]:
    """The mirror's blob bytes sent to the runtime, by source (store, p2p, origin)."""
    values = metric_values(await c.agent_metrics(runtime)).get("shoal_blob_bytes_total", {})
    return {dict(labels).get("source", ""): v for labels, v in values.items()}


async def bad_secret(c: ChartCluster, name: str) -> None:
    """A pull secret for the private registry whose password is wrong."""
    assert c.api is not None
    auth = base64.b64encode(f"{USER}:wrong-password".encode()).decode()
    config = {"auths": {PRIVATE: {"username": USER, "password": "wrong-password", "auth": auth}}}
    await c.api.put(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": name, "namespace": APPS},
            "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
        }
    )


def deployment(name: str, image: str, secret: str) -> dict[str, Any]:
    spec = {
        "nodeSelector": {"pool": "web"},
        "imagePullSecrets": [{"name": secret}],
        "containers": [container(image)],
    }
    return workload("Deployment", name, APPS, spec, labels={PREHEAT_KEY: "true"})


@pytest.mark.timeout(150)
async def test_a_labelled_deployment_is_preheated_on_its_nodes_as_the_chart_installs_it(
    tmp_path: Path,
) -> None:
    labels = {0: {"pool": "web"}, 1: {"pool": "web"}, 2: {"pool": "batch"}}
    async with ChartCluster(tmp_path / "c", nodes=3, sets=SETS, node_labels=labels, rbac=True) as c:
        assert c.api is not None
        web, other = c.nodes[:2], c.nodes[2]
        image = c.image("pre-v1", "team/web", "v1", [mib(2), mib(1)], seed=70)
        await c.push(PRIVATE, image)
        ref = f"{PRIVATE}/{image.repo}:{image.tag}"
        pushed = len(blob_gets(c, image))

        c.api.set(DEPLOYMENTS, deployment("web", ref, PULL_SECRET))
        done = await wait_event(c, "web", {"PreheatDone", "PreheatFailed", "PreheatSkipped"}, 60)
        reasons = [e["reason"] for e in events_of(c, "web")]
        assert reasons == ["PreheatStarted", "PreheatDone"], events_of(c, "web")
        assert done["message"] == "1 image(s) on 2/2 node(s)"
        assert done["involvedObject"]["uid"] == "uid-deployment-web"

        # 1. on exactly the selected nodes
        digests = sorted(b.digest for b in image.blobs())
        for runtime in web:
            assert sorted(stored(c, runtime, image)) == digests, runtime.node.name
        assert not store_has_anything(c, other)
        # 2. one copy from the registry, to the roots only
        got = blob_gets(c, image)[pushed:]
        copies = sum(n for _, n in got) / image.total_size
        assert copies <= MAX_COPIES, copies
        assert {remote for remote, _ in got} <= set(c.root_names.values()), got
        assert not {remote for remote, _ in got} & c.node_ips()

        # 4. the rollout's pull on a selected node comes from its own store
        before = await agent_bytes(c, web[0])
        sent_before = len(blob_gets(c, image))
        pod = await c.admit(c.workload("web", [ref]), namespace_labels={LABEL: "p2p"})
        (pulled,) = await c.pull(web[0], pod)
        assert pulled.ok, pulled.output
        after = await agent_bytes(c, web[0])
        layers = sum(b.size for b in image.layers)
        assert after.get("store", 0) - before.get("store", 0) >= layers, (before, after)
        for source in ("p2p", "origin"):
            assert after.get(source, 0) == before.get(source, 0), (source, before, after)
        assert len(blob_gets(c, image)) == sent_before

        # the negative: credentials that do not grant access
        denied = c.image("pre-denied", "team/denied", "v1", [mib(1)], seed=80)
        await c.push(PRIVATE, denied)
        pushed = len(blob_gets(c, denied))
        await bad_secret(c, "badcred")
        c.api.set(
            DEPLOYMENTS,
            deployment("locked", f"{PRIVATE}/{denied.repo}:{denied.tag}", "badcred"),
        )
        skipped = await wait_event(c, "locked", {"PreheatSkipped", "PreheatDone"}, 30)
        assert skipped["reason"] == "PreheatSkipped" and skipped["type"] == "Warning"
        assert "team/denied" in skipped["message"], skipped
        await asyncio.sleep(2)  # two more resyncs: not retried, nothing started
        assert [e["reason"] for e in events_of(c, "locked")] == ["PreheatSkipped"]
        assert blob_gets(c, denied)[pushed:] == []
        for runtime in c.nodes:
            assert stored(c, runtime, denied) == [], runtime.node.name

        # 5. the chart's RBAC granted every call the webhook made, and it made them
        assert c.api.denied == [], c.api.denied
        called = {(m, p) for who, m, p in c.api.calls if who == WEBHOOK_SA}
        for path in ("/api/v1/nodes", "/api/v1/namespaces", DEPLOYMENTS):
            assert ("GET", path) in called, path
        assert ("POST", f"/api/v1/namespaces/{APPS}/events") in called
        assert ("GET", f"/api/v1/namespaces/{APPS}/secrets/badcred") in called


def without_event_rule(rendered: Rendered) -> None:
    """The chart's preheat role without its Events rule."""
    for doc in rendered.by_kind("ClusterRole"):
        if doc["metadata"]["name"].endswith("-preheat"):
            doc["rules"] = [r for r in doc["rules"] if "events" not in r["resources"]]


@pytest.mark.timeout(90)
async def test_the_negative_control_a_missing_rule_is_refused(tmp_path: Path) -> None:
    """The API server's RBAC bites: the same install without the Events rule preheats
    (the roots' job API does not need the API server) but no Event is written, and the
    refused calls are the webhook's Event creates."""
    labels = {0: {"pool": "web"}}
    async with ChartCluster(
        tmp_path / "c", nodes=1, sets=SETS, node_labels=labels, rbac=True,
        patch=without_event_rule,
    ) as c:  # fmt: skip
        assert c.api is not None
        image = c.image("pre-nc", "team/web", "nc", [mib(1)], seed=90)
        await c.push(PRIVATE, image)
        c.api.set(DEPLOYMENTS, deployment("web", f"{PRIVATE}/team/web:nc", PULL_SECRET))
        await until(lambda: len(stored(c, c.nodes[0], image)) == len(image.blobs()), 40)
        await until(lambda: bool(c.api and c.api.denied), 10)
        assert events_of(c, "web") == []
        assert {(who, m, p) for who, m, p in c.api.denied} == {
            (WEBHOOK_SA, "POST", f"/api/v1/namespaces/{APPS}/events")
        }
