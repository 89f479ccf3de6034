"""The workload preheater against a real root and agents and the real registry, with the
API's objects served over HTTP: a labelled workload's images land on exactly the nodes
its Pod template can schedule to, again when its images change, with its pull
secret's credentials, and Events on the workload tell how it went."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.service import Agent
from shoal.control.preheat_client import PreheatClient
from shoal.lab.image import BuiltImage, basic_authorization, build_image, push_image
from shoal.lab.origin import OriginRegistry
from shoal.webhook.config import PreheatConfig
from shoal.webhook.kube import KubeClient
from shoal.webhook.preheater import WorkloadPreheater
from shoal.webhook.workloads import PREHEAT_KEY
from tests.agent.preheat_cluster import OPERATOR, PreheatCluster, preheat_cluster
from tests.conftest import PASSWORD, USER
from tests.webhook.recorded import auth_entry, dockerconfigjson
from tests.webhook.workload_objects import container, namespace, node, with_image, workload
from tests.webhook.workloadapi import WorkloadApi

pytestmark = [pytest.mark.e2e]

ADDRESSES = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
DEPLOYMENTS = "/apis/apps/v1/deployments"


def complete(agent: Agent, img: BuiltImage) -> bool:
    assert agent.store is not None
    return all((i := agent.store.lookup(b.digest)) is not None and i.complete for b in img.blobs())


def nothing(agent: Agent) -> bool:
    return agent.store is not None and agent.store.digests() == []


async def settle(p: WorkloadPreheater, api: WorkloadApi, reason: str, count: int) -> None:
    """Resync until ``count`` Events of ``reason`` were written."""
    async with asyncio.timeout(40):
        while sum(e["reason"] == reason for e in api.created_events) < count:
            await p.reconcile()
            await asyncio.sleep(0.2)


async def run(tmp_path: Path, origin: OriginRegistry, body: Any) -> None:
    async with (
        preheat_cluster(
            tmp_path, origin.address, agents=3, addresses=ADDRESSES,
            root_extra={"PreheatConfig": {"checkSource": False}},
        ) as c,
        WorkloadApi() as api,
        KubeClient(api.url) as kube,
        PreheatClient(c.client.roots, OPERATOR.encode(), control=c.root.config.control) as roots,
    ):  # fmt: skip
        api.set("/api/v1/namespaces", namespace("shop"))
        api.set("/api/v1/nodes", node("n-1", ADDRESSES[0], labels={"pool": "web"}))
        api.set("/api/v1/nodes", node("n-2", ADDRESSES[1], labels={"pool": "web"}))
        batch = [{"key": "dedicated", "value": "batch", "effect": "NoSchedule"}]
        api.set("/api/v1/nodes", node("n-3", ADDRESSES[2], labels={"pool": "web"}, taints=batch))
        preheater = WorkloadPreheater(kube, roots, PreheatConfig(enable=True, resync_period=1))
        await body(c, api, preheater)


@pytest.mark.timeout(120)
async def test_a_labelled_deployment_is_preheated_where_it_can_land_and_again_on_change(
    tmp_path: Path, private_origin: OriginRegistry
) -> None:
    v1 = build_image(tmp_path / "v1", repo="shop/web", tag="v1", layer_sizes=[1 << 20], seed=5)
    v2 = build_image(tmp_path / "v2", repo="shop/web", tag="v2", layer_sizes=[1 << 20], seed=6)
    for img in (v1, v2):
        await push_image(private_origin.url, img, authorization=basic_authorization(USER, PASSWORD))
    host = private_origin.address
    spec = {
        "containers": [container(f"{host}/shop/web:v1")],
        "nodeSelector": {"pool": "web"},
        "imagePullSecrets": [{"name": "regcred"}],
    }
    web_v1 = workload("Deployment", "web", "shop", spec, labels={PREHEAT_KEY: "true"})
    other = workload(
        "StatefulSet", "db", "shop", {"containers": [container(f"{host}/shop/web:v2")]}
    )

    async def body(c: PreheatCluster, api: WorkloadApi, p: WorkloadPreheater) -> None:
        await api.put(
            dockerconfigjson("regcred", {host: auth_entry(USER, PASSWORD)}, namespace="shop")
        )
        api.set(DEPLOYMENTS, web_v1)
        api.set("/apis/apps/v1/statefulsets", other)  # not labelled: not preheated
        await settle(p, api, "PreheatDone", 1)
        # n-3's taint is not tolerated: the image is on n-1 and n-2 only
        assert [complete(a, v1) for a in c.agents] == [True, True, False]
        assert all(not complete(a, v2) for a in c.agents)
        started = next(e for e in api.created_events if e["reason"] == "PreheatStarted")
        assert started["involvedObject"]["uid"] == "uid-deployment-web"
        assert "on 2 node(s)" in started["message"]
        done = next(e for e in api.created_events if e["reason"] == "PreheatDone")
        assert done["message"] == "1 image(s) on 2/2 node(s)" and done["type"] == "Normal"
        jobs = len(c.root.preheat.book.jobs)
        await p.reconcile()  # nothing changed: no job
        assert len(c.root.preheat.book.jobs) == jobs
        api.set(DEPLOYMENTS, with_image(web_v1, f"{host}/shop/web:v2"))  # a new rollout
        await settle(p, api, "PreheatDone", 2)
        assert [complete(a, v2) for a in c.agents] == [True, True, False]
        assert len(c.root.preheat.book.jobs) == jobs + 1

    await run(tmp_path, private_origin, body)


@pytest.mark.timeout(120)
async def test_a_pull_secret_that_does_not_grant_access_stores_nothing_and_says_so(
    tmp_path: Path, private_origin: OriginRegistry, private_image: BuiltImage
) -> None:
    image = f"{private_origin.address}/{private_image.repo}:{private_image.tag}"
    spec = {"containers": [container(image)], "imagePullSecrets": [{"name": "stale"}]}

    async def body(c: PreheatCluster, api: WorkloadApi, p: WorkloadPreheater) -> None:
        stale = {private_origin.address: auth_entry(USER, "an-old-password")}
        await api.put(dockerconfigjson("stale", stale, namespace="shop"))
        api.set("/api/v1/namespaces", namespace("shop", labels={PREHEAT_KEY: "true"}))
        api.set(DEPLOYMENTS, workload("Deployment", "api", "shop", spec))
        await settle(p, api, "PreheatSkipped", 1)
        skipped = next(e for e in api.created_events if e["reason"] == "PreheatSkipped")
        assert "refused these credentials" in skipped["message"] and skipped["type"] == "Warning"
        await asyncio.sleep(2.5)  # the agents have polled since
        assert all(nothing(a) for a in c.agents) and c.root.store is not None
        assert c.root.store.digests() == []
        await p.reconcile()  # not retried until the images change
        assert sum(e["reason"] == "PreheatSkipped" for e in api.created_events) == 1

    await run(tmp_path, private_origin, body)
