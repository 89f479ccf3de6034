"""A pull secret read as kubelet reads it: the entry for the image's host, in any form."""

from __future__ import annotations

import base64
import json

import pytest

from shoal.control.preheat import Credentials
from shoal.control.preheat_creds import credentials_for
from shoal.errors import ConfigInvalidError


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_the_entry_for_the_host_in_every_key_and_value_form() -> None:
    doc = {
        "auths": {
            "https://index.docker.io/v1/": {"auth": b64("hub:pw")},
            "reg.example:5000": {"username": "u", "password": "p:with:colons"},
            "http://other.example": {"auth": b64("o:pw2")},
            "tok.example": {"registrytoken": "abc"},
        }
    }
    assert credentials_for(doc, "docker.io") == Credentials("hub", "pw")
    assert credentials_for(doc, "reg.example:5000") == Credentials("u", "p:with:colons")
    assert credentials_for(doc, "reg.example") is None  # the port is part of the name
    assert credentials_for(doc, "OTHER.example") == Credentials("o", "pw2")
    assert credentials_for(doc, "tok.example") == Credentials(authorization="Bearer abc")
    old = {"reg.example": {"auth": b64("a:b")}}  # .dockercfg: no "auths" level
    assert credentials_for(old, "reg.example") == Credentials("a", "b")


def test_a_kubernetes_secret_and_what_is_not_one() -> None:
    inner = json.dumps({"auths": {"reg.example": {"auth": b64("a:b")}}})
    secret = {"kind": "Secret", "data": {".dockerconfigjson": b64(inner)}}
    assert credentials_for(secret, "reg.example") == Credentials("a", "b")
    with pytest.raises(ConfigInvalidError, match="not base64 JSON"):
        credentials_for({"data": {".dockerconfigjson": "%%%"}}, "reg.example")
    with pytest.raises(ConfigInvalidError, match="user:password"):
        credentials_for({"auths": {"reg.example": {"auth": b64("nocolon")}}}, "reg.example")
    with pytest.raises(ConfigInvalidError, match="not a docker config"):
        credentials_for(["a"], "reg.example")
