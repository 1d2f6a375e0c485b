"""What the secrets backend exports into the task process for ARM connections."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lockgate.airflow import task_env

_NAMES = ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "IDENTITY_ENDPOINT",
          "IDENTITY_HEADER")  # fmt: skip


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    saved = {n: os.environ.pop(n) for n in _NAMES if n in os.environ}
    monkeypatch.setattr(task_env, "_exported", {})
    yield
    for n in _NAMES:  # task_env writes os.environ directly: undo it for the next tests
        os.environ.pop(n, None)
    os.environ.update(saved)


def test_exports_identity_and_proxy_and_extends_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "internal.example")
    task_env.export({"IDENTITY_ENDPOINT": "https://gw:8470/msi/token", "IDENTITY_HEADER": "t1",
                     "HTTPS_PROXY": "http://gw:8472", "NO_PROXY": "gw"})  # fmt: skip
    assert os.environ["IDENTITY_HEADER"] == "t1"
    assert os.environ["HTTPS_PROXY"] == os.environ["https_proxy"] == "http://gw:8472"
    assert os.environ["NO_PROXY"].split(",") == ["internal.example", "gw"]
    # the next task in the same process replaces what Lockgate set
    task_env.export({"IDENTITY_HEADER": "t2", "HTTPS_PROXY": "http://gw:8472", "NO_PROXY": "gw"})
    assert os.environ["IDENTITY_HEADER"] == "t2"
    assert os.environ["no_proxy"].split(",") == ["internal.example", "gw"]


def test_another_proxy_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("https_proxy", "http://corporate:3128")
    task_env.export({"HTTPS_PROXY": "http://gw:8472"})
    assert os.environ["https_proxy"] == "http://corporate:3128"
    assert "HTTPS_PROXY" not in os.environ
    assert "already set to another proxy" in caplog.text
