"""deploy/systemd/lockgate.service: known keys only, hardened, runs real CLI commands, and
``systemd-analyze verify`` accepts it where systemd is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy._manifests import UNIT, cli_problem, shell_words

# The keys this unit may use, per section (systemd.unit, systemd.service, systemd.exec,
# systemd.kill, systemd.resource-control, systemd.install).
KNOWN = {
    "Unit": {"Description", "Documentation", "Wants", "After", "Requires", "Before"},
    "Service": {
        "Type", "ExecStart", "ExecReload", "KillSignal", "TimeoutStopSec", "Restart",
        "RestartSec", "Environment", "LoadCredential", "DynamicUser", "User", "Group",
        "StateDirectory", "StateDirectoryMode", "ConfigurationDirectory",
        "ConfigurationDirectoryMode", "RuntimeDirectory", "RuntimeDirectoryMode", "UMask",
        "ProtectSystem", "ReadWritePaths", "ProtectHome", "PrivateTmp", "PrivateDevices",
        "NoNewPrivileges", "CapabilityBoundingSet", "AmbientCapabilities",
        "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
        "ProtectControlGroups", "ProtectClock", "ProtectHostname", "ProtectProc",
        "RestrictAddressFamilies", "RestrictNamespaces", "RestrictRealtime",
        "RestrictSUIDSGID", "LockPersonality", "RemoveIPC", "SystemCallArchitectures",
        "SystemCallFilter", "LimitNOFILE",
    },
    "Install": {"WantedBy"},
}  # fmt: skip


def _entries() -> list[tuple[str, str, str]]:
    """(section, key, value) of every assignment."""
    section = ""
    out = []
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            section = m.group(1)
            continue
        key, sep, value = line.partition("=")
        assert sep, raw
        out.append((section, key, value))
    return out


def _values(key: str) -> list[str]:
    return [v for _, k, v in _entries() if k == key]


def test_only_known_keys_in_known_sections() -> None:
    for section, key, _ in _entries():
        assert section in KNOWN, section
        assert key in KNOWN[section], f"[{section}] {key}"


def test_it_is_hardened() -> None:
    assert _values("NoNewPrivileges") == ["yes"]
    assert _values("ProtectSystem") == ["strict"]
    assert _values("DynamicUser") == ["yes"]
    assert _values("CapabilityBoundingSet") == [""]
    assert _values("ReadWritePaths") == ["/var/lib/lockgate"]
    assert _values("StateDirectory") == ["lockgate"]  # /var/lib/lockgate, owned by the user
    assert _values("ExecReload") == ["/bin/kill -HUP $MAINPID"]  # SIGHUP reloads the catalog
    credentials = {v.split(":", 1)[0] for v in _values("LoadCredential")}
    assert {"master.key", "db-password"} <= credentials


def test_it_runs_commands_the_cli_has() -> None:
    (start,) = _values("ExecStart")
    words = shell_words(start)
    assert words[0].endswith("/lockgate")
    assert cli_problem(words[1:]) is None, words


def test_the_config_it_points_at_names_the_credentials_where_systemd_puts_them() -> None:
    """The header's lockgate.yaml excerpt names /run/credentials/lockgate.service/<name> for
    exactly the credentials the unit loads."""
    text = UNIT.read_text(encoding="utf-8")
    named = set(re.findall(r"/run/credentials/lockgate\.service/([\w.-]+)", text))
    loaded = {v.split(":", 1)[0] for v in _values("LoadCredential")}
    assert named == loaded


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_accepts_it(tmp_path: Path) -> None:
    lockgate = Path(sys.executable).with_name("lockgate")
    unit = tmp_path / "lockgate.service"
    # the unit's binary lives in /opt/lockgate on a real host; this checkout's here
    unit.write_text(
        UNIT.read_text(encoding="utf-8").replace("/opt/lockgate/bin/lockgate", str(lockgate)),
        encoding="utf-8",
    )
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "lockgate.service" not in proc.stderr, proc.stderr  # no warning about our unit
