"""Bearer keys: 401 with WWW-Authenticate before any validation or work; keys from the
environment and a file; no keys means no start unless auth is explicitly disabled."""


import httpx
import pytest
from support.service import API_KEYS, SMALL


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






