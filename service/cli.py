"""`janus-service`: the operator's commands (API.md, "Running it")."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from pydantic import ValidationError

from service.settings import Settings, load_settings


def _settings() -> Settings:
    try:
        return load_settings()
    except ValidationError as exc:
        sys.exit(f"janus-service: bad configuration:\n{exc}")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )


def cmd_migrate(args: argparse.Namespace) -> None:
    from service.migrate import upgrade

    upgrade(_settings().database_url)
    print("database is at the latest schema", file=sys.stderr)


def cmd_keys_create(args: argparse.Namespace) -> None:
    from service.db import make_engine, make_sessionmaker, session_scope
    from service.keys import create_key

    sessions = make_sessionmaker(make_engine(_settings().database_url))
    with session_scope(sessions) as session:
        new = create_key(session=session, name=args.name)
    if args.json:
        print(json.dumps({"key": new.key, "webhook_secret": new.webhook_secret}))
    else:
        print(f"key:            {new.key}")
        print(f"webhook secret: {new.webhook_secret}")
        print("(shown once; only a hash of the key is stored)", file=sys.stderr)


def cmd_api(args: argparse.Namespace) -> None:
    from service.server import serve

    serve(_settings(), host=args.host, port=args.port, workers=args.workers, threads=args.threads)


def cmd_worker(args: argparse.Namespace) -> None:
    from service.workers.worker import WorkerStartError, run_worker

    settings = _settings()
    try:
        run_worker(
            settings,
            args.model,
            device=args.device,
            max_batch=args.max_batch,
            hostname=args.hostname,
            loglevel=settings.log_level,
        )
    except WorkerStartError as exc:
        sys.exit(f"janus-service worker: {exc}")


def cmd_dispatcher(args: argparse.Namespace) -> None:
    from service.workers.dispatcher import run_dispatcher

    run_dispatcher(_settings())


def cmd_tiny_checkpoint(args: argparse.Namespace) -> None:
    from service.models.tiny import write_tiny_checkpoint

    path = write_tiny_checkpoint(
        args.family, args.out_dir, image_size=args.image_size, seed=args.seed
    )
    print(path)


def cmd_dev(args: argparse.Namespace) -> None:
    from service.dev import run_dev

    run_dev(_settings(), port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="janus-service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="bring the database to the latest schema").set_defaults(
        func=cmd_migrate
    )

    keys = sub.add_parser("keys", help="API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="create a key; prints it and its webhook secret once")
    create.add_argument("--name", required=True)
    create.add_argument("--json", action="store_true", help="print only a JSON object")
    create.set_defaults(func=cmd_keys_create)

    api = sub.add_parser("api", help="serve the HTTP API (gunicorn)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=2)
    api.add_argument(
        "--threads",
        type=int,
        default=16,
        help="per process; Prefer: wait holds a thread while it waits",
    )
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="load one model and run its jobs")
    worker.add_argument("--model", required=True)
    worker.add_argument("--device", default="cpu", help="cpu or cuda:N")
    worker.add_argument(
        "--max-batch", type=int, default=8, help="most compatible jobs run as one batch"
    )
    worker.add_argument("--hostname", default=None, help="name this worker reports")
    worker.set_defaults(func=cmd_worker)

    sub.add_parser("dispatcher", help="webhook delivery and housekeeping").set_defaults(
        func=cmd_dispatcher
    )

    tiny = sub.add_parser("tiny-checkpoint", help="write a tiny random checkpoint")
    tiny.add_argument("--family", required=True, choices=["janus-pro", "janusflow"])
    tiny.add_argument("--image-size", type=int, default=384)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("out_dir")
    tiny.set_defaults(func=cmd_tiny_checkpoint)

    dev = sub.add_parser("dev", help="everything on one machine (what `make run` calls)")
    dev.add_argument("--port", type=int, default=8000)
    dev.set_defaults(func=cmd_dev)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command != "keys":
        _setup_logging(_settings().log_level if args.command != "tiny-checkpoint" else "INFO")
    args.func(args)


if __name__ == "__main__":
    main()
