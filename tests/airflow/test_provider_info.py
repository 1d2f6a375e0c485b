"""The ``lockgate`` connection type declares its form the Airflow 3 way.

Airflow 3 reads a connection type's form from the provider info (``conn-fields`` for the
extras, ``ui-field-behaviour`` for the standard fields) without importing the hook. These
tests hold the declaration to Airflow's own schemas, check that a real Airflow process
serves it to the connection UI, and that the hook reads the same fields the form writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from lockgate.airflow import CONN_FIELDS, get_provider_info

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("airflow.providers_manager")

EXTRAS = {
    "identity_token_file",
    "identity_token_env",
    "spiffe_socket",
    "spiffe_audience",
    "client_secret_file",
    "client_secret_env",
    "ca_file",
    "timeout",
}
HIDDEN = {"schema", "port", "password"}
RELABELED = {"host": "Token service URL", "login": "Deployment"}


def _airflow_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(resources.files("airflow").joinpath(name).read_text())
    return schema


def _lockgate_type(info: dict[str, Any]) -> dict[str, Any]:
    entries: list[dict[str, Any]] = info["connection-types"]
    (entry,) = [t for t in entries if t["connection-type"] == "lockgate"]
    return entry


def test_provider_info_validates_against_airflows_schemas() -> None:
    info = get_provider_info()
    jsonschema.validate(info, _airflow_schema("provider_info.schema.json"))
    # provider_info.schema.json leaves conn-fields / ui-field-behaviour open; the
    # provider.yaml schema is the one that spells them out, strictly.
    yaml_schema = _airflow_schema("provider.yaml.schema.json")
    jsonschema.validate(info["connection-types"], yaml_schema["properties"]["connection-types"])


def test_the_form_declares_the_backends_settings_and_no_secret() -> None:
    entry = _lockgate_type(get_provider_info())
    assert set(entry["conn-fields"]) == EXTRAS
    for name, field in entry["conn-fields"].items():
        assert field["label"] and field["description"], name
        # a secret in a connection is a static secret in Airflow's database
        assert field["schema"].get("format") != "password", name
    behaviour = entry["ui-field-behaviour"]
    assert set(behaviour["hidden-fields"]) == HIDDEN
    assert behaviour["relabeling"] == RELABELED
    assert {"host", "login"} <= set(behaviour["placeholders"])


def test_callers_cannot_edit_the_declaration() -> None:
    _lockgate_type(get_provider_info())["conn-fields"].clear()
    assert set(_lockgate_type(get_provider_info())["conn-fields"]) == EXTRAS


def test_the_provider_info_imports_without_airflow() -> None:
    code = (
        "import sys; sys.modules['airflow'] = None\n"
        "from lockgate.airflow import get_provider_info\n"
        "print(sorted(get_provider_info()['connection-types'][0]['conn-fields']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(sorted(EXTRAS))


# Runs in a fresh Airflow process: ProvidersManager finds Lockgate through its installed
# entry point, as the API server does. Both the public properties and the metadata the
# connection UI's API serves (HookMetaService) are read.
PROBE = """
import json
from airflow.providers_manager import ProvidersManager
from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

pm = ProvidersManager()
widgets = {
    k: v.field for k, v in pm.connection_form_widgets.items() if k.startswith("extra__lockgate__")
}
ui = [
    m.model_dump(mode="json")
    for m in HookMetaService.hook_meta_data()
    if m.connection_type == "lockgate"
]
print("RESULT " + json.dumps({
    "hook": pm.hooks["lockgate"].hook_class_name if pm.hooks.get("lockgate") else None,
    "widgets": widgets,
    "behaviour": pm.field_behaviours.get("lockgate"),
    "ui": ui,
}))
"""


def test_an_airflow_process_serves_the_form(tmp_path: Path) -> None:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    seen = json.loads(line.removeprefix("RESULT "))

    assert seen["hook"] == "lockgate.airflow.hooks.LockgateHook", output[-3000:]
    assert set(seen["widgets"]) == {f"extra__lockgate__{name}" for name in EXTRAS}
    for name in EXTRAS:
        widget = seen["widgets"][f"extra__lockgate__{name}"]
        assert widget["schema"]["title"] == CONN_FIELDS[name]["label"]
        assert widget["description"] == CONN_FIELDS[name]["description"]
    behaviour = seen["behaviour"]
    assert behaviour is not None, output[-3000:]
    assert set(behaviour["hidden_fields"]) == HIDDEN
    assert behaviour["relabeling"] == RELABELED

    # what the connection form is built from
    (ui,) = seen["ui"]
    assert set(ui["extra_fields"]) == EXTRAS
    standard = ui["standard_fields"]
    assert standard["host"]["title"] == "Token service URL"
    assert standard["host"]["placeholder"] == "https://lockgate.internal:8470"
    assert standard["login"]["title"] == "Deployment"
    assert all(standard[name]["hidden"] for name in ("url_schema", "port", "password"))
