"""Serve a notifier with uvicorn. On SIGTERM uvicorn stops taking HTTP requests, then the
lifespan stops the worker: nothing new is read, what is held is finished or handed back."""

from __future__ import annotations

import uvicorn

from notifier.app import Notifier
from shared.collector import tune_for_a_server


def serve(notifier: Notifier) -> None:
    settings = notifier.settings
    config = uvicorn.Config(
        notifier.app,
        host=settings.notifier_host,
        port=settings.notifier_port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    tune_for_a_server()
    uvicorn.Server(config).run()
