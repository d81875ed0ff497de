"""The app's settings, with recordings written to the benchmark's private directory
(`BENCH_MEDIA_ROOT`) instead of `var/media`: the voice part records every session of a run.
"""

import os

from operator_console.settings import *  # noqa: F403

MEDIA_ROOT = os.environ["BENCH_MEDIA_ROOT"]
