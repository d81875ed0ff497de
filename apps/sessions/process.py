"""This process's names.

- `PROCESS_NAME`: the host and the process id, as operators know a process (the `process`
  label of the metrics).
- `PROCESS_ID`: the same with a token drawn at start, as `LiveSession.process_id`. A process
  never sweeps the sessions it names as its own; a server restarted in the same container
  after a crash keeps its hostname and often its pid too (pid 1), and must still sweep the
  sessions its predecessor left, so each start is told apart.
"""

import os
import secrets
import socket

PROCESS_NAME = f"{socket.gethostname()}:{os.getpid()}"
PROCESS_ID = f"{PROCESS_NAME}:{secrets.token_hex(4)}"
