"""Gradio app comparing attention backends side by side: ``python app/app.py [--model NAME|PATH]``."""
from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import sys
from pathlib import Path

from common.cli import USER_ERRORS, OneLineParser, report_error

if __name__ == "app":
    # `python app/app.py` and `python app/sample.py` put app/ first on the import path, where this file is what
    # `import app` finds: hand that import the package itself (app/__init__.py), so that `app.ui` etc. resolve.
    _package = importlib.util.spec_from_file_location("app", Path(__file__).with_name("__init__.py"))
    sys.modules["app"] = importlib.util.module_from_spec(_package)
    _package.loader.exec_module(sys.modules["app"])

DEFAULT_MODEL = "biggan-deep-128"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="registry name or local checkpoint path (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on, 1-65535 (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s, local only)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off unless given)")
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="torch.compile the generator with its attention backend (torch.compile backend, "
                             "default inductor); the first call per backend and shape pays the compile time")
    return parser.parse_args(argv)


def check_address(host: str, port: int) -> None:
    """ValueError (one line) unless ``host`` resolves and ``port`` is in 1-65535 and free there; nothing stays bound."""
    if not 1 <= port <= 65535:
        raise ValueError(f"--port {port} is out of range; accepted: 1-65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise ValueError(f"--host {host!r} is not a usable address ({err}); e.g. 127.0.0.1 or 0.0.0.0") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            probe.bind(address)
        except OSError as err:
            reason = err.strerror or err
            raise ValueError(f"cannot serve on {host}:{port}: {reason}; choose another --port or --host") from None


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        args = parse_args(argv)
        check_address(args.host, args.port)  # before the model loads: a busy port costs no loading time
        from common.devices import check_compile_backend

        check_compile_backend(args.compile)
        from weights import resolve_device

        device = str(resolve_device(args.device))
        from app.model_cache import GeneratorCache
        from app.ui import CSS, ComparisonApp

        app = ComparisonApp(args.model, device, cache=GeneratorCache(compile_backend=args.compile))
        app.cache.get(args.model, device)  # fail fast on a bad --model, and warm the cache
    except USER_ERRORS as err:
        return report_error(err)
    from app.serving import serve, stop_on_sigterm

    running: list = []
    stop_on_sigterm(running)
    try:
        demo = app.build()
        running.append(demo)
        demo.queue(default_concurrency_limit=1)
        serve(demo, args.share, server_name=args.host, server_port=args.port, ssr_mode=False, css=CSS,
              footer_links=["api"])
    except OSError as err:  # the port was taken between the check and the launch
        return report_error(ValueError(f"cannot serve on {args.host}:{args.port}: {err}"))
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM before the server was up
        return 130
    finally:
        app.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
