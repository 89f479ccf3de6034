"""docs/config.md is what the config classes say: every key, its default, its meaning."""

from __future__ import annotations

from pathlib import Path

import msgspec
import msgspec.inspect as mi
import pytest

from shoal.config import Config
from shoal.configdoc import UndocumentedKeyError, render, section
from shoal.webhook.config import WebhookConfig

DOC = Path(__file__).parent.parent / "docs" / "config.md"


def test_the_committed_reference_is_current() -> None:
    assert DOC.read_text() == render(), "docs/config.md is stale: run `make docs`"


def test_every_key_of_every_section_is_in_it() -> None:
    text = render()
    for root in (Config, WebhookConfig):
        info = mi.type_info(root)
        assert isinstance(info, mi.StructType)
        for sec in info.fields:
            assert f"### `{sec.encode_name}`" in text
            assert isinstance(sec.type, mi.StructType)
            for f in sec.type.fields:
                assert f"| `{f.encode_name}` |" in text, f"{sec.encode_name}.{f.encode_name}"


class Undocumented(msgspec.Struct, frozen=True):
    #: has a meaning
    documented: int = 1
    forgotten: str = ""


def test_a_key_without_a_meaning_stops_the_generator() -> None:
    info = mi.type_info(Undocumented)
    assert isinstance(info, mi.StructType)
    with pytest.raises(UndocumentedKeyError, match="forgotten"):
        list(section("Undocumented", info))
