"""Serving the Gradio page from ``app/app.py``: our start-up lines, and a quiet stop on SIGTERM.

Gradio's own start-up text tells the user to "set `share=True` in `launch()`", which is not how this
program is used; it is launched quietly and prints the local URL and the ``--share`` flag instead.
SIGTERM stops uvicorn without waiting for open event streams (``force_exit``); uvicorn then cancels the
ASGI lifespan task and any open HTTP stream and logs each ``CancelledError`` as a long traceback; those
records are dropped here: they are the expected end of a forced stop, not errors.
"""
from __future__ import annotations

import asyncio
import logging
import signal

UVICORN_LOGGER = "uvicorn.error"


def _not_cancelled(record: logging.LogRecord) -> bool:
    """False for the records of tasks a forced stop cancels: the lifespan (its traceback is the message) and
    open HTTP streams ("Exception in ASGI application" with the CancelledError attached)."""
    cancelled = record.exc_info is not None and isinstance(record.exc_info[1], asyncio.CancelledError)
    return not cancelled and "CancelledError" not in record.getMessage()


def stop_on_sigterm(running: list) -> None:
    """SIGTERM stops the server like Ctrl-C (so the scratch folder is removed), without waiting for open
    connections: a client's event stream would otherwise hold the shutdown for Gradio's 5 s join timeout.
    ``running`` holds the launched Blocks once there is one."""

    def terminate(signum, frame):
        logging.getLogger(UVICORN_LOGGER).addFilter(_not_cancelled)
        for demo in running:
            if getattr(demo, "server", None) is not None:  # uvicorn's
                demo.server.force_exit = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)


def serve(demo, share: bool, **launch_kwargs) -> None:
    """``demo.launch(...)`` without Gradio's start-up text, then our lines; blocks until Ctrl-C / SIGTERM."""
    demo.launch(share=share, quiet=True, prevent_thread_lock=True, **launch_kwargs)
    print(f"* Running on local URL:  {demo.local_url}", flush=True)
    if not share:
        print("* No public link: start with --share for a temporary gradio.live one.", flush=True)
    demo.block_thread()
