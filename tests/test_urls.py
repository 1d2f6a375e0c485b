"""The one rule for where Lockgate sends a secret, a token or an assertion, or fetches keys."""

from __future__ import annotations

import pytest

from lockgate._urls import private_channel


@pytest.mark.parametrize(
    "url",
    ["https://login.example/t", "HTTPS://login.example", "http://127.0.0.1:8/t",
     "http://127.9.9.9/t", "http://[::1]:9/t", "http://localhost/t", "http://LocalHost./t"],
)  # fmt: skip
def test_https_and_plain_http_to_this_machine_stay_private(url: str) -> None:
    assert private_channel(url)


@pytest.mark.parametrize(
    "url",
    ["http://login.example/t", "http://10.0.0.5/t", "http://localhost.example/t",
     "http://127.0.0.1.example/t", "ftp://127.0.0.1/t", "http:///t", "login.example/t", ""],
)  # fmt: skip
def test_anything_else_crosses_a_network_in_clear(url: str) -> None:
    assert not private_channel(url)
