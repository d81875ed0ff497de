"""operator_console/asgi.py: what the served process does once, at start-up."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.servers import ROOT

LOADED_AND_FROZEN = """
import gc, sys
import operator_console.asgi
tracked = {id(o) for o in gc.get_objects()}
urls = sys.modules.get("operator_console.urls")
views = sys.modules.get("apps.console.views")
print(gc.get_freeze_count(), len(tracked))
print(all(m is not None and id(vars(m)) not in tracked for m in (urls, views)))
"""


def test_start_up_loads_every_view_and_freezes_what_is_loaded():
    """The URLconf and its views are imported at start-up, not by the first request, and
    everything loaded is in the collector's permanent generation, which full collections
    skip (bench/RESULTS.md, "Full collections and `gc.freeze`")."""
    result = subprocess.run(
        [sys.executable, "-c", LOADED_AND_FROZEN],
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    counts, views_frozen = result.stdout.split("\n")[:2]
    frozen, tracked = map(int, counts.split())
    assert views_frozen == "True", result.stdout
    assert frozen > 10 * tracked, f"{frozen} frozen, {tracked} still tracked"
