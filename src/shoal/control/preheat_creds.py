"""A preheat's registry credentials taken from a pull secret, as kubelet would take them.

A pull secret is a docker config (``{"auths": {KEY: ENTRY}}``, the ``.dockerconfigjson``
of a ``kubernetes.io/dockerconfigjson`` Secret, or the older ``.dockercfg`` map without
``auths``). An entry names its registry by host (``host``, ``host:port``,
``https://host/v1/``); its credentials are ``auth`` (base64 ``user:password``) or
``username`` and ``password``, or a ``registrytoken`` (sent as ``Bearer``; an
``identitytoken``, which needs an OAuth exchange, is not supported). The entry for
the image's host wins; none is anonymous (the root then sees whether the registry
agrees). The CLI's ``--pull-secret`` and the webhook's controller both read secrets
this way, so a preheat reads the image exactly as the rollout's pods will.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from shoal.control.preheat import Credentials
from shoal.errors import ConfigInvalidError

#: the keys Docker Hub goes by in a docker config, and the host its images name
DOCKER_HUB_KEYS = frozenset({"index.docker.io", "docker.io", "registry-1.docker.io"})


def entry_host(key: str) -> str:
    """The ``host[:port]`` an ``auths`` key stands for, lower case."""
    k = key.strip().lower()
    for scheme in ("https://", "http://"):
        if k.startswith(scheme):
            k = k[len(scheme) :]
            break
    return k.split("/", 1)[0]


def auths_of(doc: object) -> dict[str, Any]:
    """The ``auths`` map of a docker config document (new or old form) or a Secret."""
    if isinstance(doc, dict) and isinstance(doc.get("data"), dict):  # a Secret object
        data = doc["data"]
        raw = data.get(".dockerconfigjson") or data.get(".dockercfg")
        if not isinstance(raw, str):
            raise ConfigInvalidError("pull secret: no .dockerconfigjson or .dockercfg in data")
        try:
            doc = json.loads(base64.b64decode(raw, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ConfigInvalidError("pull secret: its data is not base64 JSON") from exc
    if not isinstance(doc, dict):
        raise ConfigInvalidError("pull secret: not a docker config (a JSON object)")
    auths = doc.get("auths", doc)
    if not isinstance(auths, dict):
        raise ConfigInvalidError("pull secret: auths is not a map")
    return auths


def _same_registry(key: str, host: str) -> bool:
    got, want = entry_host(key), host.lower()
    if got == want:
        return True
    return got in DOCKER_HUB_KEYS and want in DOCKER_HUB_KEYS


def credentials_for(doc: object, host: str) -> Credentials | None:
    """The credentials ``doc`` (a docker config or Secret) holds for ``host``; None if
    it holds none for it."""
    for key, entry in auths_of(doc).items():
        if not isinstance(entry, dict) or not _same_registry(key, host):
            continue
        token = entry.get("registrytoken")
        if isinstance(token, str) and token:
            return Credentials(authorization=f"Bearer {token}")
        user, password = entry.get("username"), entry.get("password")
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise ConfigInvalidError(f"pull secret: the auth of {key} is not base64") from exc
            if not sep:
                raise ConfigInvalidError(f"pull secret: the auth of {key} is not user:password")
        if isinstance(user, str) and user and isinstance(password, str):
            return Credentials(user, password)
    return None
