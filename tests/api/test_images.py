"""Reference images: refused URLs (non-public addresses, after DNS and on every redirect,
other schemes, not images, too large, too slow), on the test service (decoding: unit/api/test_images.py)."""


import pytest
from support.service import SMALL


def post_url(client, url):
    return client.post("/predict", json={"prompt": "a", "image_url": url, **SMALL})


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.2/cat.png",  # loopback not on the allow-list
        "http://localhost.localdomain:1/cat.png",
        "http://[::1]/cat.png",
        "http://[::ffff:127.0.0.2]/cat.png",  # IPv4-mapped loopback
        "http://10.1.2.3/cat.png",
        "http://192.168.0.1/cat.png",
        "http://172.16.5.4/cat.png",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://100.64.0.1/cat.png",  # carrier-grade NAT
        "http://0.0.0.0/cat.png",
        "http://224.0.0.1/cat.png",  # multicast
    ],
)
def test_non_public_addresses_are_refused_before_connecting(client, url):
    response = post_url(client, url)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "image_url"
    # The same words whatever the reason: a refusal does not say what a name resolves to.
    assert error["message"] == "image_url points to an address that is not allowed."


def test_redirect_to_loopback_is_refused(client, image_server):
    response = post_url(client, f"{image_server}/to-loopback")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "image_url points to an address that is not allowed."


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "file:///etc/passwd", "gopher://x/", "not-a-url"])
def test_other_schemes_are_refused(client, url):
    response = post_url(client, url)
    assert response.status_code == 400
    assert "http or https" in response.json()["error"]["message"]


def test_a_url_that_is_not_an_image_is_a_400(client, image_server):
    response = post_url(client, f"{image_server}/notes.txt")
    assert response.status_code == 400
    assert "could not be decoded" in response.json()["error"]["message"]


def test_a_missing_image_is_a_400(client, image_server):
    response = post_url(client, f"{image_server}/missing.png")
    assert response.status_code == 400
    assert "HTTP 404" in response.json()["error"]["message"]


def test_an_image_over_the_cap_is_a_413(client, image_server):
    response = post_url(client, f"{image_server}/huge.bin")
    assert response.status_code == 413
    assert response.json()["error"]["param"] == "image_url"


def test_a_slow_image_server_is_cut_off(client, image_server):
    response = post_url(client, f"{image_server}/slow.png")
    assert response.status_code == 400
    assert "longer than 3 s" in response.json()["error"]["message"]








