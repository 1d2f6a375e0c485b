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
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import yaml

from tests._gateway_process import RESOURCE, BearerUpstream, Scaffold, scaffold, stop

READ_RULE = "finance-read-orders"  # the rule of lockgate init's policy that allows the reads
LINK = re.compile(r"https?://\S+/console/\S+")


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
                return found.group(0).rstrip(".,;)\"'")
            assert self.proc.poll() is None, "gateway exited:\n" + self.output.read_text()
            assert time.monotonic() < deadline, (
                "lockgate serve printed no console link:\n" + self.output.read_text()
            )
            time.sleep(0.1)

    def stop(self) -> None:
        stop(self.proc)


def start_gateway(
    directory: Path, upstream: BearerUpstream, console: dict[str, Any]
) -> ConsoleGateway:
    """``lockgate serve`` with ``console`` as its console section, ready to serve."""
    made = scaffold(directory, upstream)
    data = yaml.safe_load(made.config_path.read_text())
    data["console"] = console
    made.config_path.write_text(yaml.safe_dump(data))
    made.state.close()  # the gateway opens the state itself
    output = directory / "serve.out"
    with output.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lockgate", "--config", str(made.config_path), "serve"],
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
