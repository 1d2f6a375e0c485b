"""Reading the deployment files under deploy/ for the tests beside this module."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from lockgate.cli import build_parser

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
