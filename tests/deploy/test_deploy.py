"""The deployment files: Dockerfiles linted with hadolint and their exact commands run
here; Kubernetes manifests and the Compose file checked against their schemas."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from backend.common.settings import Settings
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert found, f"{name} is not installed (requirements-dev.txt)"
    return found


DOCKERFILES = ["Dockerfile.backend", "Dockerfile.frontend", "Dockerfile.space"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
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
    name: str, tmp_path: Path, **overrides: str | None
) -> tuple[subprocess.Popen, dict[str, str], list[str]]:
    """Start an image's CMD here with its ENV; an override of None removes a variable.
    What it prints goes to `output(tmp_path)` (a file: a pipe nobody reads would fill up)."""
    env, cmd, health = dockerfile(name)
    env = {k: v.replace("$PATH", os.environ["PATH"]) for k, v in env.items()}
    env["PATH"] = f"{BIN}:{os.environ['PATH']}"
    merged = {**os.environ, **env, "PORT": str(free_port()), "DATA_DIR": str(tmp_path), **overrides}
    full = {k: v for k, v in merged.items() if v is not None}
    with (tmp_path / "output.log").open("w") as log:
        process = subprocess.Popen(
            cmd, cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT, text=True
        )
    return process, full, health


def output(tmp_path: Path) -> str:
    return (tmp_path / "output.log").read_text()


def wait_for(
    url: str, process: subprocess.Popen[str], tmp_path: Path, seconds: float = 180
) -> None:
    """Until `url` answers 200; fails with the process's last words if it ends first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode}: {output(tmp_path)[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} never answered")


def test_the_backend_image_command_serves_and_passes_its_healthcheck(tmp_path: Path) -> None:
    secrets = tmp_path / "run-secrets"  # as Docker mounts them: one file per secret
    secrets.mkdir()
    (secrets / "secret_key").write_text("k3y-" * 12 + "\n")
    process, env, health = run_image_command(
        "Dockerfile.backend", tmp_path, SECRET_KEY=None, SECRETS_DIR=str(secrets),
        LOG_FORMAT="json", LOG_LEVEL="debug",
    )  # fmt: skip
    try:
        wait_for(f"http://127.0.0.1:{env['PORT']}/ready", process, tmp_path)
        assert subprocess.run(health, env=env, timeout=30).returncode == 0
        assert (tmp_path / "ragstream.db").exists()  # state under DATA_DIR (/data in the image)
        ready = httpx.get(f"http://127.0.0.1:{env['PORT']}/ready").text
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "k3y-" not in ready
    assert "request" in output(tmp_path)
    assert "k3y-" not in output(tmp_path)  # nor in the logs, even at debug level


def test_the_backend_image_refuses_to_start_without_a_secret_key(tmp_path: Path) -> None:
    process, _, _ = run_image_command("Dockerfile.backend", tmp_path, SECRET_KEY="")
    assert process.wait(timeout=60) == 2
    assert "SECRET_KEY is shorter than 32 characters" in output(tmp_path)


def test_the_frontend_image_command_serves_and_passes_its_healthcheck(tmp_path: Path) -> None:
    process, env, health = run_image_command("Dockerfile.frontend", tmp_path)
    try:
        wait_for(f"http://127.0.0.1:{env['PORT']}/_stcore/health", process, tmp_path, seconds=60)
        assert subprocess.run(health, env=env, timeout=30).returncode == 0
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize(
    ("part", "dockerfile", "expected"),
    [
        ("backend", "Dockerfile.backend", "backend/__main__.py"),
        ("frontend", "Dockerfile.frontend", ".streamlit/config.toml"),
        ("combined", "Dockerfile.space", "scripts/space-entrypoint.sh"),
    ],
)
def test_make_space_assembles_a_docker_space(
    tmp_path: Path, part: str, dockerfile: str, expected: str
) -> None:
    out = tmp_path / part
    for _ in range(2):  # assembling twice into the same folder gives the same tree
        subprocess.run(
            ["bash", "scripts/make-space.sh", part, str(out)],
            cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
    assert (out / expected).is_file()
    assert not (out / "backend" / "backend").exists()
    assert (out / "Dockerfile").read_text() == (ROOT / dockerfile).read_text()
    header = (out / "README.md").read_text().split("---")[1]
    assert yaml.safe_load(header)["sdk"] == "docker"
    assert yaml.safe_load(header)["app_port"] == 7860
    # The API Space signs in with Hugging Face (its OAUTH_* variables), the others do not.
    metadata = yaml.safe_load(header)
    assert metadata.get("hf_oauth", False) is (part == "backend")
    if part == "backend":
        assert metadata["hf_oauth_redirect_path"] == "/auth/oidc/callback"
        assert metadata["hf_oauth_scopes"] == ["email", "inference-api"]
    # Every file the Dockerfile copies is there.
    for source in re.findall(r"^COPY (?:--\S+ )*(\S+) ", (out / "Dockerfile").read_text(), re.M):
        if not source.startswith("/"):
            assert (out / source).exists(), source


def children(pid: int) -> dict[str, int]:
    """The direct children of a process, by what they run: `backend` or `streamlit`."""
    found = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        found["streamlit" if any(b"streamlit" in part for part in cmdline) else "backend"] = int(
            child
        )
    return found


def environment_of(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)


@pytest.mark.parametrize("victim", ["backend", "streamlit"])
def test_the_one_space_image_runs_both_and_stops_when_either_dies(
    tmp_path: Path, victim: str
) -> None:
    backend_port = free_port()
    process, env, health = run_image_command(
        "Dockerfile.space", tmp_path, SECRET_KEY="k" * 48, BACKEND_PORT=str(backend_port),
        MAX_UPLOAD_BYTES=str(5 * 2**20),
    )  # fmt: skip
    try:
        wait_for(f"http://127.0.0.1:{backend_port}/ready", process, tmp_path)
        wait_for(f"http://127.0.0.1:{env['PORT']}/_stcore/health", process, tmp_path, seconds=60)
        assert subprocess.run(health, env=env, timeout=30).returncode == 0
        running = children(process.pid)
        assert set(running) == {"backend", "streamlit"}
        assert environment_of(running["backend"])["HOST"] == "127.0.0.1"  # not exposed
        app_env = environment_of(running["streamlit"])
        assert app_env["BACKEND_URL"] == f"http://127.0.0.1:{backend_port}"
        assert app_env["STREAMLIT_SERVER_MAX_UPLOAD_SIZE"] == "5"  # follows the backend's
        os.kill(running[victim], signal.SIGKILL)
        assert process.wait(timeout=60) != 0  # the container ends, and says it failed
        for pid in running.values():
            assert not Path(f"/proc/{pid}").exists(), "a process outlived the supervisor"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_one_space_image_stops_both_on_sigterm(tmp_path: Path) -> None:
    process, env, _ = run_image_command(
        "Dockerfile.space", tmp_path, SECRET_KEY="k" * 48, BACKEND_PORT=str(free_port())
    )
    try:
        wait_for(f"http://127.0.0.1:{env['PORT']}/_stcore/health", process, tmp_path, seconds=60)
        running = children(process.pid)
        process.terminate()  # what `docker stop` sends
        process.wait(timeout=60)
        for pid in running.values():
            assert not Path(f"/proc/{pid}").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
