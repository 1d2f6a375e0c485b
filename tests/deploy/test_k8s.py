"""deploy/k8s: every manifest parses, names what its kind needs, and refers only to things
that exist: ports, volumes, ConfigMap keys, Secrets the docs tell how to create, CLI
commands of the real parser, and a lockgate.yaml that loads."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from lockgate.cli import main as lockgate_main
from lockgate.config import load_config, parse_config
from tests.deploy._manifests import (
    DEPLOYMENT_DOC,
    K8S,
    Obj,
    absolute_paths,
    cli_problem,
    config_text,
    containers,
    k8s_objects,
    materialise,
    mounted_files,
    of_kind,
    one,
    pod_specs,
)

WORKLOADS = ("StatefulSet", "Deployment", "Job", "DaemonSet")


def test_every_object_names_its_api_kind_and_name() -> None:
    objects = k8s_objects()
    kinds = {o["kind"] for _, o in objects}
    assert {"StatefulSet", "Service", "PodDisruptionBudget", "ConfigMap", "Job"} <= kinds
    for path, o in objects:
        assert o.get("apiVersion") and o.get("kind"), path
        if o["kind"] != "Kustomization":
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", o["metadata"]["name"]), path


def test_the_kustomization_lists_files_that_exist() -> None:
    (kustomization,) = of_kind("Kustomization")
    for name in kustomization["resources"]:
        assert (K8S / name).is_file(), name
    listed = set(kustomization["resources"])
    # the Job runs on its own before a rollout; everything else is applied together
    assert {p.name for p in K8S.glob("*.yaml")} - listed == {
        "kustomization.yaml",
        "job-db-upgrade.yaml",
    }


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_selectors_match_the_pod_labels() -> None:
    for kind in ("StatefulSet", "Deployment"):
        for o in of_kind(kind):
            labels = o["spec"]["template"]["metadata"]["labels"]
            assert _labels_match(o["spec"]["selector"]["matchLabels"], labels), o["metadata"]
    pods = [meta.get("labels", {}) for _, meta, _ in pod_specs()]
    for svc in of_kind("Service"):
        assert any(_labels_match(svc["spec"]["selector"], p) for p in pods), svc["metadata"]
    for pdb in of_kind("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(_labels_match(selector, p) for p in pods), pdb["metadata"]
    statefulset = one("StatefulSet", "lockgate")
    governing = one("Service", statefulset["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"


def _port_names(spec: Obj) -> set[str]:
    return {p["name"] for c in spec["containers"] for p in c.get("ports", [])}


def test_probes_and_services_name_declared_container_ports() -> None:
    statefulset = one("StatefulSet", "lockgate")
    spec = statefulset["spec"]["template"]["spec"]
    names = _port_names(spec)
    (gateway,) = spec["containers"]
    probes = {k: gateway[k] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in probes.values():
        assert probe["httpGet"]["port"] in names
        assert probe["httpGet"]["scheme"] == "HTTPS"  # the control listener has TLS
    for svc in of_kind("Service"):
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names, (svc["metadata"]["name"], port)
            assert port["protocol"] == "TCP"  # TLS end to end: the balancer passes bytes


def test_every_container_is_locked_down() -> None:
    for workload, _, spec in pod_specs():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, workload
        assert spec.get("automountServiceAccountToken") is False, workload
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (workload, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (workload, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (workload, c["name"])
            assert not sc.get("capabilities", {}).get("add"), (workload, c["name"])
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            if c["name"] in ("lockgate", "db-upgrade"):  # Python needs a writable /tmp
                assert "/tmp" in mounts, (workload, c["name"])


def test_mounts_name_declared_volumes_and_configmap_keys_exist() -> None:
    for workload, _, spec in pod_specs():
        volumes = {v["name"]: v for v in spec["volumes"]}
        claims = set()
        if workload.startswith("StatefulSet/"):
            claims = {
                t["metadata"]["name"] for t in one("StatefulSet", "lockgate")["spec"][
                    "volumeClaimTemplates"]
            }  # fmt: skip
        for c in containers(spec):
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes or m["name"] in claims, (workload, m)
        for v in volumes.values():
            if "configMap" in v:
                cm = one("ConfigMap", v["configMap"]["name"])
                for item in v["configMap"].get("items", []):
                    assert item["key"] in cm["data"], (workload, item)


def test_every_image_is_the_same_release() -> None:
    images = {c["image"] for _, _, spec in pod_specs() for c in containers(spec)}
    assert len(images) == 1, images


def test_every_command_is_one_the_cli_has() -> None:
    """The containers run the image's entrypoint (``lockgate``) with these arguments."""
    seen = []
    for workload, _, spec in pod_specs():
        for c in spec["containers"]:
            assert "command" not in c, (workload, c["name"])  # the entrypoint: lockgate
            seen.append(c["args"])
            problem = cli_problem(c["args"])
            assert problem is None, (workload, c["args"], problem)
    assert ["db", "upgrade", "--config", "/etc/lockgate/lockgate.yaml"] in seen


