"""The deployment files: Dockerfiles linted with hadolint and their exact commands run
here; Kubernetes manifests checked against the Kubernetes schemas."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from backend.settings import Settings
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert found, f"{name} is not installed (requirements-dev.txt)"
    return found


@pytest.mark.parametrize("dockerfile", ["Dockerfile.backend", "Dockerfile.frontend"])
def test_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    result = subprocess.run(
        [tool("hadolint"), dockerfile], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_manifests_match_the_schemas(tmp_path: Path) -> None:
    manifests = sorted(str(p) for p in (ROOT / "deploy" / "k8s").glob("*.yaml"))
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", *manifests], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The check can fail: a misspelt field is caught.
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        (ROOT / "deploy" / "k8s" / "frontend.yaml").read_text().replace("replicas:", "replica:")
    )
    assert (
        subprocess.run(
            [tool("kubernetes-validate"), "--strict", str(broken)], capture_output=True
        ).returncode
        != 0
    )


def test_the_configmap_names_only_real_settings() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "k8s" / "configmap.yaml").read_text())
    known = {name.upper() for name in Settings.model_fields}
    assert set(config["data"]) <= known, set(config["data"]) - known
    secret = yaml.safe_load((ROOT / "deploy" / "k8s" / "secret.example.yaml").read_text())
    assert set(secret["stringData"]) <= known


def dockerfile(name: str) -> tuple[dict[str, str], list[str], list[str]]:
    """ENV (last stage), CMD and HEALTHCHECK command of a Dockerfile."""
    text = (ROOT / name).read_text().replace("\\\n", " ")
    last_stage = text.split("\nFROM ")[-1]
    env: dict[str, str] = {}
    for line in last_stage.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    cmd_line = re.search(r"^CMD (\[.*\])$", last_stage, re.M)
    health_line = re.search(r"HEALTHCHECK .*?CMD (\[.*\])$", last_stage, re.M)
    assert cmd_line, "the image has no CMD"
    assert health_line, "the image has no HEALTHCHECK"
    cmd, health = json.loads(cmd_line.group(1)), json.loads(health_line.group(1))
    return env, cmd, health


def run_image_command(
    name: str, tmp_path: Path, **overrides: str
) -> tuple[subprocess.Popen, dict[str, str], list[str]]:
    env, cmd, health = dockerfile(name)
    env = {k: v.replace("$PATH", os.environ["PATH"]) for k, v in env.items()}
    env["PATH"] = f"{BIN}:{os.environ['PATH']}"
    full = {**os.environ, **env, "PORT": str(free_port()), "DATA_DIR": str(tmp_path), **overrides}
    process = subprocess.Popen(
        cmd, cwd=ROOT, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return process, full, health


def wait_for(url: str, process: subprocess.Popen[str], seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"exited {process.returncode}: {output[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} never answered")


def test_the_backend_image_command_serves_and_passes_its_healthcheck(tmp_path: Path) -> None:
    process, env, health = run_image_command(
        "Dockerfile.backend", tmp_path, SECRET_KEY="k" * 48, LOG_FORMAT="json"
    )
    try:
        wait_for(f"http://127.0.0.1:{env['PORT']}/ready", process)
        assert subprocess.run(health, env=env, timeout=30).returncode == 0
        assert (tmp_path / "ragstream.db").exists()  # state under DATA_DIR (/data in the image)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_backend_image_refuses_to_start_without_a_secret_key(tmp_path: Path) -> None:
    process, _, _ = run_image_command("Dockerfile.backend", tmp_path, SECRET_KEY="")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "SECRET_KEY is shorter than 32 characters" in output


def test_the_frontend_image_command_serves_and_passes_its_healthcheck(tmp_path: Path) -> None:
    process, env, health = run_image_command("Dockerfile.frontend", tmp_path)
    try:
        wait_for(f"http://127.0.0.1:{env['PORT']}/_stcore/health", process, seconds=60)
        assert subprocess.run(health, env=env, timeout=30).returncode == 0
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize(
    ("part", "expected"), [("backend", "backend/__main__.py"), ("frontend", "frontend/app.py")]
)
def test_make_space_assembles_a_docker_space(tmp_path: Path, part: str, expected: str) -> None:
    out = tmp_path / part
    subprocess.run(
        ["bash", "scripts/make-space.sh", part, str(out)], cwd=ROOT, check=True, capture_output=True
    )
    assert (out / expected).is_file()
    assert (out / "Dockerfile").read_text() == (ROOT / f"Dockerfile.{part}").read_text()
    header = (out / "README.md").read_text().split("---")[1]
    assert yaml.safe_load(header)["sdk"] == "docker"
    assert yaml.safe_load(header)["app_port"] == 7860
    # Every file the Dockerfile copies is there.
    for source in re.findall(r"^COPY (?:--\S+ )*(\S+) ", (out / "Dockerfile").read_text(), re.M):
        if not source.startswith("/"):
            assert (out / source).exists(), source
