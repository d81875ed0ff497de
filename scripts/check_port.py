"""`make run`'s first step: stop at once, saying why, when Daphne could not listen on HOST PORT
(before the demo operator, the demo callers or the server start)."""

import socket
import sys

host, port = sys.argv[1], int(sys.argv[2])
try:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Daphne listens
        probe.bind(address)
except OSError as exc:
    sys.exit(
        f"Cannot listen on {host}:{port}: {exc.strerror or exc}. If another make run (or another "
        f"server) has it, stop that one, or choose another port: make run PORT={port + 1}"
    )
