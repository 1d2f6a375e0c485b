"""deploy/container: what can be checked without a container runtime. Every file the
Containerfile copies exists, its pip steps are CI's (Makefile) on the same pyproject, its
Python satisfies requires-python, its entrypoint runs real CLI commands, and its HEALTHCHECK
script answers as it should against a running gateway."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from lockgate.demo.stack import LocalStack, free_port
from tests.deploy._manifests import CONTAINERFILE, DEPLOY, REPO, cli_problem

HEALTHCHECK = DEPLOY / "container" / "healthcheck.py"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = CONTAINERFILE.read_text(encoding="utf-8")
    lines = [x for x in text.splitlines() if not x.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _pip_installs(command: str) -> list[list[str]]:
    """The arguments after each ``pip install`` of a shell command line."""
    out = []
    for part in re.split(r"&&|;", command):
        if not re.search(r"\bpip install\b", part):
            continue
        words = shlex.split(part)
        at = next(i for i, w in enumerate(words) if w == "install" and words[i - 1].endswith("pip"))
        out.append(words[at + 1 :])
    return out


def _pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_copied_file_exists() -> None:
    copies = [args for word, args in _instructions() if word == "COPY"]
    assert copies
    for args in copies:
        words = args.split()
        if any(w.startswith("--from=") for w in words):
            continue  # from the build stage
        for source in words[:-1]:
            assert (REPO / source).exists(), source


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether the ignore file (dockerignore rules: last match wins, ``!`` re-includes)
    keeps ``path`` out of the build context."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, glob) for p in prefixes):
            ignored = not negate
    return ignored


def test_the_ignore_file_sends_every_copied_file_and_little_else() -> None:
    ignore = CONTAINERFILE.with_name("Containerfile.dockerignore")
    patterns = [
        x.strip()
        for x in ignore.read_text(encoding="utf-8").splitlines()
        if x.strip() and not x.startswith("#")
    ]
    for word, args in _instructions():
        if word == "COPY" and not args.startswith("--from="):
            for source in args.split()[:-1]:
                assert not _ignored(source, patterns), source
                if (REPO / source).is_dir():
                    for f in (REPO / source).rglob("*.py"):
                        rel = str(f.relative_to(REPO))
                        assert not _ignored(rel, patterns), rel
    for heavy in (".venv/bin/python", "tests/conftest.py", "tests/node/package.json"):
        assert _ignored(heavy, patterns), heavy


def test_the_build_is_multi_stage_non_root_and_read_only_ready() -> None:
    instructions = _instructions()
    froms = [args for word, args in instructions if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")
    user = [args for word, args in instructions if word == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    env = " ".join(args for word, args in instructions if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # nothing written beside the code at run time
    volumes = " ".join(args for word, args in instructions if word == "VOLUME")
    assert "/var/lib/lockgate" in volumes and "/tmp" in volumes
    assert any(word == "HEALTHCHECK" for word, _ in instructions)


def test_python_satisfies_requires_python() -> None:
    args = next(args for word, args in _instructions() if word == "ARG")
    version = re.search(r"python:(\d+)\.(\d+)", args)
    assert version is not None, args
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    low = re.fullmatch(r">=(\d+)\.(\d+)", project["requires-python"])
    assert low is not None
    assert (int(version[1]), int(version[2])) >= (int(low[1]), int(low[2]))


def test_its_pip_steps_are_the_ones_ci_runs() -> None:
    """CI (``.ci/run`` -> ``make test``) upgrades pip, then installs this project with the
    ``airflow`` and ``test`` extras. The image does the same steps for the same project,
    without extras: every dependency it installs is one CI installed and tested."""
    assert "make test" in (REPO / ".ci" / "run").read_text(encoding="utf-8")
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    ci = [words for line in makefile.splitlines() for words in _pip_installs(line)]
    assert ["--quiet", "--upgrade", "pip"] in ci
    (project_install,) = [w for w in ci if any(x.startswith(("-e", ".")) for x in w)]
    ci_extras = set(re.findall(r"\[([^\]]*)\]", " ".join(project_install))[0].split(","))
    runs = [args for word, args in _instructions() if word == "RUN"]
    image = [words for command in runs for words in _pip_installs(command)]
    assert image.count(["--no-cache-dir", "--upgrade", "pip"]) == 1  # the build stage, as CI
    wheel_builds = [c for c in runs if "pip wheel" in c]
    assert len(wheel_builds) == 1 and wheel_builds[0].rstrip().endswith(" .")  # this project
    (package,) = [w for w in image if "lockgate" in " ".join(w)]
    assert "--no-index" in package  # only the wheels built from this pyproject
    extras = set(re.findall(r"lockgate\[([^\]]*)\]", " ".join(package)))
    optional = _pyproject()["project"]["optional-dependencies"]  # type: ignore[index]
    assert extras <= ci_extras and extras <= set(optional)


def test_the_entrypoint_runs_a_real_command() -> None:
    instructions = dict(_instructions())
    entry = instructions["ENTRYPOINT"].strip('[]" ')
    cmd = [w.strip('" ') for w in instructions["CMD"].strip("[]").split(",")]
    assert entry == "lockgate"
    assert cli_problem(cmd) is None, cmd
    project = _pyproject()["project"]
    assert isinstance(project, dict) and "lockgate" in project["scripts"]


def _healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_healthcheck_passes_on_a_live_gateway_and_fails_on_a_dead_one(
    stack: LocalStack,
) -> None:
    url = f"{stack.control_url}/healthz"
    assert url.startswith("https://")
    ok = _healthcheck({"LOCKGATE_HEALTH_URL": url, "LOCKGATE_HEALTH_CA": str(stack.ca_file)})
    assert ok.returncode == 0, ok.stderr
    unverified = _healthcheck({"LOCKGATE_HEALTH_URL": url})  # loopback, no CA at hand
    assert unverified.returncode == 0, unverified.stderr
    dead = _healthcheck({"LOCKGATE_HEALTH_URL": f"https://127.0.0.1:{free_port()}/healthz"})
    assert dead.returncode == 1 and "healthcheck" in dead.stderr
    missing = _healthcheck({"LOCKGATE_HEALTH_URL": f"{stack.control_url}/no-such-probe"})
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr


@pytest.mark.slow
def test_the_build_stage_makes_a_wheel_with_the_lockgate_command(tmp_path: Path) -> None:
    """The build stage: its COPY lines into an empty directory, then its ``pip wheel .``
    (the build backend pyproject asks for, isolated). Built in the copy, so nothing is left
    beside the sources."""
    context = tmp_path / "src"
    instructions = _instructions()
    first, second = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    build_stage = instructions[first:second]
    for word, args in build_stage:
        if word == "COPY":
            *sources, target = args.split()
            dest = context / target.rstrip("/")
            for source in sources:
                path = REPO / source
                into = dest / path.name if target.endswith("/") else dest
                if path.is_dir():
                    shutil.copytree(path, into, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    into.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, into)
    wheels = tmp_path / "wheels"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels), "."],
        cwd=context, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = wheels.glob("lockgate-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "lockgate = lockgate._entry:main" in zf.read(entry_points).decode()
    assert "lockgate/server.py" in names and "lockgate/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "deploy/"))]
