"""API keys without Ray: where they come from, refusing to start without one, never logged."""

import logging

import pytest

from serve_app.api.auth import ApiKeys
from serve_app.api.ingress import load_api_keys
from serve_app.config import AppArgs


def test_keys_come_from_the_variable_and_the_file(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("file-key-1\n\n  file-key-2  \n")
    keys = ApiKeys.from_environment({"WAN_API_KEYS": "env-a, env-b,,", "WAN_API_KEYS_FILE": str(keys_file)})
    assert len(keys) == 4
    assert all(keys.identify(k) for k in ("env-a", "env-b", "file-key-1", "file-key-2"))
    assert keys.identify("file-key") is None
    assert keys.identify("env-a") != keys.identify("env-b")
    assert "env-a" not in keys.identify("env-a")


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
    with caplog.at_level(logging.DEBUG):
        load_api_keys(AppArgs())
    assert "super-secret-key" not in caplog.text
