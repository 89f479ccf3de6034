"""Log lines as an operator reads or ships them: the configured level, text or JSON, and
the id of the request a line was written for, also from tasks the request started."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp import web

from shoal.lifecycle import serve_app
from shoal.observability.http import mark_first_byte, request_context
from shoal.observability.logs import setup_logging

log = logging.getLogger("shoal.test")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_json_lines_carry_level_logger_message_and_exception(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    log.debug("not at info")
    log.info("hello %s", "world")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["message"] for e in lines] == ["hello world", "it failed"]
    assert lines[0]["level"] == "info" and lines[0]["logger"] == "shoal.test"
    assert lines[0]["request_id"] == "-"
    assert lines[0]["time"].endswith("Z")
    assert "ValueError: boom" in lines[1]["exception"]


def test_text_lines_and_the_level(restore_logging: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOAL_LOG", raising=False)
    out = io.StringIO()
    setup_logging("warning", "text", stream=out)
    log.info("quiet")
    log.warning("loud")
    assert out.getvalue().count("\n") == 1
    assert " WARNING shoal.test [-] loud" in out.getvalue()
    monkeypatch.setenv("SHOAL_LOG", "debug")  # the environment wins, for a quick look
    out = io.StringIO()
    setup_logging("warning", "text", stream=out)
    log.debug("now visible")
    assert "now visible" in out.getvalue()


async def test_a_request_id_follows_the_tasks_a_request_starts(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging("debug", "json", stream=out)
    background: list[asyncio.Task[None]] = []

    async def download() -> None:  # as the swarm's download task of a blob would
        await asyncio.sleep(0)
        log.debug("piece fetched")

    async def handle(request: web.Request) -> web.Response:
        log.info("serving")
        background.append(asyncio.create_task(download()))
        return web.Response(text="ok")

    app = web.Application(middlewares=[request_context])
    app.on_response_prepare.append(mark_first_byte)
    app.router.add_get("/", handle)
    runner, port = await serve_app(app, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as s:
            ids = []
            for _ in range(2):
                async with s.get(f"http://127.0.0.1:{port}/") as r:
                    ids.append(r.headers["X-Request-Id"])
        await asyncio.gather(*background)
    finally:
        await runner.cleanup()
    log.info("after")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    by_id: dict[str, list[str]] = {}
    for e in lines:
        by_id.setdefault(e["request_id"], []).append(e["message"])
    assert ids[0] != ids[1]
    for rid in ids:
        assert by_id[rid] == ["serving", "piece fetched"]
    assert "after" in by_id["-"]
