"""A real ``lockgate serve`` with its console, for the browser tests.

:func:`start_gateway` makes a gateway with ``lockgate init`` (see
:mod:`tests._gateway_process`) in front of a bearer-checking upstream, adds a ``console:``
section (OIDC settings or none: one-time admin links) and starts it as a subprocess whose
output is kept in a file (``lockgate serve`` prints its one-time admin link there).
:class:`ConsoleGateway` mints task tokens through the control plane the way the Airflow
secrets backend does (``POST /v1/token`` with the deployment's client secret) and sends
requests through the HTTP listener.

The policy is the one ``lockgate init`` writes: DAGs ``finance_*`` may read ``/orders``
(rule ``finance-read-orders``), so a ``POST /orders`` of theirs is denied (no rule allows
``write``).
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from playwright.sync_api import Page, expect

from lockgate.demo.standins.entra import FakeEntra
from lockgate.demo.standins.entra import start as start_entra
from lockgate.demo.standins.entra.thread import LoopThread
from tests._gateway_process import RESOURCE, BearerUpstream, Scaffold, scaffold, stop
from tests.console.browser import Shot

READ_RULE = "finance-read-orders"  # the rule of lockgate init's policy that allows the reads
# a console URL as printed: on its own line or as a value in a JSON log line
LINK = re.compile(r"https?://[^\s\"'<>]+/console/[^\s\"'<>]+")


@dataclass
class ConsoleGateway:
    scaffold: Scaffold
    proc: subprocess.Popen[bytes]
    output: Path  # the process's stdout and stderr

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.scaffold.control_port}"

    @property
    def console_url(self) -> str:
        return f"{self.control_url}/console"

    def mint_task(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1
    ) -> tuple[str, str]:
        """A task's token from the control plane, as the secrets backend asks: (token, jti)."""
        form = urllib.parse.urlencode(
            {
                "client_id": "prod",
                "client_secret": self.scaffold.deployment_secret,
                "resource": RESOURCE,
                "dag_id": dag_id,
                "task_id": task_id,
                "run_id": run_id,
                "try_number": try_number,
            }
        ).encode()
        request = urllib.request.Request(f"{self.control_url}/v1/token", data=form)
        with urllib.request.urlopen(request, timeout=10) as answer:
            token = str(json.loads(answer.read())["access_token"])
        claims = jwt.decode(token, options={"verify_signature": False})
        return token, str(claims["jti"])

    def request(self, token: str, path: str = "/orders", method: str = "GET") -> int:
        """One request through the HTTP listener: its status (0 when nothing answered)."""
        request = urllib.request.Request(
            self.scaffold.url(path),
            method=method,
            data=b"{}" if method in ("POST", "PUT") else None,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    def printed_link(self, timeout: float = 15.0) -> str:
        """The one-time admin link ``lockgate serve`` printed at start."""
        deadline = time.monotonic() + timeout
        while True:
            found = LINK.search(self.output.read_text(errors="replace"))
            if found:
                return found.group(0).rstrip(".,;)")
            assert self.proc.poll() is None, "gateway exited:\n" + self.output.read_text()
            assert time.monotonic() < deadline, (
                "lockgate serve printed no console link:\n" + self.output.read_text()
            )
            time.sleep(0.1)

    def stop(self) -> None:
        stop(self.proc)


def serve_command(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "lockgate", "--config", str(config_path), "serve"]


def start_gateway(
    directory: Path,
    upstream: BearerUpstream,
    console: dict[str, Any] | Callable[[str], dict[str, Any]],
) -> ConsoleGateway:
    """``lockgate serve`` with ``console`` as its console section (or what
    ``console(<console URL>)`` makes of it, for settings that name the console's own URL,
    such as an OIDC redirect URI), ready to serve."""
    made = scaffold(directory, upstream)
    data = yaml.safe_load(made.config_path.read_text())
    console_url = f"http://127.0.0.1:{made.control_port}/console"
    data["console"] = console(console_url) if callable(console) else console
    made.config_path.write_text(yaml.safe_dump(data))
    made.state.close()  # the gateway opens the state itself
    output = directory / "serve.out"
    with output.open("wb") as sink:
        proc = subprocess.Popen(
            serve_command(made.config_path),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    gateway = ConsoleGateway(made, proc, output)
    deadline = time.monotonic() + 30
    while not _ready(gateway.control_url):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise AssertionError("gateway did not start:\n" + output.read_text())
        time.sleep(0.1)
    return gateway


def _ready(control_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{control_url}/readyz", timeout=2) as answer:
            return int(answer.status) == 200
    except (urllib.error.URLError, OSError):
        return False


# -- the console signed in through the test Entra ID -----------------------------------
CLIENT_ID = "lockgate-console"
ROLE_VALUES = ["Lockgate.Admin", "Lockgate.Operator", "Lockgate.Viewer"]


@dataclass(frozen=True)
class Person:
    username: str
    password: str
    role: str


OPERATOR = Person("olivia@contoso.test", secrets.token_urlsafe(12), "operator")
VIEWER = Person("victor@contoso.test", secrets.token_urlsafe(12), "viewer")


@dataclass
class Console:
    gateway: ConsoleGateway
    entra: FakeEntra

    @property
    def url(self) -> str:
        return self.gateway.console_url


@pytest.fixture(scope="module")
def console_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """The test Entra ID with the console registered and two people; the gateway trusting
    it for the console's sign-in."""
    loop = LoopThread()
    entra = FakeEntra()
    loop.serve(start_entra(entra))
    upstream = BearerUpstream()

    def console_settings(console_url: str) -> dict[str, object]:
        redirect = f"{console_url}/auth/callback"
        entra.register_app(CLIENT_ID, [redirect], app_roles=ROLE_VALUES, name="Lockgate")
        return {
            "oidc": {
                "issuer": f"{entra.base_url}/{entra.tenant}/v2.0",
                "client_id": CLIENT_ID,
                "redirect_uri": redirect,
            }
        }

    for person, role in ((OPERATOR, "Lockgate.Operator"), (VIEWER, "Lockgate.Viewer")):
        entra.add_user(person.username, person.password, name=person.username, roles=[role])
    gateway = start_gateway(tmp_path_factory.mktemp("console"), upstream, console_settings)
    try:
        yield Console(gateway, entra)
    finally:
        gateway.stop()
        upstream.stop()
        loop.stop()


def sign_in(page: Page, console: Console, person: Person, shot: Shot | None = None) -> None:
    """From the console's door through the Entra sign-in form, back to the console."""
    page.goto(console.url + "/")
    if shot:
        shot("sign-in-page")
    page.get_by_role("button", name=re.compile("sign in", re.I)).or_(
        page.get_by_role("link", name=re.compile("sign in", re.I))
    ).first.click()
    page.locator("#i0116").fill(person.username)
    page.locator("#i0118").fill(person.password)
    if shot:
        shot("entra-form")
    page.locator("#idSIButton9").click()
    expect(page.get_by_role("navigation", name="Sections")).to_be_visible()
    expect(page.locator(".who")).to_contain_text(person.role)
