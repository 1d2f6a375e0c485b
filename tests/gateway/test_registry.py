"""The registry: resource kind -> engine class, loaded only when asked for."""

from __future__ import annotations

import subprocess
import sys
from typing import get_args

import pytest

from lockgate.config import Resource
from lockgate.gateway import registry
from lockgate.gateway.cql import CqlEngine
from lockgate.gateway.http import HttpEngine


def test_each_kind_maps_to_the_engine_that_says_it_serves_it() -> None:
    assert registry.engine_class("http") is HttpEngine
    assert registry.engine_class("cql") is CqlEngine
    for kind in registry.kinds():
        assert registry.engine_class(kind).kind == kind


def test_every_resource_kind_of_the_config_has_an_engine() -> None:
    union = get_args(Resource)[0]  # Annotated[HttpResource | CqlResource, discriminator]
    kinds = {get_args(cls.model_fields["kind"].annotation)[0] for cls in get_args(union)}
    assert kinds == set(registry.kinds())


def test_every_engine_has_a_listener_section_named_after_its_kind() -> None:
    from lockgate.config import Listeners

    assert set(registry.kinds()) <= set(Listeners.model_fields)


def test_an_unknown_kind_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        registry.engine_class("postgres-not-yet")


def test_importing_the_registry_loads_no_engine() -> None:
    code = (
        "import sys, lockgate.gateway.registry; "
        "print(any(m.startswith(('lockgate.gateway.http', 'lockgate.gateway.cql')) "
        "for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
