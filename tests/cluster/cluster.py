"""The chart run as a cluster, without an API server: what ``helm install`` would start.

``async with ChartCluster(workdir, nodes=4) as c:`` renders the chart with ``helm
template``, then does what the API server, the controllers and the kubelets would do
with the render:

1. the network (``network.py``): a namespace per node and per Pod on one bridge; two
   registries outside the cluster, ``public.registry.test`` (anonymous) and
   ``private.registry.test`` (htpasswd), both Debian's ``docker-registry`` on port 80;
2. the API server (``apiserver.py``) holding the rendered objects, the pull secret of
   the workloads' namespace, every Secret the hook Jobs make, the namespaces and the
   nodes' Node objects (their ``InternalIP``, the kubelet's labels and ``node_labels``),
   and with ``rbac=True`` refusing what the rendered RBAC does not grant;
3. the ``pre-install`` hooks, run as Pods: the bootstrap Job makes the cluster secret
   and the webhook's certificate;
4. every root of the StatefulSet, each in its own namespace at its stable DNS name;
   on every node a containerd of its own, then the agent DaemonSet's Pod: the
   ``node-setup`` init container writes the node's ``hosts.toml`` files and ``/etc/hosts``
   block, the agent starts; the kubelet's probes run as rendered (``kubelet.py``);
5. the webhook Deployment's Pod and the ``post-install`` hook (the CA into the webhook
   configuration).

Then ``admit()`` sends a real AdmissionReview to the webhook, through its Service and
over TLS checked against the configuration's ``caBundle``, as the API server would, and
``pull()`` pulls a Pod's images on a node with ``ctr``, with the credentials the
kubelet would pick from the Pod's pull secrets (the webhook's clones).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import shutil
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import aiohttp
import jsonpatch
import trustme

from shoal.lab.image import BuiltImage, basic_authorization, build_image, push_image
from shoal.lab.origin import OriginRegistry
from shoal.lab.process import stop_process
from tests.cluster.apiserver import ApiServer
from tests.cluster.kubelet import Cluster, Node, Pod, PodFailedError
from tests.cluster.manifests import Doc, Rendered, container_port, matches, render
from tests.cluster.network import Host, Network, cleanup_leftovers
from tests.cluster.rbac import Authorizer
from tests.webhook.pods import admission_review, container, deployment_pod
from tests.webhook.workload_objects import namespace as namespace_object
from tests.webhook.workload_objects import node as node_object

PUBLIC = "public.registry.test"
PRIVATE = "private.registry.test"
USER, PASSWORD = "alice", "s3cret-pass"
APPS = "apps"
LABEL = "k8s.aliyun.com/image-accelerate-mode"
PULL_SECRET = "regcred"

Patch = Callable[[Rendered], None]


class ClusterFailedError(Exception):
    pass


@dataclass
class Served:
    """One request a registry answered, from its own log."""

    method: str
    uri: str
    status: int
    written: int
    remote: str
    agent: str  # User-Agent

    @property
    def blob(self) -> str:
        path = self.uri.split("?")[0]
        return path.rsplit("/", 1)[1] if "/blobs/" in path else ""


@dataclass
class Registry:
    name: str
    host: Host
    origin: OriginRegistry
    private: bool

    @property
    def url(self) -> str:
        return f"http://{self.host.ip}"

    def served(self) -> list[Served]:
        out = []
        for line in self.origin.log_path.read_text(errors="replace").splitlines():
            if '"response completed"' not in line:
                continue
            e = json.loads(line)
            out.append(
                Served(
                    str(e.get("http.request.method")),
                    str(e.get("http.request.uri")),
                    int(e.get("http.response.status", 0)),
                    int(e.get("http.response.written", 0)),
                    str(e.get("http.request.remoteaddr", "")).rsplit(":", 1)[0],
                    str(e.get("http.request.useragent", "")),
                )
            )
        return out


@dataclass
class Pulled:
    node: str
    image: str
    seconds: float
    ok: bool
    output: str


@dataclass
class NodeRuntime:
    node: Node
    containerd: asyncio.subprocess.Process | None = None
    socket: Path = field(default=Path())
    agent: Pod | None = None

    @property
    def hosts_dir(self) -> Path:
        return self.node.host_path("/etc/containerd/certs.d")


class ChartCluster:
    def __init__(
        self,
        workdir: Path,
        *,
        nodes: int = 4,
        values: Sequence[Path] = (),
        sets: Sequence[str] = (),
        release: str = "shoal",
        namespace: str = "shoal-system",
        patch: Patch | None = None,
        webhook: bool = True,
        hold: Sequence[int] = (),
        agents_ready: bool = True,
        node_labels: Mapping[int, dict[str, str]] | None = None,
        rbac: bool = False,
    ) -> None:
        """``hold``: nodes whose agent container is not started (only its init container
        ran) until ``start_agent``; ``agents_ready``: wait for the agents' readiness
        (else only for their startup probe: a misconfigured agent is never ready);
        ``node_labels``: labels of node N's Node object beyond the kubelet's own;
        ``rbac``: the API server refuses what the rendered RBAC does not grant."""
        self.workdir = workdir
        self.nodes_n = nodes
        self.values = list(values)
        self.sets = [
            f"upstream.registries[0].host={PUBLIC}",
            "upstream.registries[0].plainHTTP=true",
            f"upstream.registries[1].host={PRIVATE}",
            "upstream.registries[1].plainHTTP=true",
            *sets,
        ]
        self.release = release
        self.namespace = namespace
        self.patch = patch
        self.with_webhook = webhook
        self.hold = set(hold)
        self.agents_ready = agents_ready
        self.node_labels = dict(node_labels or {})
        self.rbac = rbac
        self.net = Network()
        self.rendered: Rendered | None = None
        self.api: ApiServer | None = None
        self.cluster: Cluster | None = None
        self.registries: dict[str, Registry] = {}
        self.roots: list[Pod] = []
        #: each root's StatefulSet DNS name -> its address
        self.root_names: dict[str, str] = {}
        self.nodes: list[NodeRuntime] = []
        self.webhook: Pod | None = None
        self.jobs: list[Pod] = []
        self.started_at = 0.0
        self.timings: dict[str, float] = {}
        self._sockets: Path | None = None

    def __repr__(self) -> str:
        return (
            f"<ChartCluster {self.net.subnet or 'down'} | nodes={len(self.nodes)} "
            f"roots={len(self.roots)} webhook={'up' if self.webhook else 'no'}>"
        )

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> ChartCluster:
        self.started_at = time.monotonic()
        try:
            await self._up()
        except BaseException:
            await self.down()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.down()

    def _mark(self, what: str) -> None:
        self.timings[what] = round(time.monotonic() - self.started_at, 2)

    async def _up(self) -> None:
        cleanup_leftovers()
        self.workdir.mkdir(parents=True, exist_ok=True)
        rendered = render(self.release, self.namespace, values=self.values, sets=self.sets)
        if self.patch is not None:
            self.patch(rendered)
        self.rendered = rendered
        await asyncio.to_thread(self.net.up)
        await self._api()
        await self._registries()
        self._mark("network, API server, registries")
        assert self.cluster is not None
        await self._hooks("pre-install")
        for doc in rendered.plain():
            assert self.api is not None
            self.api.apply(doc)
        await self._start_roots()
        self._mark("roots")
        if self.with_webhook and rendered.by_kind("Deployment"):
            await self._start_webhook()
            self._mark("webhook")
        await self._start_nodes()
        self._mark("nodes")
        await self._hooks("post-install")

    async def down(self) -> None:
        pods = [*self.jobs, *self.roots, *(n.agent for n in self.nodes if n.agent)]
        if self.webhook is not None:
            pods.append(self.webhook)
        await asyncio.gather(*(p.stop() for p in pods), return_exceptions=True)
        for n in self.nodes:
            if n.containerd is not None:
                await stop_process(n.containerd)
                n.containerd = None
        for reg in self.registries.values():
            await reg.origin.stop()
        if self.api is not None:
            await self.api.__aexit__(None, None, None)
            self.api = None
        await asyncio.to_thread(self.net.down)
        if self._sockets is not None:
            shutil.rmtree(self._sockets, ignore_errors=True)
            self._sockets = None

    # --- the parts -------------------------------------------------------------------------

    async def _api(self) -> None:
        ca = trustme.CA()
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(self.net.gateway).configure_cert(server_ctx)
        assert self.rendered is not None
        authorizer = Authorizer(self.rendered.docs) if self.rbac else None
        self.api = ApiServer(self.net.gateway, server_ctx, authorizer)
        await self.api.__aenter__()
        for ns in (self.namespace, APPS):
            self.api.set("/api/v1/namespaces", namespace_object(ns))
        configmaps = {
            (d["metadata"].get("namespace", self.namespace), d["metadata"]["name"]): d
            for d in self.rendered.by_kind("ConfigMap")
        }
        self.cluster = Cluster(self.workdir, self.api, ca.cert_pem.bytes().decode(), configmaps)
        # the workloads' pull secret, as its owner would have created it
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        config = {"auths": {PRIVATE: {"username": USER, "password": PASSWORD, "auth": auth}}}
        await self.api.put(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/dockerconfigjson",
                "metadata": {"name": PULL_SECRET, "namespace": APPS},
                "data": {
                    ".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()
                },
            }
        )

    async def _registries(self) -> None:
        """Two registries outside the cluster, each on port 80 of its own address."""
        htpasswd = self.workdir / "htpasswd"
        made = await asyncio.create_subprocess_exec(
            "htpasswd", "-Bbc", str(htpasswd), USER, PASSWORD, stderr=asyncio.subprocess.DEVNULL
        )
        if await made.wait() != 0:
            raise ClusterFailedError("htpasswd failed")
        for name, private in ((PUBLIC, False), (PRIVATE, True)):
            host = await asyncio.to_thread(self.net.add, name.split(".")[0] + "-reg")
            self.net.write_hosts(host, f"127.0.0.1 localhost\n{host.ip} {name}\n")
            origin = OriginRegistry(
                self.workdir / name,
                host=host.ip,
                port=80,
                netns=host.netns,
                htpasswd=htpasswd if private else None,
            )
            await origin.start()
            self.registries[name] = Registry(name, host, origin, private)
        async with aiohttp.ClientSession() as session:
            for reg in self.registries.values():
                for _ in range(400):
                    try:
                        async with session.get(f"{reg.url}/v2/") as resp:
                            if resp.status in (200, 401):
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.05)
                else:
                    raise ClusterFailedError(f"registry {reg.name} did not come up")
        assert self.cluster is not None
        for reg in self.registries.values():
            self.cluster.dns[reg.name] = reg.host.ip

    async def push(self, registry: str, image: BuiltImage) -> None:
        reg = self.registries[registry]
        auth = basic_authorization(USER, PASSWORD) if reg.private else ""
        await push_image(reg.url, image, authorization=auth)

    def image(self, name: str, repo: str, tag: str, sizes: list[int], seed: int) -> BuiltImage:
        return build_image(
            self.workdir / "images" / name, repo=repo, tag=tag, layer_sizes=sizes, seed=seed
        )

    def _pod_host(self, name: str) -> Host:
        host = self.net.add(name)
        return host

    def _node_for_pod(self, host: Host) -> Node:
        """Pods not on the host network: the node they run on does not matter here."""
        root = self.workdir / "nodes" / f"pod-{host.name}"
        return Node(
            f"pod-{host.name}", host, root, self.net.write_hosts(host, "127.0.0.1 localhost\n")
        )

    async def _hooks(self, event: str) -> None:
        assert self.rendered is not None and self.cluster is not None
        for doc in self.rendered.hooks(event):
            if doc["kind"] != "Job":
                continue  # RBAC: no authorizer here (the chart test checks the rules)
            name = doc["metadata"]["name"]
            host = await asyncio.to_thread(self._pod_host, f"job-{event}")
            pod = Pod(
                self.cluster,
                f"{name}-{event}",
                self.namespace,
                doc["spec"]["template"],
                node=self._node_for_pod(host),
                host=host,
            )
            self.jobs.append(pod)
            await pod.run_to_completion()

    async def _start_roots(self) -> None:
        assert self.rendered is not None and self.cluster is not None
        sts = self.rendered.workload("StatefulSet", "root")
        name = sts["metadata"]["name"]
        service = sts["spec"]["serviceName"]
        domain = self._cluster_domain()
        self.cluster.dns["__domain__"] = domain
        hosts = []
        for i in range(int(sts["spec"]["replicas"])):
            host = await asyncio.to_thread(self._pod_host, f"root{i}")
            hosts.append(host)
            dns = f"{name}-{i}.{service}.{self.namespace}.svc.{domain}"
            self.cluster.dns[dns] = host.ip
            self.root_names[dns] = host.ip
        for i, host in enumerate(hosts):
            pod = Pod(
                self.cluster,
                f"{name}-{i}",
                self.namespace,
                sts["spec"]["template"],
                node=self._node_for_pod(host),
                host=host,
                subdomain=service,
            )
            self.roots.append(pod)
        await asyncio.gather(*(p.start() for p in self.roots))
        await self.wait_ready(self.roots, "root", 60)

    def _cluster_domain(self) -> str:
        assert self.rendered is not None
        cm = self.rendered.by_kind("ConfigMap")
        for doc in cm:
            text = (doc.get("data") or {}).get("p2p-config.yaml", "")
            for line in text.splitlines():
                if ".svc." in line:
                    host = line.strip().strip('-" ').rsplit(":", 1)[0]
                    return str(host.split(".svc.", 1)[1])
        return "cluster.local"

    async def _start_nodes(self) -> None:
        assert self.rendered is not None and self.cluster is not None
        hosts = [await asyncio.to_thread(self.net.add, f"n{i}") for i in range(self.nodes_n)]
        for i, host in enumerate(hosts):
            # the Node object the kubelet registers: its name, labels and InternalIP
            assert self.api is not None
            labels = self.node_labels.get(i, {})
            self.api.set("/api/v1/nodes", node_object(host.name, host.ip, labels=labels))
            root = self.workdir / "nodes" / host.name
            external = "".join(f"{reg.host.ip} {reg.name}\n" for reg in self.registries.values())
            hosts_file = self.net.write_hosts(
                host, f"127.0.0.1 localhost\n{host.ip} {host.name}\n{external}"
            )
            node = Node(host.name, host, root, hosts_file)
            runtime = NodeRuntime(node)
            await self._containerd(runtime)
            self.nodes.append(runtime)
        ds = self.rendered.workload("DaemonSet", "agent")
        for runtime in self.nodes:
            runtime.agent = Pod(
                self.cluster,
                f"{ds['metadata']['name']}-{runtime.node.name}",
                self.namespace,
                ds["spec"]["template"],
                node=runtime.node,
                host=runtime.node.host,
            )
        await asyncio.gather(
            *(
                n.agent.start(containers=i not in self.hold)
                for i, n in enumerate(self.nodes)
                if n.agent
            )
        )
        running = [n.agent for i, n in enumerate(self.nodes) if n.agent and i not in self.hold]
        await self.wait_agents(running)

    async def wait_agents(self, pods: list[Pod], seconds: float = 60) -> None:
        if self.agents_ready:
            await self.wait_ready(pods, "agent", seconds)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        assert self.cluster is not None
        while not all(
            any(
                e.pod == p.name and e.what == "started (startup probe)" for e in self.cluster.events
            )
            for p in pods
        ):
            if loop.time() > deadline:
                raise ClusterFailedError(f"agents did not start in {seconds:g} s")
            await asyncio.sleep(0.1)

    async def start_agent(self, runtime: NodeRuntime) -> None:
        """A held node's agent container, as the kubelet starts it after the init."""
        assert runtime.agent is not None
        await runtime.agent.start_containers()
        await self.wait_agents([runtime.agent])

    async def _containerd(self, runtime: NodeRuntime) -> None:
        """The node's containerd: its own root, state and socket, CRI off (no kubelet
        here); its config names the hosts dir as the node's containerd would, which is
        what node-setup checks."""
        node = runtime.node
        base = self.workdir / "containerd" / node.name
        base.mkdir(parents=True, exist_ok=True)
        # a unix socket's path has at most 104 bytes: test directories run longer
        if self._sockets is None:
            self._sockets = Path(tempfile.mkdtemp(prefix="shc-"))
        runtime.socket = self._sockets / f"{node.name}.sock"
        etc = node.host_path("/etc/containerd")
        etc.mkdir(parents=True, exist_ok=True)
        cfg = etc / "config.toml"
        cfg.write_text(
            "version = 2\n"
            f'root = "{base}/root"\nstate = "{base}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{runtime.socket}"\n'
            f'[ttrpc]\n  address = "{runtime.socket}.ttrpc"\n'
            '[debug]\n  address = ""\n'
            '[plugins."io.containerd.grpc.v1.cri".registry]\n'
            '  config_path = "/etc/containerd/certs.d"\n'
        )
        log = (base / "containerd.log").open("wb")
        runtime.containerd = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", node.host.netns, "containerd", "--config", str(cfg),
            stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        for _ in range(400):
            if runtime.socket.exists():
                rc, _ = await self.ctr(runtime, "version")
                if rc == 0:
                    return
            if runtime.containerd.returncode is not None:
                raise ClusterFailedError(f"containerd on {node.name} exited")
            await asyncio.sleep(0.05)
        raise ClusterFailedError(f"containerd on {node.name} did not come up")

    async def _start_webhook(self) -> None:
        assert self.rendered is not None and self.cluster is not None
        dep = self.rendered.workload("Deployment", "webhook")
        host = await asyncio.to_thread(self._pod_host, "webhook")
        self.webhook = Pod(
            self.cluster, f"{dep['metadata']['name']}-0", self.namespace, dep["spec"]["template"],
            node=self._node_for_pod(host), host=host,
        )  # fmt: skip
        await self.webhook.start()
        await self.wait_ready([self.webhook], "webhook", 60)

    async def wait_ready(self, pods: list[Pod], what: str, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not all(c.ready for p in pods for c in p.containers if c.spec.get("readinessProbe")):
            for p in pods:
                for c in p.containers:
                    if c.proc is not None and c.proc.returncode is not None and c.restarts > 3:
                        raise ClusterFailedError(f"{p.name}/{c.name} keeps exiting: {c.tail()}")
            if loop.time() > deadline:
                lines = [
                    f"{p.name}/{c.name}: {c.tail(600)}"
                    for p in pods
                    for c in p.containers
                    if not c.ready
                ]
                raise ClusterFailedError(f"{what} not ready in {seconds:g} s:\n" + "\n".join(lines))
            await asyncio.sleep(0.1)

    # --- what the API server does with a Pod -------------------------------------------

    async def admit(self, pod: Doc, *, namespace_labels: dict[str, str]) -> Doc:
        """The Pod as created: each matching webhook entry called through its Service."""
        assert self.rendered is not None and self.api is not None
        mwc_name = self.rendered.by_kind("MutatingWebhookConfiguration")[0]["metadata"]["name"]
        mwc = self.api.webhooks[mwc_name]  # with the caBundle the post-install hook wrote
        labels = {**namespace_labels, "kubernetes.io/metadata.name": pod["metadata"]["namespace"]}
        current = copy.deepcopy(pod)
        for entry in mwc["webhooks"]:
            if not matches(entry.get("namespaceSelector"), labels):
                continue
            if not matches(entry.get("objectSelector"), current["metadata"].get("labels") or {}):
                continue
            review = admission_review(current, namespace=current["metadata"]["namespace"])
            answer = await self._call_webhook(entry, review)
            response = answer["response"]
            if not response.get("allowed"):
                raise ClusterFailedError(f"{entry['name']} refused the Pod: {response}")
            if response.get("patch"):
                ops = json.loads(base64.b64decode(response["patch"]))
                current = jsonpatch.apply_patch(current, ops)
        return current

    async def _call_webhook(self, entry: Doc, review: Doc) -> Doc:
        assert self.rendered is not None and self.webhook is not None
        ref = entry["clientConfig"]["service"]
        svc = self.rendered.get("Service", ref["name"])
        port = next(p for p in svc["spec"]["ports"] if p["port"] == ref.get("port", 443))
        target = container_port(self.webhook.spec, port["targetPort"])
        if not matches({"matchLabels": svc["spec"]["selector"]}, self.webhook.labels):
            raise ClusterFailedError(f"Service {ref['name']} does not select the webhook Pod")
        ca = entry["clientConfig"].get("caBundle")
        if not ca:
            raise ClusterFailedError(
                f"{entry['name']}: no caBundle (did the post-install hook run?)"
            )
        ctx = ssl.create_default_context(cadata=base64.b64decode(ca).decode())
        server_name = f"{ref['name']}.{ref['namespace']}.svc"
        url = f"https://{self.webhook.ip}:{target}{ref.get('path', '/')}"
        timeout = aiohttp.ClientTimeout(total=float(entry.get("timeoutSeconds", 10)))
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, json=review, ssl=ctx, server_hostname=server_name) as resp,
        ):
            if resp.status != 200:
                raise ClusterFailedError(f"webhook answered HTTP {resp.status}")
            out: Doc = await resp.json()
            return out

    def workload(self, name: str, images: list[str]) -> Doc:
        """A Deployment's Pod in the P2P namespace, using the namespace's pull secret."""
        pod = deployment_pod(
            containers=[container(f"c{i}", image) for i, image in enumerate(images)],
            secrets=[PULL_SECRET],
        )
        pod["metadata"]["namespace"] = APPS
        pod["metadata"]["generateName"] = f"{name}-"
        return pod

    # --- what the kubelet does with a Pod's images ---------------------------------------

    def credentials(self, pod: Doc, image: str) -> tuple[str, str] | None:
        """The kubelet's choice: the Pod's pull secrets whose key matches the image's
        registry host. It passes the chosen username and password to the runtime with
        no server address, and containerd then offers them to every host it tries for
        that image (pkg/cri/server/image_pull.go, ParseAuth), the fallback included;
        ``ctr --user`` does the same."""
        assert self.api is not None
        host = image.split("/", 1)[0]
        for ref in pod["spec"].get("imagePullSecrets") or []:
            secret = self.api.secrets.get((pod["metadata"]["namespace"], ref["name"]))
            if secret is None:
                continue
            doc = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
            entry = (doc.get("auths") or {}).get(host)
            if entry:
                return entry["username"], entry["password"]
        return None

    async def ctr(self, runtime: NodeRuntime, *args: str, limit: float = 120) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", runtime.node.host.netns,
            "ctr", "--address", str(runtime.socket), "--namespace", "k8s.io", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), limit)
        except TimeoutError:
            proc.kill()
            out, _ = await proc.communicate()
            return -1, out.decode(errors="replace") + f"\n(cut at {limit:g} s)"
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace")

    async def pull_image(
        self,
        runtime: NodeRuntime,
        image: str,
        creds: tuple[str, str] | None,
        *,
        hosts_dir: Path | None = None,
        limit: float = 120,
    ) -> Pulled:
        args = [
            "images",
            "pull",
            "--snapshotter",
            "native",
            "--hosts-dir",
            str(hosts_dir or runtime.hosts_dir),
        ]
        if creds is not None:
            args += ["--user", f"{creds[0]}:{creds[1]}"]
        if hosts_dir is not None:
            args.append("--plain-http")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        rc, out = await self.ctr(runtime, *args, image, limit=limit)
        return Pulled(runtime.node.name, image, loop.time() - t0, rc == 0, out[-1500:])

    async def pull(self, runtime: NodeRuntime, pod: Doc, *, limit: float = 120) -> list[Pulled]:
        """Every container image of ``pod`` on the node, as the kubelet asks containerd."""
        images = [c["image"] for c in pod["spec"]["containers"]]
        return list(
            await asyncio.gather(
                *(
                    self.pull_image(runtime, img, self.credentials(pod, img), limit=limit)
                    for img in images
                )
            )
        )

    # --- what the nodes and registries say -----------------------------------------------

    async def agent_metrics(self, runtime: NodeRuntime) -> str:
        assert runtime.agent is not None
        port = next(
            (
                p["containerPort"]
                for p in runtime.agent.containers[0].spec["ports"]
                if p["name"] == "metrics"
            ),
            None,
        )
        if port is None:
            return ""
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://{runtime.node.host.ip}:{port}/metrics") as r,
        ):
            return await r.text()

    async def agent_readyz(self, runtime: NodeRuntime) -> tuple[int, str]:
        assert runtime.agent is not None
        port = container_port({"containers": [runtime.agent.containers[0].spec]}, "proxy")
        url = f"http://{runtime.node.host.ip}:{port}/readyz"
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as s,
            s.get(url) as r,
        ):
            return r.status, await r.text()

    def node_ips(self) -> set[str]:
        return {n.node.host.ip for n in self.nodes}


__all__ = ["ChartCluster", "ClusterFailedError", "PodFailedError"]
