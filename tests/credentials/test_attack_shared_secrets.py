"""Looking for secrets in what shared state says: the database password, the DSN, the master
key. Every error, log line, label and stored fingerprint an operator (or a log pipeline, or a
``/readyz`` probe) can read is searched for the secret itself.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from lockgate.config import PostgresStateSettings
from lockgate.config.loader import parse_config
from lockgate.credentials import CredentialStore, load_or_create_master_key
from lockgate.credentials.master_key import FINGERPRINT_KEY
from lockgate.errors import ConfigError, CredentialError, StoreUnavailable
from lockgate.store import PostgresDatabase
from tests.pgserver import PgServer

StateFactory = Callable[..., PostgresStateSettings]
PASSWORD = "Hunter2-Distinctive-pa55 %s ?'\"\\"


def _role(settings: PostgresStateSettings) -> str:
    from psycopg.conninfo import conninfo_to_dict

    return str(conninfo_to_dict(settings.dsn)["user"])


def _set_password(server: PgServer, settings: PostgresStateSettings, password: str) -> None:
    quoted = password.replace("'", "''")
    server.psql(f"ALTER ROLE \"{_role(settings)}\" PASSWORD '{quoted}'")
    assert settings.password_file is not None
    settings.password_file.write_text(password + "\n")


def test_an_odd_password_connects_and_never_shows(
    pg_state: StateFactory, pg_server: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    """What holds: a password full of quoting and placeholder characters connects (it goes
    to libpq as a parameter, never spliced into a DSN) and appears in no label or repr."""
    settings = pg_state()
    _set_password(pg_server, settings, PASSWORD)
    caplog.set_level(logging.DEBUG)
    db = PostgresDatabase(settings, replica_id="odd")
    try:
        with db.read() as cur:
            assert cur.execute("SELECT 1").fetchone() == (1,)
        seen = " ".join([db.label, repr(db), repr(settings), caplog.text])
        assert "Hunter2" not in seen
    finally:
        db.close()


def test_a_refused_password_is_named_but_never_shown(
    pg_state: StateFactory, pg_server: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    """What holds: with a wrong password (a rotation half done) every error and log line
    says what failed -- and shows neither the password tried nor the right one."""
    settings = pg_state(connect_timeout=1)
    _set_password(pg_server, settings, PASSWORD)
    assert settings.password_file is not None
    settings.password_file.write_text("Wrong-" + PASSWORD + "\n")
    caplog.set_level(logging.DEBUG)
    db = PostgresDatabase(settings, replica_id="wrong")
    db.start_watching()
    try:
        with pytest.raises(StoreUnavailable) as caught, db.transaction() as cur:
            cur.execute("SELECT 1")
        time.sleep(0.5)  # the watcher's attempts log too
        message = str(caught.value)
        assert "password authentication failed" in message
        for text in (message, caplog.text, repr(caught.value.__cause__)):
            assert "Hunter2" not in text
    finally:
        db.close()


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://lockgate:Hunter2-in-uri@db:5432/lockgate",
        "postgresql://lockgate@db/lockgate?password=Hunter2-in-query",
        "host=db user=lockgate password=Hunter2-in-keywords dbname=lockgate",
        "postgresql://lockgate:Hunter2-unparsable@db/lockgate?x='",
    ],
)
def test_a_dsn_carrying_a_password_is_refused_without_echoing_it(dsn: str) -> None:
    """What holds: the configuration error names the field, not the value."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"state": {"postgresql": {"dsn": dsn}}, "master_key_file": None})
    assert "dsn" in str(caught.value)
    assert "Hunter2" not in str(caught.value)


def test_a_dsn_carrying_the_client_key_passphrase_is_refused() -> None:
    """What holds: every libpq parameter that is a secret itself (here ``sslpassword``, the
    client key's passphrase) is refused in the DSN, without echoing its value."""
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                "state": {
                    "postgresql": {
                        "dsn": "postgresql://lockgate@db/lockgate?sslmode=verify-full"
                        "&sslcert=/c.pem&sslkey=/k.pem&sslpassword=Hunter2-passphrase"
                    }
                }
            }
        )
    assert "sslpassword" in str(caught.value)
    assert "Hunter2" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:  # the key=value form too
        parse_config({"state": {"postgresql": {"dsn": "host=db user=x sslpassword='Hunter2 x'"}}})
    assert "Hunter2" not in str(caught.value)


def test_the_master_key_leaves_only_a_fingerprint(
    pg_state: StateFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What holds: the shared database holds a fingerprint that is neither the key nor any
    encoding of it; another key is refused without showing either key; a malformed key
    given in the environment is refused without echoing it."""
    caplog.set_level(logging.DEBUG)
    settings = pg_state()
    key, other = os.urandom(32), os.urandom(32)
    db = PostgresDatabase(settings, replica_id="keys")
    try:
        CredentialStore(db, key).set("orders", "upstream-Hunter2-secret")
        with db.read() as cur:
            rows = cur.execute("SELECT key, value FROM lockgate_meta").fetchall()
            dumped = repr(rows) + repr(cur.execute("SELECT * FROM credential_versions").fetchall())
        assert any(k == FINGERPRINT_KEY for k, _ in rows)
        encodings = [key.hex(), base64.b64encode(key).decode(), base64.urlsafe_b64encode(key)]
        for shown in encodings:
            assert str(shown).strip("b'=") not in dumped
        assert "Hunter2" not in dumped

        with pytest.raises(CredentialError) as caught:
            CredentialStore(db, other)
        for secret in (key, other):
            assert secret.hex() not in str(caught.value)
            assert base64.b64encode(secret).decode() not in str(caught.value)
    finally:
        db.close()

    bad = "Hunter2" + base64.b64encode(os.urandom(20)).decode()
    with pytest.raises(CredentialError) as refused:
        load_or_create_master_key(tmp_path, {"LOCKGATE_MASTER_KEY": bad}, shared=True)
    assert "Hunter2" not in str(refused.value) and "Hunter2" not in caplog.text


def test_db_commands_never_show_the_password(
    pg_state: StateFactory,
    pg_server: PgServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What holds: ``lockgate db upgrade`` / ``db check`` name the database; with the right
    password or a wrong one, nothing they print or log shows it."""
    from lockgate.cli import main

    settings = pg_state(connect_timeout=1)
    _set_password(pg_server, settings, PASSWORD)
    config = tmp_path / "lockgate.yaml"
    state = {"postgresql": settings.model_dump(mode="json")}
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "state": state}))
    caplog.set_level(logging.DEBUG)
    assert main(["-c", str(config), "db", "upgrade"]) == 0
    assert main(["-c", str(config), "db", "check"]) == 0
    assert settings.password_file is not None
    settings.password_file.write_text("Wrong-" + PASSWORD + "\n")
    assert main(["-c", str(config), "db", "check"]) != 0
    seen = capsys.readouterr()
    assert "password authentication failed" in seen.out + seen.err + caplog.text
    for text in (seen.out, seen.err, caplog.text):
        assert "Hunter2" not in text
