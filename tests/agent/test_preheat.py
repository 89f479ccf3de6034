"""Preheat end to end in one process: a real root, real agents, the real registry.

What users rely on: the image lands on exactly the nodes asked for, through the swarm
(one copy from the origin), stays kept until the TTL, is then served to the runtime
from the node's store; credentials that do not grant access store nothing anywhere;
a cancel stops the work; only the operator credential starts jobs.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from functools import partial
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal.agent import heartbeat
from shoal.agent.sequence import LOOKAHEAD
from shoal.agent.service import Agent
from shoal.control.auth import HEADER, sign
from shoal.control.preheat import BlobRef, Credentials, JobSpec, Work
from shoal.errors import AccessDeniedError
from shoal.lab.image import BuiltImage, build_image, push_image
from shoal.lab.origin import OriginRegistry
from shoal.observability.collectors import PREHEAT_BLOB as BLOB_SECONDS
from shoal.root.preheat_resolve import basic
from tests.agent.preheat_cluster import SECRET, preheat_cluster
from tests.conftest import PASSWORD, USER
from tests.swarm_e2e.pulls import MANIFEST

pytestmark = [pytest.mark.e2e]


def ref(origin: OriginRegistry, img: BuiltImage) -> str:
    return f"{origin.address}/{img.repo}:{img.tag}"


def blob_gets(origin: OriginRegistry, img: BuiltImage) -> int:
    digests = {b.digest for b in img.blobs()}
    return sum(
        1
        for r in origin.served()
        if r.method == "GET" and r.uri.rsplit("/", 1)[-1] in digests and r.written
    )


def complete_on(agent: Agent, img: BuiltImage) -> bool:
    assert agent.store is not None
    return all(
        (info := agent.store.lookup(b.digest)) is not None and info.complete for b in img.blobs()
    )


def metric(agent: Agent, name: str, **labels: str) -> float:
    text = agent.metrics.render()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no {name} {labels}")


@pytest.fixture
async def big_image(tmp_path: Path, origin: OriginRegistry) -> BuiltImage:
    img = build_image(
        tmp_path / "img", repo="pre/app", tag="v1", layer_sizes=[2 << 20, 1 << 20, 300_000]
    )
    await push_image(origin.url, img)
    return img


@pytest.mark.timeout(60)
async def test_all_agents_get_the_image_once_from_the_origin_and_pull_it_from_the_store(
    tmp_path: Path, origin: OriginRegistry, big_image: BuiltImage
) -> None:
    audit = {"logAudit": True, "logAuditMode": "file", "logDir": str(tmp_path / "log")}
    async with preheat_cluster(
        tmp_path, origin.address, agents=3, agent_extra={"DeployConfig": audit}
    ) as c:
        job = await c.start(JobSpec(ref(origin, big_image), ttl=600))
        assert job.state == "running" and job.targets == "all agents"
        assert {b.digest for b in job.blobs} == {b.digest for b in big_image.blobs()}
        done = await c.wait(job.id)
        assert done.state == "done", done
        assert sorted(n.node for n in done.nodes) == ["node-0", "node-1", "node-2"]
        assert all(n.bytes_done == done.bytes_total for n in done.nodes)
        for agent in c.agents:
            assert complete_on(agent, big_image)
            assert agent.store is not None
            assert all(agent.store.kept(b.digest) for b in big_image.blobs())
            assert metric(agent, "shoal_preheat_blobs_total", result="fetched") == 4
            assert metric(agent, "shoal_preheat_kept_bytes") == done.bytes_total
            assert agent.metrics.observed(BLOB_SECONDS, result="fetched") == 4
        # audit lines like a pull's: one per blob with its size, one for the job
        lines = (tmp_path / "log" / "audit.log").read_text().splitlines()
        for b in big_image.blobs():
            assert sum(f"|preheat:blob[pathname={b.digest}][offset=0][size={b.size}]" in x
                       for x in lines) == 3  # fmt: skip
        repo = f"{origin.address}/{big_image.repo}"
        assert (
            sum(
                f"|preheat:job[pathname={repo}][offset=0][size={done.bytes_total}]" in x
                for x in lines
            )
            == 3
        )
        # through the swarm: the root fetched each blob once, no agent went to the origin
        assert blob_gets(origin, big_image) == len(big_image.blobs())
        assert all(metric(a, "shoal_origin_fallback_total") == 0 for a in c.agents)

        # the rollout: the runtime's pull is served from the node's store
        agent = c.agents[1]
        base = f"http://127.0.0.1:{agent.proxy_port}/v2/{big_image.repo}"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/manifests/{big_image.tag}", headers={"Accept": MANIFEST}):
                pass
            for b in big_image.blobs():
                async with s.get(f"{base}/blobs/{b.digest}") as r:
                    assert r.status == 200
                    assert await r.read() == b.path.read_bytes()
        assert blob_gets(origin, big_image) == len(big_image.blobs())
        assert metric(agent, "shoal_blob_bytes_total", source="store") == done.bytes_total


@pytest.mark.timeout(60)
async def test_work_reaches_idle_agents_at_once_not_at_their_next_heartbeat(
    tmp_path: Path,
    origin: OriginRegistry,
    big_image: BuiltImage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # no heartbeat in the test's time: the agents hear of the job through their watch
    monkeypatch.setattr(heartbeat, "INTERVAL", 600.0)
    async with preheat_cluster(tmp_path, origin.address, agents=2) as c:
        await c.settled(limit=5.0)  # the watches' first calls: the root knows both
        runners = [a.preheat for a in c.agents if a.preheat is not None]
        assert len(runners) == 2 and not any(r.jobs for r in runners)
        # a slow job (0.2 MB/s) reaches both, and so does its cancel
        slow = await c.start(JobSpec(ref(origin, big_image), rate=0.2, key="slow"))
        async with asyncio.timeout(10):
            while not all(slow.id in r.jobs for r in runners):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await c.client.cancel(slow.id)
        async with asyncio.timeout(10):
            while any(slow.id in r.jobs for r in runners):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        job = await c.start(JobSpec(ref(origin, big_image), count=2))
        done = await c.wait(job.id, limit=20.0)
        assert done.state == "done" and len(done.nodes) == 2, done
        assert all(complete_on(a, big_image) for a in c.agents)
        stopping = time.monotonic()
    # the root let its held watches go at once when it stopped
    assert time.monotonic() - stopping < 5.0


def _note(into: list[str], digest: str, _index: int) -> None:
    into.append(digest)


@pytest.mark.timeout(60)
async def test_a_jobs_blobs_go_in_order_each_after_a_quarter_of_the_one_before(
    tmp_path: Path, origin: OriginRegistry, big_image: BuiltImage
) -> None:
    """All at once, every blob's trees would share every link and each piece would
    cross each hop at a fraction of the rate; in order, overlapping, the origin's link
    stays busy and the pieces move at a quarter of the link (docs/preheat.md)."""
    # the root's upload is the link (4 MB/s): the blobs take long enough to overlap
    slow = {"P2PConfig": {"throttleLimitMB": 4}}
    async with preheat_cluster(tmp_path, origin.address, agents=2, root_extra=slow) as c:
        landed: list[list[str]] = []  # per agent: the digest of each piece, in store order
        for agent in c.agents:
            assert agent.store is not None
            landed.append([])
            agent.store.add_listener(partial(_note, landed[-1]))
        job = await c.start(JobSpec(ref(origin, big_image), ttl=600))
        done = await c.wait(job.id)
        assert done.state == "done", done
        order = [b.digest for b in job.blobs]
        for n, agent in enumerate(c.agents):
            assert agent.store is not None
            for before, after in itertools.pairwise(order):
                info = agent.store.lookup(before)
                assert info is not None
                held = landed[n][: landed[n].index(after)].count(before)
                assert held >= LOOKAHEAD * info.piece_count, (n, before, after, landed[n])
        assert blob_gets(origin, big_image) == len(big_image.blobs())


@pytest.mark.timeout(60)
async def test_count_and_named_nodes_get_it_and_no_other(
    tmp_path: Path, origin: OriginRegistry, big_image: BuiltImage
) -> None:
    async with preheat_cluster(tmp_path, origin.address, agents=3) as c:
        named = await c.wait((await c.start(JobSpec(ref(origin, big_image), nodes=["node-2"]))).id)
        assert named.state == "done" and [n.node for n in named.nodes] == ["node-2"]
        assert [complete_on(a, big_image) for a in c.agents] == [False, False, True]
        again = await c.start(JobSpec(ref(origin, big_image), count=2, key="k"))
        same = await c.start(JobSpec(ref(origin, big_image), count=2, key="k"))
        assert same.id == again.id  # one live job per key and image
        counted = await c.wait(again.id)
        assert counted.state == "done" and len(counted.nodes) == 2, counted
        assert sum(complete_on(a, big_image) for a in c.agents) >= 2


@pytest.mark.timeout(60)
async def test_credentials_that_do_not_grant_access_store_nothing_anywhere(
    tmp_path: Path, private_origin: OriginRegistry, private_image: BuiltImage
) -> None:
    image = ref(private_origin, private_image)
    async with preheat_cluster(tmp_path, private_origin.address, agents=2) as c:
        await asyncio.sleep(2.5)  # the agents have polled: they would take work if any
        for creds in (Credentials(), Credentials(USER, "wrong-password")):
            with pytest.raises(AccessDeniedError, match="refused these credentials"):
                await c.start(JobSpec(image, credentials=creds))
        # an agent handed work with bad credentials (as if the root had been fooled):
        # its own access check refuses before it fetches anything
        agent = c.agents[0]
        assert agent.preheat is not None
        blobs = [BlobRef(b.digest, b.size) for b in private_image.blobs()]
        bad = Work("forged", private_origin.address, private_image.repo,
                   basic(USER, "wrong-password"), blobs, ttl=60)  # fmt: skip
        agent.preheat._start(f"127.0.0.1:{c.root.control_port}", bad)
        task = agent.preheat.jobs["forged"].task
        assert task is not None
        await task
        assert agent.preheat.jobs["forged"].state == "failed"
        assert "refused access" in agent.preheat.jobs["forged"].reason
        assert metric(agent, "shoal_preheat_blobs_total", result="denied") >= 1
        await asyncio.sleep(2.5)  # nothing is on its way anywhere either
        for store in (c.root.store, *(a.store for a in c.agents)):
            assert store is not None and store.digests() == [], store
        assert blob_gets(private_origin, private_image) == 0

        # the right credentials: the job runs, the agents read with a header, not the password
        job = await c.start(JobSpec(image, credentials=Credentials(USER, PASSWORD)))
        assert (await c.wait(job.id)).state == "done"
        assert all(complete_on(a, private_image) for a in c.agents)


@pytest.mark.timeout(60)
async def test_cancel_stops_the_reads_and_drops_what_landed(
    tmp_path: Path, origin: OriginRegistry
) -> None:
    img = build_image(tmp_path / "slow", repo="pre/slow", tag="v1", layer_sizes=[6 << 20])
    await push_image(origin.url, img)
    async with preheat_cluster(tmp_path, origin.address, agents=2) as c:
        job = await c.start(JobSpec(ref(origin, img), rate=0.5))  # 0.5 MB/s: 12 s each
        async with asyncio.timeout(10):
            while True:  # progress reaches the root with the agents' heartbeats
                running = await c.client.get(job.id)
                assert running.state == "running"
                if len(running.nodes) == 2 and all(n.bytes_done > 0 for n in running.nodes):
                    break
                await asyncio.sleep(0.2)
        assert all(n.bytes_done < running.bytes_total for n in running.nodes), running
        cancelled = await c.client.cancel(job.id)
        assert cancelled.state == "cancelled"
        await asyncio.sleep(3.0)  # the agents hear of it at their next heartbeat
        for agent in c.agents:
            assert agent.preheat is not None and job.id not in agent.preheat.jobs
            layer = img.layers[0].digest
            assert agent.store is not None and agent.store.lookup(layer) is None
            assert metric(agent, "shoal_preheat_node_jobs_total", result="cancelled") == 1
            assert 0 < metric(agent, "shoal_preheat_bytes_total") < img.layers[0].size


@pytest.mark.timeout(60)
async def test_ttl_end_gives_the_blobs_back_to_plain_lru(
    tmp_path: Path, origin: OriginRegistry, big_image: BuiltImage
) -> None:
    async with preheat_cluster(tmp_path, origin.address, agents=1) as c:
        job = await c.start(JobSpec(ref(origin, big_image), ttl=4))
        assert (await c.wait(job.id)).state == "done"
        agent = c.agents[0]
        assert agent.store is not None
        assert all(agent.store.kept(b.digest) for b in big_image.blobs())
        deadline = time.monotonic() + 15
        while any(agent.store.kept(b.digest) for b in big_image.blobs()):
            assert time.monotonic() < deadline, "still kept after the TTL"
            await asyncio.sleep(0.2)
        assert complete_on(agent, big_image)  # still there: only no longer kept
        assert metric(agent, "shoal_preheat_kept_bytes") == 0


@pytest.mark.timeout(60)
async def test_only_the_operator_credential_starts_jobs(
    tmp_path: Path, origin: OriginRegistry
) -> None:
    async with preheat_cluster(tmp_path, origin.address, agents=0) as c:
        url = f"https://127.0.0.1:{c.root.control_port}/preheat/v1/jobs"
        body = b'{"image": "x/y:z"}'
        headers = {HEADER: sign(SECRET.encode(), "POST", "/preheat/v1/jobs", body, time.time())}
        ctx = ssl.create_default_context(cafile=str(c.certs.ca_file))
        async with (
            aiohttp.ClientSession() as s,
            s.post(url, data=body, headers=headers, ssl=ctx) as r,
        ):
            assert r.status == 401  # the cluster secret a node holds does not do
    async with preheat_cluster(tmp_path / "off", origin.address, agents=0, operator="") as c:
        with pytest.raises(AccessDeniedError, match="job API is off"):
            await c.start(JobSpec(f"{origin.address}/x/y:z"))
