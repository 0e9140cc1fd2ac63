"""The ``master_port`` fixture of multi-process tests (issue 16.17: a flaky two-process launch)."""

import socket


def test_master_port_is_free_and_outside_the_ephemeral_range(master_port):
    port = int(master_port)
    with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
        ephemeral_low = int(fh.read().split()[0])
    assert 1024 <= port < ephemeral_low  # never handed out by bind(0) or connect()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # and free right now
