"""Reading the deployment files under deploy/ for the tests beside this module."""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from lockgate.cli import build_parser
from lockgate.tlsgen import write_dev_tls

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
UNIT = DEPLOY / "systemd" / "lockgate.service"
DEPLOYMENT_DOC = REPO / "docs" / "deployment.md"

Obj = dict[str, Any]


def k8s_objects() -> list[tuple[Path, Obj]]:
    """Every object of every YAML file under deploy/k8s (the kustomization included)."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                out.append((path, doc))
    return out


def of_kind(kind: str) -> list[Obj]:
    return [o for _, o in k8s_objects() if o.get("kind") == kind]


def one(kind: str, name: str) -> Obj:
    found = [o for o in of_kind(kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def pod_specs() -> Iterator[tuple[str, Obj, Obj]]:
    """(workload, pod template metadata, pod spec) of every workload."""
    for kind in ("StatefulSet", "Deployment", "Job", "DaemonSet"):
        for o in of_kind(kind):
            template = o["spec"]["template"]
            yield f"{kind}/{o['metadata']['name']}", template.get("metadata", {}), template["spec"]


def containers(spec: Obj) -> list[Obj]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def cli_problem(argv: list[str]) -> str | None:
    """None when the real ``lockgate`` parser accepts ``argv``, else its message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv)
    except SystemExit:
        return err.getvalue().strip() or "rejected"
    if not isinstance(args, argparse.Namespace) or not getattr(args, "command", None):
        return "no command"
    return None


def shell_words(command: str) -> list[str]:
    """A command line as a list, for the simple lines the unit and the docs use."""
    return re.findall(r"[^\s]+", command)


def mounted_files(spec: Obj, container: Obj) -> dict[str, tuple[str, str, str]]:
    """mount path -> (volume kind, source name, key) for ConfigMap items and Secret keys."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    out: dict[str, tuple[str, str, str]] = {}
    for m in container.get("volumeMounts", []):
        v = volumes.get(m["name"], {})
        if "configMap" in v:
            for item in v["configMap"]["items"]:
                path = str(PurePosixPath(m["mountPath"]) / item["path"])
                out[path] = ("configMap", v["configMap"]["name"], item["key"])
        if "secret" in v:
            out[m["mountPath"]] = ("secret", v["secret"]["secretName"], "")
    return out


def config_text() -> str:
    return str(one("ConfigMap", "lockgate-config")["data"]["lockgate.yaml"])


def absolute_paths(text: str) -> set[str]:
    """The files and directories lockgate.yaml names where the pods mount things."""
    mounted = r"/(?:etc/lockgate|run/lockgate|var/lib/lockgate)(?:/[\w.*-]+)*"
    return set(re.findall(rf"(?<![\w/:])({mounted})", text))


def materialise(root: Path) -> Path:
    """Write the ConfigMap's files and stand-ins for the Secrets below ``root`` where the
    pods mount them (every absolute path moved under ``root``); return lockgate.yaml."""
    cm = one("ConfigMap", "lockgate-config")
    spec = one("StatefulSet", "lockgate")["spec"]["template"]["spec"]
    (gateway,) = spec["containers"]

    def here(path: str) -> Path:
        return root / path.lstrip("/")

    for path, (kind, _, key) in mounted_files(spec, gateway).items():
        if kind == "configMap" and key != "lockgate.yaml":
            here(path).parent.mkdir(parents=True, exist_ok=True)
            here(path).write_text(cm["data"][key], encoding="utf-8")
    tls = write_dev_tls(root / "tls-src", hosts=["lockgate.lockgate.svc.cluster.local"])
    (here("/etc/lockgate/tls")).mkdir(parents=True)
    here("/etc/lockgate/tls/tls.crt").write_bytes(tls["cert"].read_bytes())
    here("/etc/lockgate/tls/tls.key").write_bytes(tls["key"].read_bytes())
    here("/etc/lockgate/db").mkdir(parents=True)
    here("/etc/lockgate/db/password").write_text(secrets.token_urlsafe(16), encoding="utf-8")
    here("/etc/lockgate/db/ca.crt").write_bytes(tls["ca"].read_bytes())
    here("/run/lockgate").mkdir(parents=True)
    key = here("/run/lockgate/master.key")
    key.write_text(base64.b64encode(os.urandom(32)).decode(), encoding="utf-8")
    key.chmod(0o600)
    here("/var/lib/lockgate").mkdir(parents=True)
    text = config_text()
    for path in absolute_paths(text):
        text = text.replace(path, str(here(path)))
    config = here("/etc/lockgate/lockgate.yaml")
    config.write_text(text, encoding="utf-8")
    return config
