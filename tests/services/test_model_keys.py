"""Users' model keys at rest (encryption, rotation, masking) and the address guard's rules."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from backend.cli.commands import main
from backend.common.errors import UpstreamFailed
from backend.common.settings import get_settings
from backend.db import repository
from backend.db.engine import session_factory
from backend.db.models import ModelKey, utcnow
from backend.llm.guard import AddressRefused, HostPolicy, check_url, checked_addresses
from backend.services.components import open_database
from backend.services.model_keys import KeyBox, mask
from tests.helpers import make_settings


def test_keys_are_encrypted_and_survive_a_rotation(tmp_path: Path) -> None:
    old = make_settings(tmp_path, "sqlite://", keys_secret=SecretStr("old-secret"))
    sealed = KeyBox(old).seal("hf_abcdefghijklmnop")
    assert "hf_abcdefghijklmnop" not in sealed
    assert KeyBox(old).open(sealed) == "hf_abcdefghijklmnop"

    rotated = make_settings(
        tmp_path, "sqlite://", keys_secret=SecretStr("new-secret"),
        keys_secret_previous=SecretStr("older,old-secret"),
    )  # fmt: skip
    box = KeyBox(rotated)
    assert box.open(sealed) == "hf_abcdefghijklmnop"  # the old secret still reads
    resealed = box.rotate(sealed)
    only_new = KeyBox(make_settings(tmp_path, "sqlite://", keys_secret=SecretStr("new-secret")))
    assert only_new.open(resealed) == "hf_abcdefghijklmnop"
    with pytest.raises(UpstreamFailed, match="cannot be decrypted"):
        only_new.open(sealed)  # not re-encrypted: the old secret is needed
    # Without KEYS_SECRET the key is derived from SECRET_KEY.
    default = KeyBox(make_settings(tmp_path, "sqlite://"))
    assert default.open(default.seal("k")) == "k"
    with pytest.raises(UpstreamFailed):
        default.open(sealed)


def test_masks_show_too_little_to_use() -> None:
    assert mask("hf_abcdefghijklmnopqrst") == "hf_…qrst"
    assert mask("short-key-12") == "…y-12"
    assert mask("tiny") == "…"


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
     "0.0.0.0", "::1", "fe80::1", "fd00:ec2::254", "::ffff:10.0.0.1", "224.0.0.1", "localhost"],
)  # fmt: skip
async def test_addresses_into_the_network_are_refused(host: str) -> None:
    with pytest.raises(AddressRefused):
        await checked_addresses(host, 80, HostPolicy())


async def test_public_and_allow_listed_addresses_pass() -> None:
    assert await checked_addresses("8.8.8.8", 443, HostPolicy()) == ["8.8.8.8"]
    assert await checked_addresses("2606:4700::1111", 443, HostPolicy()) == ["2606:4700::1111"]
    policy = HostPolicy(["10.0.0.0/8", "model.internal:8080", "127.0.0.1"])
    assert await checked_addresses("10.9.8.7", 80, policy) == ["10.9.8.7"]
    assert await checked_addresses("127.0.0.1", 80, policy) == ["127.0.0.1"]
    assert await checked_addresses("model.internal", 8080, policy) == []  # by name
    with pytest.raises(AddressRefused):
        await checked_addresses("192.168.0.1", 80, policy)
    with pytest.raises(AddressRefused, match="cannot be resolved"):
        await checked_addresses("no-such-host.invalid", 80, HostPolicy())


@pytest.mark.parametrize(
    "url", ["ftp://example.com", "file:///etc/passwd", "http://", "https://u:p@example.com"]
)
def test_only_http_urls_with_a_host_and_no_credentials(url: str) -> None:
    with pytest.raises(AddressRefused):
        check_url(url)


def test_rotate_keys_re_encrypts_every_stored_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"
    old = make_settings(tmp_path, database, keys_secret=SecretStr("old-secret"))

    async def store() -> None:
        engine = await open_database(old)
        async with session_factory(engine)() as session:
            user = await repository.create_user(session=session, username="kay", password_hash="!")
            session.add(
                ModelKey(
                    user_id=user.id, provider="huggingface", hint="hf_…",
                    encrypted_key=KeyBox(old).seal("hf_the-users-token"),
                    source="user", created_at=utcnow(), updated_at=utcnow(),
                )
            )  # fmt: skip
            await session.commit()
        await engine.dispose()

    async def stored() -> str:
        engine = await open_database(old)
        async with session_factory(engine)() as session:
            row = (await session.scalars(select(ModelKey))).one()
        await engine.dispose()
        return row.encrypted_key

    asyncio.run(store())
    for name, value in {
        "DATABASE_URL": database, "DATA_DIR": str(tmp_path / "data"),
        "KEYS_SECRET": "new-secret", "KEYS_SECRET_PREVIOUS": "old-secret",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    assert main(["rotate-keys"]) == 0
    new = make_settings(tmp_path, database, keys_secret=SecretStr("new-secret"))
    assert KeyBox(new).open(asyncio.run(stored())) == "hf_the-users-token"
    # Without the old secret a key saved under it cannot be read: a clear exit 2.
    monkeypatch.setenv("KEYS_SECRET", "a-third-secret")
    monkeypatch.delenv("KEYS_SECRET_PREVIOUS")
    get_settings.cache_clear()
    assert main(["rotate-keys"]) == 2
