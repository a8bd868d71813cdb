"""API keys without Ray: where they come from (comments are not keys), their ids (an HMAC under
the server's secret), refusing to start without one, never logged."""

import hashlib
import hmac
import logging

import pytest

from serve_app.api.auth import ApiKeys
from serve_app.api.ingress import load_api_keys
from serve_app.config import AppArgs

ENVIRON = {"WAN_KEY_ID_SECRET": "s3cret"}


def test_keys_come_from_the_variable_and_the_file(tmp_path):
    keys_file = tmp_path / "keys"
    # A comment line was a valid key: `# rotated 2024-05` let anyone in who read the file's layout.
    keys_file.write_text("# keys of team A\nfile-key-1\n\n  file-key-2  \n  # old: file-key-0\n")
    environ = {**ENVIRON, "WAN_API_KEYS": "env-a, env-b,,", "WAN_API_KEYS_FILE": str(keys_file)}
    keys = ApiKeys.from_environment(environ)
    assert len(keys) == 4
    assert keys.identify("# keys of team A") is None and keys.identify("# old: file-key-0") is None
    assert all(keys.identify(k) for k in ("env-a", "env-b", "file-key-1", "file-key-2"))
    assert keys.identify("file-key") is None
    assert keys.identify("env-a") != keys.identify("env-b")
    assert "env-a" not in keys.identify("env-a")


def test_a_key_id_is_an_hmac_under_the_server_secret_not_a_plain_digest():
    # The id was sha256(key)[:16]: a weak key was found from the logs by hashing guesses.
    key = "password1"
    ids = {ApiKeys([key], secret).identify(key) for secret in (b"one", b"two")}
    assert len(ids) == 2
    assert hashlib.sha256(key.encode()).hexdigest()[:16] not in ids
    assert ApiKeys([key], b"one").identify(key) == hmac.new(b"one", key.encode(), "sha256").hexdigest()[:16]


def test_keys_without_a_key_id_secret_refuse_to_start(monkeypatch):
    monkeypatch.setenv("WAN_API_KEYS", "a-key")
    monkeypatch.delenv("WAN_API_KEYS_FILE", raising=False)
    monkeypatch.delenv("WAN_KEY_ID_SECRET", raising=False)
    with pytest.raises(RuntimeError, match="WAN_KEY_ID_SECRET"):
        load_api_keys(AppArgs())


def test_no_keys_refuses_to_start_unless_auth_is_disabled(monkeypatch, caplog):
    monkeypatch.delenv("WAN_API_KEYS", raising=False)
    monkeypatch.delenv("WAN_API_KEYS_FILE", raising=False)
    with pytest.raises(RuntimeError, match="No API keys configured"):
        load_api_keys(AppArgs())
    with caplog.at_level(logging.WARNING):
        assert load_api_keys(AppArgs(allow_unauthenticated=True)) is None
    assert "Authentication is disabled" in caplog.text


def test_keys_are_never_logged(monkeypatch, caplog):
    monkeypatch.setenv("WAN_API_KEYS", "super-secret-key")
    monkeypatch.setenv("WAN_KEY_ID_SECRET", "s3cret")
    with caplog.at_level(logging.DEBUG):
        load_api_keys(AppArgs())
    assert "super-secret-key" not in caplog.text
