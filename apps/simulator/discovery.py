"""Where a running embedded simulator can be found: `var/simulator.url`. No Django.

The console starts its embedded simulator on a free port (`apps.sessions.upstream`), so a
command run beside it (`simulate_sip_call`) cannot know the port: the console writes the
simulator's base URL (`ws://127.0.0.1:PORT/v1`) to this file when the simulator starts, and the
command reads it. A file left by a console that has stopped names a port nobody listens on;
the command then says so. `make run` also keeps the console's development webhook secret
beside it (`var/webhook-secret`), for the same command.
"""

from __future__ import annotations

import os
from pathlib import Path

URL_FILE = "simulator.url"
DEV_SECRET_FILE = "webhook-secret"  # `make run`'s development webhook secret


def write_url(var_dir: Path, url: str) -> None:
    """Write `url` to `var_dir/simulator.url` (atomically: a reader never sees half a URL)."""
    var_dir.mkdir(parents=True, exist_ok=True)
    path = var_dir / URL_FILE
    temporary = path.with_name(f".{URL_FILE}.{os.getpid()}")
    temporary.write_text(url + "\n", encoding="utf-8")
    os.replace(temporary, path)


def read_url(var_dir: Path) -> str | None:
    """The URL the embedded simulator last wrote, or None when there is none."""
    try:
        url = (var_dir / URL_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return url or None


def read_dev_secret(var_dir: Path) -> str | None:
    """The webhook secret `make run` made for the console it starts (`var/webhook-secret`), so
    `simulate_sip_call` run beside it signs what that console verifies; None when there is none."""
    try:
        secret = (var_dir / DEV_SECRET_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return secret or None
