"""docker-compose.yml: valid by the Compose specification's schema, running the images' own
commands, and fed secrets that the backend reads as files."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from backend.common.settings import Settings, reveal, secret_settings
from tests.deploy.test_deploy import ROOT, dockerfile, tool

COMPOSE = ROOT / "docker-compose.yml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def check_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
    )


def test_the_compose_file_matches_the_compose_specification(tmp_path: Path) -> None:
    result = check_schema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    # The check can fail: a condition Compose does not know is caught.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("service_healthy", "service_happy", 1))
    assert check_schema(broken).returncode != 0


def test_compose_runs_the_images_own_commands_and_healthchecks() -> None:
    services = compose()["services"]
    assert set(services) == {"backend", "frontend", "postgres"}
    for name, service in services.items():
        if "build" not in service:
            continue
        assert "command" not in service, name
        assert "entrypoint" not in service, name
        _, _, health = dockerfile(service["build"]["dockerfile"])
        assert service["healthcheck"]["test"] == ["CMD", *health], name
    assert services["postgres"]["image"].startswith("pgvector/pgvector:pg")  # has pgvector
    assert services["backend"]["environment"]["VECTOR_STORE"] == "postgres"
    assert services["frontend"]["depends_on"]["backend"]["condition"] == "service_healthy"
    assert services["backend"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["frontend"]["environment"]["BACKEND_URL"] == "http://backend:7860"
    # State lives in named volumes.
    volumes = set(compose()["volumes"])
    assert "data:/data" in services["backend"]["volumes"]
    assert any(v.startswith("pgdata:/var/lib/postgresql") for v in services["postgres"]["volumes"])
    assert volumes == {"data", "pgdata"}


def test_compose_hands_the_backend_only_secrets_it_reads() -> None:
    declared = compose()["secrets"]
    backend = compose()["services"]["backend"]
    assert set(backend["secrets"]) <= set(secret_settings())
    assert "environment" not in backend or not set(backend["environment"]) & {
        s.upper() for s in secret_settings()
    }  # no secret in plain sight
    used = {s for service in compose()["services"].values() for s in service.get("secrets", [])}
    assert used == set(declared)
    for spec in declared.values():
        assert spec["file"].startswith("./secrets/")


def test_the_secrets_script_writes_what_compose_mounts_and_the_backend_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "secrets"
    script = [str(ROOT / "scripts" / "compose-secrets.sh"), str(folder)]
    subprocess.run(script, check=True, capture_output=True)
    for spec in compose()["secrets"].values():
        written = folder / Path(spec["file"]).name
        assert written.is_file(), written
        assert stat.S_IMODE(written.stat().st_mode) == 0o644  # the containers' users read it
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    # The backend container sees them in /run/secrets: here, SECRETS_DIR.
    for name in secret_settings():
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(f"{name.upper()}_FILE", raising=False)
    monkeypatch.setenv("SECRETS_DIR", str(folder))
    loaded = Settings(_env_file=None, environment="production")
    password = (folder / "postgres_password").read_text().strip()
    assert loaded.resolved_database_url == (
        f"postgresql+asyncpg://ragstream:{password}@postgres:5432/ragstream"
    )
    assert len(loaded.secret_key.get_secret_value()) >= 32
    assert reveal(loaded.hf_token) is None  # empty until the operator fills it
    # A second run keeps the secrets (the database was initialised with that password).
    key = (folder / "secret_key").read_text()
    subprocess.run(script, check=True, capture_output=True)
    assert (folder / "secret_key").read_text() == key
    assert (folder / "postgres_password").read_text().strip() == password
