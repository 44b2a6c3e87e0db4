"""The cyclic garbage collector, set for a long-running server that holds many live objects.

CPython's defaults (a young collection every 700 net allocations, a full one whenever the
long-lived objects grew by a quarter) suit short programs. A gateway holding 15,000 sockets
(a few million live objects) spent about 15% of a connect's CPU in collections that found
nothing to free (bench/conn_cost.py, 15,000 clients: 0.71 ms a connect with the defaults, 0.60
with these). What is alive once a server has started (modules, settings, the app) is frozen,
never to be scanned again, and the young generation is collected every 50,000 allocations:
reference cycles are still freed, somewhat later. Called by `archmesh-rt gateway` and
`archmesh-rt notifier` (gateway/server.py, notifier/server.py), not by code a test suite or
another program imports."""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 20, 100)


def tune_for_a_server() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
