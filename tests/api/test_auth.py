"""Bearer keys: 401 with WWW-Authenticate before any validation or work; keys from the
environment and a file; no keys means no start unless auth is explicitly disabled."""

import logging

import httpx
import pytest
from support.service import API_KEYS, SMALL

from serve_app.api.auth import ApiKeys
from serve_app.api.ingress import load_api_keys
from serve_app.config import AppArgs


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": f"Bearer {API_KEYS[0]}x"},
        {"Authorization": f"Basic {API_KEYS[0]}"},
        {"Authorization": "Bearer"},
        {"Authorization": API_KEYS[0]},
    ],
    ids=["missing", "wrong", "longer", "basic-scheme", "no-key", "no-scheme"],
)
def test_missing_wrong_or_malformed_key_is_a_401(service, headers):
    response = httpx.post(f"{service}/predict", json={"prompt": "a", **SMALL}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthorized"
    assert API_KEYS[0] not in response.text


def test_401_comes_before_validation(service):
    response = httpx.post(f"{service}/predict", content=b"{broken", headers={"Content-Type": "application/json"})
    assert response.status_code == 401


def test_every_configured_key_is_accepted(service):
    for key in API_KEYS:
        response = httpx.post(
            f"{service}/predict",
            json={"prompt": "a", **SMALL},
            headers={"Authorization": f"bearer {key}"},
            timeout=120,
        )
        assert response.status_code == 200


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
