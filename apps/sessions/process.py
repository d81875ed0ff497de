"""This process's name in the table: the host and the process id, as `LiveSession.process_id`."""

import os
import socket

PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}"
