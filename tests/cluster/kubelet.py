"""What a kubelet does with a rendered Pod spec, for the parts shoal's Pods use.

- **Volumes** at the rendered paths: ``configMap`` items from the render, ``secret``
  items from the API server's store (so hook-made secrets are what Pods see) with
  ``defaultMode`` and the Pod's ``fsGroup``, ``hostPath`` under the node's own root
  directory (the node's ``/etc/hosts`` is its namespace's ``/etc/netns/NAME/hosts``),
  ``emptyDir`` per Pod, ``subPath``, and the service-account volume (token, the API
  server's CA, namespace) unless ``automountServiceAccountToken`` is false.
- **The container**: the rendered ``command`` and ``args`` with ``$(VAR)`` expanded from
  the rendered ``env`` (``value`` and the downward API's ``fieldRef``), the image's own
  environment, ``KUBERNETES_SERVICE_HOST``/``PORT``, the rendered user, group,
  read-only root and dropped capabilities (``sandbox.py``), in the Pod's network
  namespace (the node's for ``hostNetwork``). Init containers run first, in order, and
  must exit 0.
- **Probes** as the kubelet runs them: ``startupProbe`` first, then ``livenessProbe``
  and ``readinessProbe`` every ``periodSeconds`` with ``timeoutSeconds`` each;
  ``failureThreshold`` liveness failures in a row kill the container (SIGTERM, then
  SIGKILL after the probe's ``terminationGracePeriodSeconds`` or the Pod's) and
  ``restartPolicy: Always`` starts it again. Every event is recorded with its time.
- **Hosts files**: a Pod's ``/etc/hosts`` has what the kubelet writes (localhost, the
  Pod's own name and address; the node's file for ``hostNetwork``) plus the cluster's
  DNS names, which stand in for the cluster DNS server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shlex
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from shoal.lab.process import stop_process
from tests.cluster.manifests import Doc, container_port
from tests.cluster.network import Host

SANDBOX = Path(__file__).with_name("sandbox.py")
VENV_BIN = Path(sys.executable).parent
#: the environment the image sets (Dockerfile ``ENV``), with this checkout's interpreter
IMAGE_ENV = {
    "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "HOME": "/",
}
#: the image's ``USER``
IMAGE_UID = 65532


class PodFailedError(Exception):
    pass


@dataclass
class Node:
    """A machine: a network namespace, its own root directory for hostPaths."""

    name: str
    host: Host
    root: Path
    hosts_file: Path

    def host_path(self, path: str) -> Path:
        if path == "/etc/hosts":
            return self.hosts_file
        return self.root / path.lstrip("/")


@dataclass
class Event:
    at: float
    pod: str
    container: str
    what: str


@dataclass
class Cluster:
    """What every kubelet shares: the API server, DNS entries, the event log."""

    workdir: Path
    api: Any  # tests.cluster.apiserver.ApiServer
    api_ca_pem: str
    configmaps: dict[tuple[str, str], Doc]
    dns: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    def record(self, pod: str, container: str, what: str) -> None:
        self.events.append(Event(asyncio.get_running_loop().time(), pod, container, what))


class Container:
    """One container's process; ``restarts`` counts the kubelet's restarts."""

    def __init__(self, pod: Pod, spec: Doc, *, init: bool) -> None:
        self.pod = pod
        self.spec = spec
        self.name: str = spec["name"]
        self.init = init
        self.proc: asyncio.subprocess.Process | None = None
        self.log = pod.dir / f"{self.name}.log"
        self.restarts = 0
        self.ready = False

    def __repr__(self) -> str:
        state = "running" if self.alive else "stopped"
        return f"<Container {self.pod.name}/{self.name} {state} restarts={self.restarts}>"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        spec_file = self.pod.dir / f"{self.name}.spec.json"
        scratch = self.pod.dir / f"{self.name}.root"
        scratch.mkdir(exist_ok=True)
        env = self.pod.environment(self.spec)
        argv = [expand(a, env) for a in [*self.spec.get("command", []), *self.spec.get("args", [])]]
        uid, gid, groups = self.pod.identity(self.spec)
        sc = self.spec.get("securityContext") or {}
        dropped = "ALL" in ((sc.get("capabilities") or {}).get("drop") or [])
        sandbox = {
            "hostname": self.pod.hostname,
            "scratch": str(scratch),
            "mounts": self.pod.mounts(self.spec),
            "hosts": str(self.pod.hosts_file),
            "read_only_root": bool(sc.get("readOnlyRootFilesystem")),
            "uid": uid,
            "gid": gid,
            "groups": groups,
            "drop_caps": dropped,
            "no_new_privs": sc.get("allowPrivilegeEscalation") is False,
            "workdir": self.spec.get("workingDir", "/"),
            "env": env,
            "argv": argv,
        }
        spec_file.write_text(json.dumps(sandbox, indent=1))
        with self.log.open("ab") as log:
            log.write(f"--- start: {shlex.join(argv)}\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", self.pod.host.netns,
                sys.executable, str(SANDBOX), str(spec_file),
                stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        self.pod.cluster.record(self.pod.name, self.name, "started")

    async def kill(self, grace: float) -> None:
        """As the kubelet ends a container: SIGTERM, SIGKILL after ``grace`` seconds."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.pod.cluster.record(self.pod.name, self.name, f"killing (grace {grace:g} s)")
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        self.pod.cluster.record(self.pod.name, self.name, "killed")

    async def stop(self) -> None:
        if self.proc is not None:
            if self.proc.returncode is None:
                self.proc.send_signal(signal.SIGCONT)  # a test may have stopped it
            await stop_process(self.proc)

    def peak_rss(self) -> int:
        """Bytes: the process's peak resident set (``VmHWM``), 0 when it is gone."""
        if not self.alive:
            return 0
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return 0
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def tail(self, n: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def expand(value: str, env: dict[str, str]) -> str:
    """``$(VAR)`` as the kubelet expands it; ``$$(VAR)`` is a literal; unknown stays."""

    def one(m: re.Match[str]) -> str:
        if m.group(0).startswith("$$"):
            return m.group(0)[1:]
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$?\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, value)


