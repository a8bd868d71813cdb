"""The local cluster's helpers that need no cluster."""

import socket

from serve_app.benchmark.local_cluster import LOOPBACK, free_port

EPHEMERAL = range(32768, 61000)  # Linux's default ip_local_port_range
RAY_WORKER_PORTS = range(10002, 20000)


def test_a_free_port_is_one_no_bind_to_port_0_and_no_ray_worker_can_take_meanwhile():
    ports = {free_port() for _ in range(50)}
    assert not ports & set(EPHEMERAL) and not ports & set(RAY_WORKER_PORTS)
    for port in ports:
        with socket.socket() as sock:
            sock.bind((LOOPBACK, port))  # and it is free
