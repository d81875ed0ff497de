"""Ports of the tests' Redis and PostgreSQL (devtools/services.py): a server stopped to be
started again on the same port (`restart()`, `start_process()`) must find the port still free.
A port from `free_port()` is not: while the server is down, another xdist worker's server may
be given it and bind it first, and this worker's clients would then meet that server."""

from __future__ import annotations

from devtools import services
from tests.support.services import PostgresServer, RedisServer


def _first(port: int):
    """A shuffle that tries `port` first."""
    return lambda candidates: candidates.sort(key=lambda candidate: candidate != port)


def test_a_reserved_port_is_outside_the_range_free_ports_and_connections_come_from():
    reserved = services.ReservedPort()
    try:
        assert reserved.port < services._ephemeral_ports()[0]
    finally:
        reserved.release()


def test_a_stopped_redis_keeps_its_port_for_its_restart(monkeypatch):
    redis = RedisServer()
    try:
        redis.start()
        assert redis.port < services._ephemeral_ports()[0]
        redis.stop_process()
        monkeypatch.setattr(services.random, "shuffle", _first(redis.port))
        other = services.ReservedPort()  # another server's port, while this one is down
        try:
            assert other.port != redis.port
        finally:
            other.release()
        redis.start()
        assert redis.ping()
    finally:
        redis.stop()


def test_a_postgres_port_is_reserved_too():
    # Constructing does not start it: the port is reserved from the start all the same.
    server = PostgresServer()
    try:
        assert server.port < services._ephemeral_ports()[0]
    finally:
        server.stop()