class Pod:
    """A Pod of a rendered template, on a node (``hostNetwork``) or with its own address."""

    def __init__(
        self,
        cluster: Cluster,
        name: str,
        namespace: str,
        template: Doc,
        *,
        node: Node,
        host: Host,
        subdomain: str = "",
    ) -> None:
        self.cluster = cluster
        self.name = name
        self.namespace = namespace
        self.spec: Doc = template["spec"]
        self.labels: dict[str, str] = (template.get("metadata") or {}).get("labels") or {}
        self.node = node
        self.host = host
        self.subdomain = subdomain
        self.host_network = bool(self.spec.get("hostNetwork"))
        self.hostname = node.name if self.host_network else name
        self.dir = cluster.workdir / "pods" / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hosts_file = self.dir / "etc-hosts"
        self.volumes: dict[str, Path] = {}
        self.init_containers = [
            Container(self, c, init=True) for c in self.spec.get("initContainers", [])
        ]
        self.containers = [Container(self, c, init=False) for c in self.spec["containers"]]
        self._probers: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"<Pod {self.namespace}/{self.name} on {self.node.name} {self.containers}>"

    def container(self, name: str) -> Container:
        for c in [*self.init_containers, *self.containers]:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def ip(self) -> str:
        return self.host.ip

    # --- what the kubelet prepares -----------------------------------------------------

    def write_hosts(self) -> None:
        lines = ["127.0.0.1 localhost"]
        if self.host_network:
            lines = [self.node.hosts_file.read_text().rstrip("\n")]
        else:
            full = self.name
            if self.subdomain:
                domain = self.cluster.dns.get("__domain__", "cluster.local")
                full = f"{self.name}.{self.subdomain}.{self.namespace}.svc.{domain}"
            lines.append(f"{self.ip} {full} {self.name}")
        lines += [
            f"{ip} {name}" for name, ip in self.cluster.dns.items() if not name.startswith("__")
        ]
        self.hosts_file.write_text("\n".join(lines) + "\n")

    def fs_group(self) -> int | None:
        value = (self.spec.get("securityContext") or {}).get("fsGroup")
        return int(value) if value is not None else None

    def prepare_volumes(self) -> None:
        for vol in self.spec.get("volumes", []):
            name = vol["name"]
            path = self.dir / "volumes" / name
            if "configMap" in vol:
                cm = self.cluster.configmaps[(self.namespace, vol["configMap"]["name"])]
                self._files(path, {k: v.encode() for k, v in (cm.get("data") or {}).items()}, 0o644)
            elif "secret" in vol:
                src = vol["secret"]
                secret = self.cluster.api.secrets.get((self.namespace, src["secretName"]))
                if secret is None:
                    if src.get("optional"):
                        continue
                    raise PodFailedError(f"{self.name}: secret {src['secretName']} not found")
                data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
                self._files(path, data, int(src.get("defaultMode", 0o644)))
            elif "hostPath" in vol:
                target = self.node.host_path(vol["hostPath"]["path"])
                kind = vol["hostPath"].get("type", "")
                if kind == "DirectoryOrCreate":
                    target.mkdir(parents=True, exist_ok=True)
                elif kind == "File" and not target.is_file():
                    raise PodFailedError(f"{self.name}: hostPath {target} is not a file")
                path = target
            elif "emptyDir" in vol:
                path.mkdir(parents=True, exist_ok=True)
                group = self.fs_group()
                if group is not None:
                    os.chown(path, 0, group)
                    os.chmod(path, 0o2775)
            else:
                raise PodFailedError(f"{self.name}: volume {name}: unsupported kind")
            self.volumes[name] = path
        if self.spec.get("automountServiceAccountToken") is not False:
            path = self.dir / "volumes" / "kube-api-access"
            token = base64.urlsafe_b64encode(os.urandom(24)).decode()
            sa = self.spec.get("serviceAccountName", "default")
            self.cluster.api.tokens[token] = f"{self.namespace}:{sa}"
            files = {
                "token": token.encode(),
                "ca.crt": self.cluster.api_ca_pem.encode(),
                "namespace": self.namespace.encode(),
            }
            self._files(path, files, 0o644)
            self.volumes["__sa__"] = path

    def _files(self, path: Path, data: dict[str, bytes], mode: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        group = self.fs_group()
        for key, value in data.items():
            f = path / key
            f.write_bytes(value)
            os.chmod(f, mode)
            if group is not None:
                os.chown(f, 0, group)

    def mounts(self, container: Doc) -> list[dict[str, Any]]:
        out = []
        for m in container.get("volumeMounts") or []:
            source = self.volumes[m["name"]]
            if m.get("subPath"):
                source = source / m["subPath"]
            out.append(
                {
                    "source": str(source),
                    "target": m["mountPath"],
                    "readonly": bool(m.get("readOnly")),
                }
            )
        if "__sa__" in self.volumes:
            out.append(
                {
                    "source": str(self.volumes["__sa__"]),
                    "target": "/var/run/secrets/kubernetes.io/serviceaccount",
                    "readonly": True,
                }
            )
        return out

    def environment(self, container: Doc) -> dict[str, str]:
        env = dict(IMAGE_ENV)
        env["HOSTNAME"] = self.hostname
        env["KUBERNETES_SERVICE_HOST"] = self.cluster.api.host
        env["KUBERNETES_SERVICE_PORT"] = str(self.cluster.api.port)
        fields = {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "spec.nodeName": self.node.name,
            "status.hostIP": self.node.host.ip,
            "status.podIP": self.ip,
            "spec.serviceAccountName": self.spec.get("serviceAccountName", "default"),
        }
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = expand(str(var["value"]), env)
            elif "fieldRef" in (var.get("valueFrom") or {}):
                env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
            else:
                raise PodFailedError(f"{self.name}: env {var['name']}: unsupported source")
        return env

    def identity(self, container: Doc) -> tuple[int, int, list[int]]:
        pod_sc = self.spec.get("securityContext") or {}
        sc = container.get("securityContext") or {}
        uid = int(sc.get("runAsUser", pod_sc.get("runAsUser", IMAGE_UID)))
        gid = int(sc.get("runAsGroup", pod_sc.get("runAsGroup", IMAGE_UID if uid else 0)))
        if (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")) and uid == 0:
            raise PodFailedError(f"{self.name}/{container['name']}: runAsNonRoot with uid 0")
        groups = [gid]
        if self.fs_group() is not None:
            groups.append(int(pod_sc["fsGroup"]))
        return uid, gid, sorted(set(groups))

    # --- running -------------------------------------------------------------------------

    async def start(
        self, *, probes: bool = True, containers: bool = True, wait_init: float = 60.0
    ) -> None:
        """Init containers, in order; then (unless ``containers`` is false: see
        ``start_containers``) the containers, with their probes."""
        self.write_hosts()
        self.prepare_volumes()
        for c in self.init_containers:
            await c.start()
            assert c.proc is not None
            try:
                rc = await asyncio.wait_for(c.proc.wait(), wait_init)
            except TimeoutError as exc:
                raise PodFailedError(f"{self.name}/{c.name} did not finish: {c.tail()}") from exc
            self.cluster.record(self.name, c.name, f"exited {rc}")
            if rc != 0:
                raise PodFailedError(f"{self.name}/{c.name} exited {rc}: {c.tail()}")
        if containers:
            await self.start_containers(probes=probes)

    async def start_containers(self, *, probes: bool = True) -> None:
        for c in self.containers:
            await c.start()
            if probes:
                self.watch(c)

    def watch(self, c: Container) -> None:
        """The kubelet's probes and restarts for ``c``, until ``unwatch``."""
        self._probers.append(asyncio.create_task(self._probe_loop(c)))

    async def unwatch(self) -> None:
        """No probes and no restarts for now (a test keeps an agent dead on purpose)."""
        for task in self._probers:
            task.cancel()
        await asyncio.gather(*self._probers, return_exceptions=True)
        self._probers.clear()

    async def run_to_completion(self, limit: float = 60.0) -> int:
        """A Job's Pod: its containers run once; the exit code of the last."""
        await self.start(probes=False)
        rc = 0
        for c in self.containers:
            assert c.proc is not None
            try:
                rc = await asyncio.wait_for(c.proc.wait(), limit)
            except TimeoutError as exc:
                raise PodFailedError(f"{self.name}/{c.name} did not finish: {c.tail()}") from exc
            self.cluster.record(self.name, c.name, f"exited {rc}")
            if rc != 0:
                raise PodFailedError(f"{self.name}/{c.name} exited {rc}: {c.tail()}")
        return rc

    async def stop(self) -> None:
        await self.unwatch()
        await asyncio.gather(*(c.stop() for c in [*self.containers, *self.init_containers]))

    async def probe(self, container: Doc, probe: Doc) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = container_port({"containers": [container]}, get["port"])
            scheme = get.get("scheme", "HTTP").lower()
            url = f"{scheme}://{self.ip}:{port}{get.get('path', '/')}"
            try:
                # the kubelet does not verify a probe's certificate
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s,
                    s.get(url, ssl=False) as resp,
                ):
                    await resp.read()
                    return 200 <= resp.status < 400
            except (aiohttp.ClientError, TimeoutError, OSError):
                return False
        if "tcpSocket" in probe:
            port = container_port({"containers": [container]}, probe["tcpSocket"]["port"])
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(self.ip, port), timeout)
            except (TimeoutError, OSError):
                return False
            writer.close()
            return True
        raise PodFailedError(f"{self.name}: unsupported probe {probe}")

    async def _probe_loop(self, c: Container) -> None:
        """startup, then liveness and readiness; a liveness failure restarts ``c``."""
        loop = asyncio.get_running_loop()
        spec = c.spec
        startup, liveness, readiness = (
            spec.get(k) for k in ("startupProbe", "livenessProbe", "readinessProbe")
        )
        while True:
            if startup:
                failures = 0
                while not await self.probe(spec, startup):
                    failures += 1
                    if failures >= int(startup.get("failureThreshold", 3)):
                        await self._restart(c, startup, "startup probe failed")
                        failures = 0
                        continue
                    await asyncio.sleep(float(startup.get("periodSeconds", 10)))
                self.cluster.record(self.name, c.name, "started (startup probe)")
            next_live = next_ready = loop.time()
            live_failures = ready_failures = 0
            while True:
                now = loop.time()
                if readiness and now >= next_ready:
                    next_ready = now + float(readiness.get("periodSeconds", 10))
                    if await self.probe(spec, readiness):
                        ready_failures = 0
                        if not c.ready:
                            c.ready = True
                            self.cluster.record(self.name, c.name, "ready")
                    else:
                        ready_failures += 1
                        if c.ready and ready_failures >= int(readiness.get("failureThreshold", 3)):
                            c.ready = False
                            self.cluster.record(self.name, c.name, "not ready")
                if liveness and now >= next_live:
                    next_live = now + float(liveness.get("periodSeconds", 10))
                    if await self.probe(spec, liveness):
                        live_failures = 0
                    else:
                        live_failures += 1
                        self.cluster.record(self.name, c.name, f"liveness failed ({live_failures})")
                        if live_failures >= int(liveness.get("failureThreshold", 3)):
                            await self._restart(c, liveness, "liveness probe failed")
                            break
                if not c.alive:
                    # exited by itself: restartPolicy Always
                    await self._restart(c, None, f"exited {c.proc.returncode if c.proc else '?'}")
                    break
                await asyncio.sleep(0.1)

    async def _restart(self, c: Container, probe: Doc | None, why: str) -> None:
        self.cluster.record(self.name, c.name, why)
        grace = (probe or {}).get("terminationGracePeriodSeconds")
        if grace is None:
            grace = self.spec.get("terminationGracePeriodSeconds", 30)
        await c.kill(float(grace))
        c.ready = False
        c.restarts += 1
        await c.start()
