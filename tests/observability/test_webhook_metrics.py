"""The webhook's own ``/metrics``: reviews by trigger and result, their time, and the
process, scraped from the real ``shoal webhook`` composition over HTTP."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from shoal.lab.ports import free_port
from shoal.observability.collectors import ADMISSION
from shoal.webhook.config import (
    AccelerateConfig,
    ExporterConfig,
    SecretConfig,
    ServerConfig,
    WebhookConfig,
)
from shoal.webhook.main import serve
from tests.webhook.pods import ACR, LABEL, admission_review, container, deployment_pod
from tests.webhook.tlsfix import make_tls


async def test_reviews_are_counted_by_trigger_and_result(tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    port, metrics_port = free_port(), free_port()
    cfg = WebhookConfig(
        server=ServerConfig(
            listen="127.0.0.1",
            port=port,
            tls_cert_file=str(tls.cert_file),
            tls_key_file=str(tls.key_file),
        ),
        accelerate=AccelerateConfig(registries=("*.cr.aliyuncs.com",)),
        secrets=SecretConfig(enable=False),
        exporter=ExporterConfig(port=metrics_port),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(cfg, stop))
    ctx: ssl.SSLContext = tls.client_context()
    pod = deployment_pod(labels={LABEL: "p2p"}, containers=[container("app", f"{ACR}/a/b:1")])
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                try:
                    async with s.get(f"http://127.0.0.1:{metrics_port}/metrics"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            base = f"https://127.0.0.1:{port}"
            for body in (admission_review(pod), admission_review(pod), b"not json"):
                data = body if isinstance(body, bytes) else json.dumps(body)
                async with s.post(f"{base}/mutate/pod", data=data, ssl=ctx) as r:
                    assert r.status == 200
            async with s.get(f"http://127.0.0.1:{metrics_port}/metrics") as r:
                text = await r.text()
    finally:
        stop.set()
        await task
    families = {f.name: f for f in text_string_to_metric_families(text)}
    reviews = {
        (s.labels["trigger"], s.labels["result"]): s.value
        for s in families["shoal_webhook_admission_reviews"].samples
    }
    assert reviews == {("pod", "patched"): 2, ("pod", "invalid"): 1}
    count = next(s for s in families[ADMISSION].samples if s.name.endswith("_count"))
    assert count.value == 3 and count.labels["mode"] == "webhook"
    assert "process_resident_memory_bytes" in families
    assert not [name for name in families if name.startswith("DADIP2P_")]
