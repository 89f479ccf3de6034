"""The Helm chart, run as a cluster from its rendered manifests (see ``cluster.py``).

No API server can run here, so everything the render asks for is done by the harness
as the API server, the controllers and the kubelets would, and everything that moves
an image is real: Debian's ``docker-registry`` (one public, one htpasswd), shoal's
processes started with the rendered command, args, env, files and security context,
one containerd per node reading the hosts.toml the rendered init container wrote, and
``ctr`` pulling with the pull-secret clone's credentials. The stand-in for the API
server is ``apiserver.py`` (Secrets, the webhook configuration, and the preheater's
lists and Events: ``test_chart_preheat.py``).

Three runs: the chart with its defaults (3 roots) and a negative control on the same
cluster, the roots' old port, which the checks must catch; and the chart with a
user's overrides on 4 nodes, with the node agent killed, not yet started, and hung.
By hand, with a report: ``python -m tests.cluster``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.cluster import ChartCluster
from tests.cluster.manifests import Rendered
from tests.cluster.scenario import (
    check_pulls,
    pull_everywhere,
    pull_with_hung_agent,
    pull_without_agent,
)

pytestmark = [pytest.mark.e2e, pytest.mark.netns, pytest.mark.slow]
HERE = Path(__file__).parent
#: the issue's bounds
KILLED_ADDED_S = 2.0
HUNG_S = 60.0


def old_roots_port(rendered: Rendered) -> None:
    """What the chart rendered before the fix: the roots' peer port in the root list."""
    for doc in rendered.by_kind("ConfigMap"):
        data = doc.get("data") or {}
        if "p2p-config.yaml" in data:
            data["p2p-config.yaml"] = data["p2p-config.yaml"].replace(
                '.svc.cluster.local:65001"', '.svc.cluster.local:65002"'
            )


@pytest.mark.timeout(200)
async def test_defaults_pull_through_agents_and_the_old_port_is_caught(tmp_path: Path) -> None:
    async with ChartCluster(tmp_path / "defaults", nodes=2) as c:
        assert len(c.roots) == 3  # root.replicas' default
        story = await pull_everywhere(c, "v1", seed=10)
        findings = await check_pulls(c, story)
        assert findings == [], findings
        assert story.facts["public.registry.test copies"] <= 1.05

    # the negative control: the same chart with the old template's root list
    async with ChartCluster(
        tmp_path / "old-port", nodes=2, patch=old_roots_port, agents_ready=False, webhook=True
    ) as c:
        story = await pull_everywhere(c, "v2", seed=20, private=False)
        findings = await check_pulls(c, story)
    text = "\n".join(findings)
    assert "agent not ready" in text and "not a root's control API" in text, text
    assert "fallbacks in the agent's log" in text, text
    assert "copies of library/app:v2" in text, text


@pytest.mark.timeout(240)
async def test_overrides_on_four_nodes_and_pulls_that_survive_the_agent(tmp_path: Path) -> None:
    values = [HERE / "values-cluster.yaml"]
    async with ChartCluster(
        tmp_path / "c", nodes=4, values=values, release="acme", namespace="p2p-system", hold=[3]
    ) as c:
        held = c.nodes[3]
        # the names resolve and the pull goes to the registry before the agent's start
        early = await pull_without_agent(c, held, seed=30, kill=False)
        assert early.ok, early.output
        await c.start_agent(held)

        story = await pull_everywhere(c, "v1", seed=40)
        findings = await check_pulls(c, story)
        assert findings == [], findings
        for registry in ("public.registry.test", "private.registry.test"):
            assert story.facts[f"{registry} copies"] <= 1.05

        killed = await pull_without_agent(c, c.nodes[1], seed=50, kill=True)
        assert killed.ok, killed.output
        assert killed.added <= KILLED_ADDED_S, killed

        hung = await pull_with_hung_agent(c, c.nodes[2], seed=60, limit=HUNG_S)
        assert hung.ok, hung.output
        assert hung.faulty <= HUNG_S, hung
        assert any("liveness failed (3)" in e for e in hung.events), hung.events
        # the kubelet restarted it and it serves again
        agent = c.nodes[2].agent
        assert agent is not None
        await c.wait_agents([agent])
        status, _ = await c.agent_readyz(c.nodes[2])
        assert status == 200
