"""One clock for the relay: monotonic, anchored to the wall clock at process start."""

import time

_WALL0 = time.time()
_MONO0 = time.monotonic()


def now() -> float:
    return _WALL0 + (time.monotonic() - _MONO0)
