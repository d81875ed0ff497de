"""`make run`'s port check (scripts/check_port.py): a port in use stops it at once, and the
port the message suggests instead is one that is free, so following the message works."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from contextlib import ExitStack

from tests.support.servers import ROOT


def _listen(stack: ExitStack, port: int) -> socket.socket | None:
    sock = stack.enter_context(socket.socket())
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return None
    sock.listen()
    return sock


def test_a_port_in_use_stops_make_run_and_the_port_it_suggests_is_free():
    with ExitStack() as stack:
        for _ in range(20):  # two ports in a row in use: PORT and PORT + 1
            first = _listen(stack, 0)
            port = first.getsockname()[1]
            if port < 65535 and _listen(stack, port + 1) is not None:
                break
        else:
            raise AssertionError("found no two free ports in a row to occupy")
        check = subprocess.run(
            [sys.executable, "scripts/check_port.py", "127.0.0.1", str(port)],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )
        assert check.returncode == 1
        assert f"Cannot listen on 127.0.0.1:{port}" in check.stderr
        suggested = int(re.search(r"make run PORT=(\d+)", check.stderr).group(1))
        assert suggested not in (port, port + 1), check.stderr
        assert _listen(stack, suggested) is not None, f"suggested port {suggested} is in use"
