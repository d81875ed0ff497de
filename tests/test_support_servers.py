"""The test suite's own Daphne (tests/support/servers.py): a port another server took between
the look for a free one and this Daphne's bind, as another xdist worker's server may, is not
taken for this Daphne's. A test talking to another worker's Daphne would meet another
database ("the token was refused: it is unknown")."""

from __future__ import annotations

import pytest

from tests.conftest import start_daphne
from tests.support import servers

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_port_another_server_took_first_is_left_for_a_free_one(
    daphne, django_db_blocker, simulator, monkeypatch
):
    ports = iter([daphne.port])  # the first "free" port is already the shared Daphne's
    free = servers.free_port
    monkeypatch.setattr(servers, "free_port", lambda: next(ports, None) or free())
    own = start_daphne(django_db_blocker, simulator)
    try:
        assert own.port != daphne.port
        assert f":{own.proc.pid}:" in own.health()["process"]
    finally:
        own.stop()


def test_a_port_given_that_another_server_holds_is_refused(daphne, django_db_blocker, simulator):
    with pytest.raises(RuntimeError, match=f"port {daphne.port}|Address already in use"):
        servers.DaphneProcess({}, port=daphne.port)