# -- the secrets: mounted as files, and the docs say how to create each one -------------------


def _secret_commands() -> dict[str, str]:
    """Secret name -> the ``kubectl create secret`` line of docs/deployment.md."""
    text = DEPLOYMENT_DOC.read_text(encoding="utf-8").replace("\\\n", " ")
    found = {}
    for line in text.splitlines():
        m = re.search(r"kubectl .*create secret (?:generic|tls) ([a-z0-9-]+)", line)
        if m:
            found[m.group(1)] = line
    return found


def test_every_secret_is_mounted_as_files_and_documented() -> None:
    documented = _secret_commands()
    for workload, _, spec in pod_specs():
        for v in spec["volumes"]:
            if "secret" in v:
                name = v["secret"]["secretName"]
                assert name in documented, f"{workload}: docs/deployment.md never creates {name}"
        for c in containers(spec):
            assert not [e for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]


def test_every_file_the_config_names_is_mounted_in_the_gateway() -> None:
    statefulset = one("StatefulSet", "lockgate")
    spec = statefulset["spec"]["template"]["spec"]
    (gateway,) = spec["containers"]
    files = mounted_files(spec, gateway)
    mounts = {m["mountPath"] for m in gateway["volumeMounts"]}
    documented = _secret_commands()
    init_outputs = {
        c["command"][-1] for c in spec.get("initContainers", []) if c["command"][0] == "install"
    }
    paths = absolute_paths(config_text())
    assert paths, "no file paths found in lockgate.yaml"
    for path in sorted(paths):
        if path.endswith("*.yaml"):  # a glob over a mounted directory
            assert any(f.startswith(path.rsplit("/", 1)[0] + "/") for f in files), path
            continue
        if path in files:
            continue
        if path in init_outputs:  # copied there by an init container from a Secret
            continue
        if path in mounts:  # a directory the pod mounts (data_dir)
            continue
        # a key of a mounted Secret: the docs' create command must put that key in
        parent, key = path.rsplit("/", 1)
        assert parent in mounts and files.get(parent, ("",))[0] == "secret", path
        secret = files[parent][1]
        line = documented[secret]
        tls_keys = {"tls.crt", "tls.key"} if " tls " in line else set()
        assert key in tls_keys or re.search(rf"--from-file={re.escape(key)}=", line), (
            f"{path}: docs/deployment.md's `kubectl create secret ... {secret}` has no {key}"
        )
    for c in spec.get("initContainers", []):  # and the init container's source is documented
        source = c["command"][-2]
        parent, key = source.rsplit("/", 1)
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == parent)
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert re.search(rf"--from-file={re.escape(key)}=", documented[volume["secret"][
            "secretName"]])  # fmt: skip


# -- the ConfigMap's lockgate.yaml loads -------------------------------------------------------


def test_the_configmap_lockgate_yaml_loads_and_passes_config_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = materialise(tmp_path)
    cfg = load_config(path)
    assert cfg.state.backend == "postgresql"
    pg: Any = cfg.state.postgresql
    assert pg.password_file is not None and pg.password_file.is_file()
    assert pg.migrate_on_start is False  # the Job migrates
    assert "sslmode=verify-full" in pg.dsn
    assert cfg.master_key_file is not None and cfg.master_key_file.is_file()
    assert cfg.data_dir == tmp_path / "var/lib/lockgate"
    assert cfg.issuer  # one issuer for every replica
    for listener in (cfg.listeners.control, cfg.listeners.http, cfg.listeners.cql):
        assert listener is not None and listener.tls is not None
        assert listener.tls.cert.is_file() and listener.tls.key.is_file()
    assert cfg.policy_files() and all(p.is_file() for p in cfg.policy_files())
    code = lockgate_main(["config", "check", "--config", str(path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "1 policy file(s)" in out.out


def test_the_listeners_match_the_container_ports() -> None:
    text = config_text()
    spec = one("StatefulSet", "lockgate")["spec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for p in spec["containers"][0]["ports"]}
    cfg = parse_config(yaml.safe_load(text), "<configmap>")
    assert cfg.listeners.control.port == ports["control"]
    assert cfg.listeners.http.port == ports["http"]
    assert cfg.listeners.cql is not None and cfg.listeners.cql.port == ports["cql"]
    assert cfg.listeners.control.host == "0.0.0.0"  # reachable from the Service


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl")
def test_kubectl_kustomize_builds_the_set() -> None:
    """The kustomization as kubectl reads it (offline): every object, in namespace lockgate."""
    proc = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    built = [o for o in yaml.safe_load_all(proc.stdout) if o]
    assert sorted(o["kind"] for o in built) == [
        "ConfigMap", "PodDisruptionBudget", "Service", "Service", "ServiceAccount", "StatefulSet",
    ]  # fmt: skip
    assert {o["metadata"]["namespace"] for o in built} == {"lockgate"}
