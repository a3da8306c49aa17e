"""``python -m lightning_fusion.app --model <checkpoint | runs:/<run id>[/path] | models:/<name>/<version>>``

Serves the one-patient prediction page for a trained model on http://127.0.0.1:8765/ (``--host``,
``--port``; ``--port 0`` picks a free port, printed on the first line of output). The model is loaded
once at start-up; a model that cannot be loaded is a one-line ``model error: ...`` and exit status 2.
The server is Werkzeug's development server: meant for one user on this machine, with no
authentication, so it binds the loopback interface unless told otherwise.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_fusion.app", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="checkpoint file, runs:/<run id>[/<artifact path>] or models:/<name>/<version>"
    )
    parser.add_argument("--tracking-uri", help="MLflow tracking URI for runs:/ and models:/ references")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8765, help="port (default: %(default)s; 0: any free port)")
    parser.add_argument(
        "--max-upload-mb", type=float, default=20.0, help="largest upload in all, in MB (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in 0..65535, got {args.port}")
    if args.max_upload_mb <= 0:
        parser.error(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")

    from lightning_fusion.cli import log_to_stderr, run_reporting_input_errors

    log_to_stderr()
    code, model = run_reporting_input_errors(lambda: _load(args))
    if code:
        return code
    return _serve(model, args)


def _load(args: argparse.Namespace):
    """The model, in memory (an MLflow download is deleted once loaded)."""
    import torch

    from lightning_fusion.predict.loading import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    return load_model(args.model, args.tracking_uri)


def _serve(model, args: argparse.Namespace) -> int:
    from werkzeug.serving import make_server

    from lightning_fusion.app.server import create_app

    app = create_app(model, max_upload_mb=args.max_upload_mb, name=args.model)
    if not _is_loopback(args.host):
        print(
            f"warning: listening on {args.host}: other machines can upload patient data here, without "
            "authentication, to a development server",
            file=sys.stderr,
        )
    try:
        server = make_server(args.host, args.port, app, threaded=True)
    except OSError as err:
        print(f"cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 2
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving http://{host}:{server.server_port}/", flush=True)
    summary = f"{', '.join(model.modalities)} → {', '.join(model.classes)}"
    print(f"model: {args.model} ({summary}); Ctrl+C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    sys.exit(main())
