"""Gradio app comparing attention backends side by side: ``python app/app.py [--model NAME|PATH]``."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from common.cli import USER_ERRORS, OneLineParser, report_error  # noqa: E402

DEFAULT_MODEL = "biggan-deep-128"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="registry name or local checkpoint path (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s, local only)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off unless given)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from app.ui import ComparisonApp
    from weights import resolve_device

    try:
        args = parse_args(argv)
        device = str(resolve_device(args.device))
        app = ComparisonApp(args.model, device)
        app.cache.get(args.model, device)  # fail fast on a bad --model, and warm the cache
    except USER_ERRORS as err:
        return report_error(err)
    demo = app.build()
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, ssr_mode=False, show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
