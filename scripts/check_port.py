"""`make run`'s first step: stop at once, saying why, when Daphne could not listen on HOST PORT
(before the demo operator, the demo callers or the server start). The port it suggests instead
is one it could listen on, so that following the message works."""

import socket
import sys


def bind_error(host: str, port: int) -> OSError | None:
    """Why Daphne could not listen on host:port now, or None."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Daphne listens
            probe.bind(address)
    except OSError as exc:
        return exc
    return None


def free_port_after(host: str, port: int) -> int | None:
    for candidate in range(port + 1, min(port + 100, 65536)):
        if bind_error(host, candidate) is None:
            return candidate
    return None


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    error = bind_error(host, port)
    if error is not None:
        free = free_port_after(host, port)
        instead = f", or choose another port: make run PORT={free}" if free else ""
        sys.exit(
            f"Cannot listen on {host}:{port}: {error.strerror or error}. If another make run (or "
            f"another server) has it, stop that one{instead}"
        )
