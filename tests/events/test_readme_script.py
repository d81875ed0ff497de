"""The README's script that follows a session runs as written (its placeholders filled in):
it prints the caller's words, nudges on the keyword, sees the nudge through, and ends with
the session."""

from __future__ import annotations

import asyncio
import re
import sys

import httpx
import psutil
import pytest

from tests.support.callers import SocketCaller, until_live
from tests.support.servers import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def _connected(pid: int, port: int, timeout: float = 30.0) -> None:
    """Until process `pid` holds a connection to `port`. Timed by the process itself: starting
    Python and httpx took a moment that a busy machine stretches to seconds, and the script
    follows the session from the moment its stream is asked for, missing what came before."""
    async with asyncio.timeout(timeout):
        while True:
            connections = psutil.Process(pid).net_connections(kind="tcp")
            if any(c.raddr and c.raddr.port == port for c in connections):
                return
            await asyncio.sleep(0.05)


def readme_script() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    [script] = [b for b in blocks if 'KEYWORD = "refund"' in b]
    return script


async def test_the_readme_script_nudges_on_the_keyword_and_ends_with_the_session(daphne, api_token):
    caller = await SocketCaller.connect(daphne.ws_base, api_token)
    async with httpx.AsyncClient(
        base_url=f"{daphne.http_url}/api/v1", headers={"Authorization": f"Bearer {api_token}"}
    ) as rest:
        await until_live(rest, caller.session_id)
    script = (
        readme_script()
        .replace('"http://127.0.0.1:8000/api/v1"', f'"{daphne.http_url}/api/v1"')
        .replace('"oct_..."', repr(api_token))
        .replace('"sess_abc123"', repr(caller.session_id))
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        await _connected(process.pid, daphne.port)  # the script has started: it follows from now
        await asyncio.sleep(2.0)  # and a moment for its stream to be asked for and joined
        await caller.say("I would like a refund.")
        try:
            await caller.wait_for("response.done", timeout=15)
        except TimeoutError:
            process.kill()
            out, err = await process.communicate()
            raise AssertionError(f"no nudge; the script printed {out.decode()!r} {err.decode()[-2000:]!r}") from None
        await asyncio.sleep(0.5)
        await caller.close()
        out, err = await asyncio.wait_for(process.communicate(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = out.decode()
    assert process.returncode == 0, err.decode()[-2000:]
    assert "user: I would like a refund." in text
    assert "nudged: req_" in text and "completed" in text
    assert "explain the policy" in text, "the agent's answer shows the nudge took effect"
    assert text.rstrip().endswith("the session ended")
