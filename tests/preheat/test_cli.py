"""``shoal preheat`` as a user runs it: a real process against a real root and agents.

What users rely on: the job's state comes back as JSON (the created state, or the final
one with ``--wait``); credentials come from ``--user`` or a pull secret; every mistake
(bad flags, a bad reference, refused credentials, no root) is one line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

import pytest

from shoal.lab.image import BuiltImage
from shoal.lab.origin import OriginRegistry
from tests.agent.preheat_cluster import OPERATOR, PreheatCluster, preheat_cluster
from tests.conftest import PASSWORD, USER

pytestmark = [pytest.mark.e2e]


async def shoal(c: PreheatCluster, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    secret = tmp_path / "operator"
    secret.write_text(OPERATOR)
    root = f"127.0.0.1:{c.root.control_port}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shoal", "preheat", *args, "--root", root,
        "--ca-file", str(c.certs.ca_file), "--secret-file", str(secret),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line_error(code: int, err: str, *words: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err


@pytest.mark.timeout(90)
async def test_preheat_waits_and_prints_the_final_state_as_json(
    tmp_path: Path, private_origin: OriginRegistry, private_image: BuiltImage
) -> None:
    image = f"{private_origin.address}/{private_image.repo}:{private_image.tag}"
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    secret = {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(
            {"auths": {f"https://{private_origin.address}/v1/": {"auth": auth}}}
        ).encode()).decode()},
    }  # fmt: skip
    (tmp_path / "secret.json").write_text(json.dumps(secret))
    async with preheat_cluster(tmp_path, private_origin.address, agents=2) as c:
        code, out, err = await shoal(
            c, tmp_path, image, "--count", "1", "--wait", "--json",
            "--pull-secret", str(tmp_path / "secret.json"),
        )  # fmt: skip
        assert code == 0, err
        state = json.loads(out)
        assert state["state"] == "done" and len(state["nodes"]) == 1
        node = state["nodes"][0]
        assert node["state"] == "done" and node["blobs_done"] == len(private_image.blobs())
        assert node["bytes_done"] == sum(b.size for b in private_image.blobs())

        code, out, err = await shoal(c, tmp_path, "--status", state["id"])
        assert code == 0 and out.startswith(f"preheat {state['id']} {image}: done, 1/1 nodes")

        # the wrong password: the root refuses the job, nothing starts
        code, out, err = await shoal(c, tmp_path, image, "--user", f"{USER}:wrong")
        one_line_error(code, err, "refused these credentials")
        assert len(c.root.preheat.book.jobs) == 1


@pytest.mark.timeout(90)
async def test_bad_input_is_one_line_and_a_non_zero_exit(
    tmp_path: Path, origin: OriginRegistry
) -> None:
    async with preheat_cluster(tmp_path, origin.address, agents=0) as c:
        image = f"{origin.address}/x/y:1"
        for args, words in [
            ((image, "--count", "0"), ["--count", "at least 1"]),
            ((image, "--percent", "150"), ["--percent"]),
            ((image, "--count", "2", "--nodes", "a"), ["not allowed with"]),
            (("no-host:1",), ["registry host"]),
            ((image, "--user", "nocolon"), ["USER:PASSWORD"]),
            ((image, "--pull-secret", str(tmp_path / "missing.json")), ["missing.json"]),
            (("--status", "feedfeedfeed"), ["preheat job feedfeedfeed"]),
            ((f"{origin.address}/x/absent:1",), ["no image x/absent:1"]),
            ((), ["which image"]),
        ]:
            code, _, err = await shoal(c, tmp_path, *args)
            one_line_error(code, err, *words)
        assert c.root.preheat.book.jobs == {}
