"""Command line entry point: ``python -m airflow_provider_modelarts.emulator`` / ``modelarts-emulator``."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading

from airflow_provider_modelarts.emulator.ratelimit import parse_rate_limit
from airflow_provider_modelarts.emulator.server import (
    DEFAULT_AK,
    DEFAULT_DOMAIN,
    DEFAULT_IAM_PASSWORD,
    DEFAULT_IAM_USER,
    DEFAULT_PROJECT_ID,
    DEFAULT_SK,
    ModelArtsEmulator,
)

__all__ = ["build_parser", "export_line", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the emulator command."""
    parser = argparse.ArgumentParser(
        prog="modelarts-emulator",
        description="Serve a local Huawei Cloud ModelArts training-job API, IAM tokens and OBS log links.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free port (default 0)")
    parser.add_argument(
        "--scenario", metavar="FILE", help="scenario file (JSON or YAML); default: built-in jobs"
    )
    parser.add_argument("--ak", default=DEFAULT_AK, help="access key accepted for AK/SK signatures")
    parser.add_argument("--sk", default=DEFAULT_SK, help="secret key accepted for AK/SK signatures")
    parser.add_argument(
        "--project-id", default=DEFAULT_PROJECT_ID, help="project id served under /v2/{project_id}/"
    )
    parser.add_argument("--iam-user", default=DEFAULT_IAM_USER, help="IAM user name for POST /v3/auth/tokens")
    parser.add_argument(
        "--iam-password", default=DEFAULT_IAM_PASSWORD, help="IAM password for POST /v3/auth/tokens"
    )
    parser.add_argument("--domain", default=DEFAULT_DOMAIN, help="IAM account (domain) name")
    parser.add_argument(
        "--link-ttl", type=float, default=300, help="lifetime of OBS log links in seconds (default 300)"
    )
    parser.add_argument(
        "--rate-limit",
        metavar="N[/s|/min]",
        type=_rate_limit,
        help="per-credential limit on ModelArts API calls (token bucket); over it: 429 APIG.0308",
    )
    return parser


def export_line(connection_json: str, conn_id: str = "modelarts_default") -> str:
    """A shell line that makes the connection visible to every ``airflow`` command run after it.

    :param connection_json: the connection as JSON (``ModelArtsEmulator.connection_json()``).
    :param conn_id: the connection id.
    """
    return f"export AIRFLOW_CONN_{conn_id.upper()}={shlex.quote(connection_json)}"


def _rate_limit(value: str) -> str:
    try:
        parse_rate_limit(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the emulator until interrupted. The first stdout line is the base URL.

    :param argv: command line arguments (``sys.argv[1:]`` by default).
    """
    args = build_parser().parse_args(argv)
    options = {name: value for name, value in vars(args).items() if name != "scenario"}
    emulator = ModelArtsEmulator(args.scenario, **options)
    url = emulator.start()
    print(url, flush=True)
    print(f"project_id={emulator.project_id} ak={emulator.ak} sk={emulator.sk}", flush=True)
    print(
        f"iam user={emulator.iam_user} password={emulator.iam_password} domain={emulator.domain}", flush=True
    )
    print(f"jobs: {', '.join(emulator.job_ids())}", flush=True)
    print(export_line(emulator.connection_json()), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
