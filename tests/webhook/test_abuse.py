"""The webhook attacked with what it may be sent (issue 17, item 7): 14 of 53 crafted
AdmissionReviews and 67 of 600 random type mutations got HTTP 500, among them a valid
Pod whose p2p-config annotation is 100,000 ``[`` characters (RecursionError).

Everything here goes over the real HTTPS server. Webhooks run before the API server
validates the object, so any field can hold any type: every answer must be 200 with
the review allowed (its patch, if any, must apply to the object it was made for), or
413 for a body too large to read. Never a 5xx, never a traceback, at most one warning
line per bad review.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
import random
from typing import Any

import aiohttp
import jsonpatch
import pytest

from shoal.webhook.config import DEFAULT_CONFIG_ANNOTATION
from tests.webhook.pods import ACR, LABEL, admission_review, container, deployment_pod
from tests.webhook.test_server import Harness, harness  # noqa: F401 (the fixture)

ON = {LABEL: "p2p"}
MUTATIONS = 600


def valid_review() -> dict[str, Any]:
    pod = deployment_pod(
        labels=ON,
        containers=[container("app", f"{ACR}/a/app:1"), container("side", "nginx:1.27")],
        init=[container("init", f"{ACR}/a/init:1")],
        secrets=["test-registry", "hub"],
        annotations={"team": "a"},
    )
    return admission_review(pod)


async def post(
    h: Harness, session: aiohttp.ClientSession, body: bytes, path: str = "/mutate/pod"
) -> tuple[int, Any]:
    url = f"https://127.0.0.1:{h.server.port}{path}"
    async with session.post(url, data=io.BytesIO(body), ssl=h.ssl) as r:
        text = await r.read()
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        return r.status, doc


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


def _deep(n: int) -> Any:
    value: Any = []
    for _ in range(n):
        value = [value]
    return value


ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    10**30,
    "",
    "x" * 5000,
    "[" * 1000,
    "\x00\u202e",
    [],
    [None, 1, "a", {}],
    {},
    {"a": {"b": [1]}},
    {"name": ["list"]},
    _deep(40),
]


def mutated(rng: random.Random) -> dict[str, Any]:
    review = valid_review()
    paths = _paths(review)[1:]
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        path = rng.choice(paths)
        try:
            _set(review, path, copy.deepcopy(rng.choice(ODD_VALUES)))
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed the parent
        paths = _paths(review)[1:]
    return review


def _check_answer(review: Any, status: int, doc: Any) -> None:
    assert status in (200, 413), (status, doc)
    if status != 200:
        return
    resp = doc["response"]
    assert resp["allowed"] is True
    request = review.get("request") if isinstance(review, dict) else None
    uid = request.get("uid") if isinstance(request, dict) else None
    if isinstance(uid, str):
        assert resp["uid"] == uid
    if "patch" in resp:
        assert isinstance(request, dict)
        ops = json.loads(base64.b64decode(resp["patch"]))
        # the patch must apply to the object it was made for, or the API server fails it
        jsonpatch.apply_patch(copy.deepcopy(request["object"]), ops)


async def test_600_random_type_mutations_get_no_5xx(
    harness: Harness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = random.Random(1717)
    caplog.set_level(logging.INFO, logger="shoal.webhook")
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession() as session:
        for i in range(MUTATIONS):
            review = mutated(rng)
            path = "/mutate/pod" if i % 3 else "/mutate/namespace"
            status, doc = await post(harness, session, json.dumps(review).encode(), path)
            statuses[status] = statuses.get(status, 0) + 1
            _check_answer(review, status, doc)
    print(f"{MUTATIONS} mutated reviews: {statuses}")
    assert not [r for r in caplog.records if r.exc_info]
    assert all("\n" not in r.getMessage() for r in caplog.records)
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= MUTATIONS


def crafted() -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []

    def review_with(label: str, change: Any) -> None:
        review = valid_review()
        change(review)
        out.append((label, json.dumps(review).encode()))

    for label, raw in [
        ("empty body", b""),
        ("truncated JSON", b'{"apiVersion": "admission.k8s.io/v1", "request": {'),
        ("null", b"null"),
        ("array", b"[]"),
        ("string", b'"review"'),
        ("number", b"1e999999"),
        ("not UTF-8", b"\xff\xfe{}"),
        ("100,000 deep array", b"[" * 100_000 + b"]" * 100_000),
        ("5,000 deep object", b'{"a":' * 5000 + b"1" + b"}" * 5000),
        ("200 deep review", json.dumps({"request": {"uid": "u", "x": _deep(200)}}).encode()),
    ]:
        out.append((label, raw))
    pod_ = ("request", "object")
    changes: list[tuple[str, tuple[Any, ...], Any]] = [
        ("no request", ("request",), None),
        ("uid a number", ("request", "uid"), 5),
        ("old apiVersion", ("apiVersion",), "admission.k8s.io/v1beta1"),
        ("kind a string", ("request", "kind"), "Pod"),
        ("not a core Pod", ("request", "kind", "group"), "apps"),
        ("object null", pod_, None),
        ("object a list", pod_, []),
        ("spec null", (*pod_, "spec"), None),
        ("spec a list", (*pod_, "spec"), [1]),
        ("metadata a list", (*pod_, "metadata"), ["m"]),
        ("labels a list", (*pod_, "metadata", "labels"), [LABEL]),
        ("label value a number", (*pod_, "metadata", "labels", LABEL), 5),
        ("annotations a list", (*pod_, "metadata", "annotations"), ["a"]),
        (
            "config annotation 100,000 [",
            (*pod_, "metadata", "annotations", DEFAULT_CONFIG_ANNOTATION),
            "[" * 100_000,
        ),
        (
            "config annotation a number",
            (*pod_, "metadata", "annotations", DEFAULT_CONFIG_ANNOTATION),
            7,
        ),
        (
            "config annotation of another version",
            (*pod_, "metadata", "annotations", DEFAULT_CONFIG_ANNOTATION),
            '{"version": 2, "images": []}',
        ),
        ("containers a dict", (*pod_, "spec", "containers"), {"app": {}}),
        ("containers with junk", (*pod_, "spec", "containers"), [None, 5, "x", []]),
        ("image a number", (*pod_, "spec", "containers", 0, "image"), 5),
        ("image empty", (*pod_, "spec", "containers", 0, "image"), ""),
        ("image of colons", (*pod_, "spec", "containers", 0, "image"), "::::@@"),
        ("image 10,000 long", (*pod_, "spec", "containers", 0, "image"), "a" * 10_000),
        ("container name a list", (*pod_, "spec", "containers", 0, "name"), ["n"]),
        ("pull secrets a dict", (*pod_, "spec", "imagePullSecrets"), {"name": "x"}),
        ("pull secrets of numbers", (*pod_, "spec", "imagePullSecrets"), [5, None]),
        ("pull secret name a list", (*pod_, "spec", "imagePullSecrets", 0, "name"), ["a"]),
        ("namespace a number", ("request", "namespace"), 5),
        ("dryRun a string", ("request", "dryRun"), "yes"),
        ("operation a list", ("request", "operation"), ["CREATE"]),
        ("subResource a dict", ("request", "subResource"), {"a": 1}),
    ]
    for label, path, value in changes:
        review_with(label, lambda r, p=path, v=value: _set(r, p, v))

    def ephemeral(old: Any) -> Any:
        def change(r: Any) -> None:
            r["request"]["operation"] = "UPDATE"
            r["request"]["subResource"] = "ephemeralcontainers"
            r["request"]["object"]["metadata"]["annotations"] = {LABEL: "p2p"}
            r["request"]["object"]["spec"]["ephemeralContainers"] = [container("debug", "busybox")]
            r["request"]["oldObject"] = old

        return change

    for label, old in [
        ("ephemeral, old object a list", [1]),
        ("ephemeral, old containers a dict", {"spec": {"ephemeralContainers": {"a": 1}}}),
        ("ephemeral, old container name a list", {"spec": {"ephemeralContainers": [{"name": []}]}}),
    ]:
        review_with(label, ephemeral(old))
    return out


async def test_crafted_reviews_get_no_5xx_and_one_line_each(
    harness: Harness,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="shoal.webhook")
    cases = crafted()
    assert len(cases) >= 40
    async with aiohttp.ClientSession() as session:
        for label, raw in cases:
            before = len(caplog.records)
            status, doc = await post(harness, session, raw)
            try:
                review: Any = json.loads(raw)
            except (ValueError, RecursionError):
                review = None
            _check_answer(review, status, doc)
            lines = caplog.records[before:]
            bad = [r for r in lines if r.levelno >= logging.WARNING]
            assert len(bad) <= 1, (label, [r.getMessage() for r in bad])
            assert not any(r.exc_info for r in lines), label
        status, _ = await post(harness, session, b" " * (9 << 20))
        assert status == 413


async def test_a_valid_pod_with_a_100000_bracket_annotation_is_patched(harness: Harness) -> None:  # noqa: F811
    pod = deployment_pod(
        labels=ON,
        containers=[container("app", f"{ACR}/a/app:1")],
        annotations={DEFAULT_CONFIG_ANNOTATION: "[" * 100_000},
    )
    out = await harness.admit(pod)
    assert out["spec"]["containers"][0]["image"].startswith(ACR.replace(".cn-", ".distributed.cn-"))
    doc = json.loads(out["metadata"]["annotations"][DEFAULT_CONFIG_ANNOTATION])
    assert doc["version"] == 1 and doc["images"] == {"containers/app": f"{ACR}/a/app:1"}
