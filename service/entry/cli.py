"""`janus-service`: the operator's commands (docs/API.md, "Command line")."""

from __future__ import annotations

import argparse
import json
import os
import sys

from pydantic import ValidationError

from service.core.settings import Settings, load_settings


def _settings() -> Settings:
    try:
        return load_settings()
    except ValidationError as exc:
        sys.exit(f"janus-service: bad configuration:\n{exc}")


def _setup_logging(level: str, fmt: str = "text") -> None:
    from service.core.logs import setup_logging

    setup_logging(level, fmt)  # fmt "json": one JSON object per line (JANUS_LOG_FORMAT)


def cmd_migrate(args: argparse.Namespace) -> None:
    from service.entry.migrate import upgrade

    upgrade(_settings().database_url)
    print("database is at the latest schema", file=sys.stderr)


def cmd_keys_create(args: argparse.Namespace) -> None:
    from service.core.db import make_db, make_sessionmaker, session_scope
    from service.keys.store import create_key

    sessions = make_sessionmaker(make_db(_settings().database_url))
    with session_scope(sessions) as session:
        new = create_key(session=session, name=args.name)
    if args.json:
        print(json.dumps({"key": new.key, "webhook_secret": new.webhook_secret}))
    else:
        print(f"key:            {new.key}")
        print(f"webhook secret: {new.webhook_secret}")
        print("(shown once; only a hash of the key is stored)", file=sys.stderr)


def cmd_keys_revoke(args: argparse.Namespace) -> None:
    from service.core.db import make_db, make_sessionmaker, session_scope
    from service.keys.revocation import KeyVersion
    from service.keys.store import KeyLookupError, revoke_key

    settings = _settings()
    sessions = make_sessionmaker(make_db(settings.database_url))
    try:
        with session_scope(sessions) as session:
            row = revoke_key(session=session, key_id=args.key_id, name=args.name)
    except KeyLookupError as exc:
        sys.exit(f"janus-service keys revoke: {exc}")
    # After the commit: API processes drop their cached keys on their next request.
    if not KeyVersion(settings).bump():
        print(
            "janus-service keys revoke: warning: Redis did not answer; API processes "
            "refuse the key within 30 s (their key cache) instead of at once",
            file=sys.stderr,
        )
    print(f"revoked {row.id} ({row.name})")


def cmd_keys_list(args: argparse.Namespace) -> None:
    from service.core.db import make_db, make_sessionmaker, session_scope
    from service.keys.store import list_keys
    from service.lifecycle.views import iso

    sessions = make_sessionmaker(make_db(_settings().database_url))
    with session_scope(sessions) as session:
        rows = [
            {
                "id": k.id,
                "name": k.name,
                "prefix": k.key_prefix,
                "created_at": iso(k.created_at),
                "revoked_at": iso(k.revoked_at),
            }
            for k in list_keys(session=session)
        ]
    if args.json:
        print(json.dumps(rows))
        return
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
        print(f"{row['id']}  {row['prefix']}…  {row['name']:<20}  {row['created_at']}  {state}")


def cmd_keys_rotate_secret(args: argparse.Namespace) -> None:
    from service.core.db import make_db, make_sessionmaker, session_scope
    from service.keys.store import KeyLookupError, rotate_secret

    settings = _settings()
    sessions = make_sessionmaker(make_db(settings.database_url))
    try:
        with session_scope(sessions) as session:
            secret = rotate_secret(
                session=session,
                grace_seconds=settings.webhook_secret_grace_seconds,
                key_id=args.key_id,
                name=args.name,
            )
    except KeyLookupError as exc:
        sys.exit(f"janus-service keys rotate-secret: {exc}")
    if args.json:
        print(json.dumps({"webhook_secret": secret}))
    else:
        print(f"webhook secret: {secret}")
        print(
            f"(shown once; the old secret keeps signing for "
            f"{settings.webhook_secret_grace_seconds:g}s)",
            file=sys.stderr,
        )


def cmd_api(args: argparse.Namespace) -> None:
    from service.entry.server import serve

    serve(_settings(), host=args.host, port=args.port, workers=args.workers, threads=args.threads,
          worker_class=args.worker_class, connections=args.connections)


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
            compile=args.compile,
            upsample_1024=args.upsample_1024,
            loglevel=settings.log_level,
            metrics_port=(
                settings.worker_metrics_port if args.metrics_port is None else args.metrics_port
            ),
        )
    except WorkerStartError as exc:
        sys.exit(f"janus-service worker: {exc}")


def cmd_dispatcher(args: argparse.Namespace) -> None:
    from service.entry.dispatcher import run_dispatcher

    run_dispatcher(_settings())


def cmd_tiny_checkpoint(args: argparse.Namespace) -> None:
    from service.models.checkpoints.tiny import write_tiny_checkpoint

    path = write_tiny_checkpoint(
        args.family, args.out_dir, image_size=args.image_size, seed=args.seed
    )
    print(path)


def cmd_batch(args: argparse.Namespace) -> None:
    from service.entry import batch_client

    command = (
        batch_client.submit_command
        if args.batch_command == "submit"
        else (batch_client.results_command)
    )
    sys.exit(command(args))


def cmd_convert(args: argparse.Namespace) -> None:
    from service.models.checkpoints.convert import convert_checkpoint

    print(convert_checkpoint(args.src, args.dst))


def cmd_dev(args: argparse.Namespace) -> None:
    from service.entry.dev import run_dev

    run_dev(_settings(), port=args.port)


def cmd_queues(args: argparse.Namespace) -> None:
    """Compare the kept queue counts with the jobs table; with `recount`, reset them."""
    from service.core.db import make_db, make_sessionmaker, session_scope
    from service.lifecycle.queues import drift, recount

    sessions = make_sessionmaker(make_db(_settings().database_url))
    with session_scope(sessions) as session:
        if args.queues_command == "recount":
            recount(session=session)
    with session_scope(sessions) as session:
        found = drift(session=session)
    for (model, lane), (kept, counted) in found.items():
        print(f"{model} lane {lane}: kept {kept}, queued rows {counted}")
    if not found:
        print("queue counts agree with the jobs table", file=sys.stderr)
    elif args.queues_command == "check":
        sys.exit(1)


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
    revoke = keys.add_parser("revoke", help="refuse a key from now on")
    which_revoke = revoke.add_mutually_exclusive_group(required=True)
    which_revoke.add_argument("--key-id")
    which_revoke.add_argument("--name")
    revoke.set_defaults(func=cmd_keys_revoke)
    listing = keys.add_parser("list", help="keys with their ids, prefixes and state")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_keys_list)

    rotate = keys.add_parser(
        "rotate-secret", help="new webhook secret; the old one signs too for a grace period"
    )
    which = rotate.add_mutually_exclusive_group(required=True)
    which.add_argument("--key-id")
    which.add_argument("--name")
    rotate.add_argument("--json", action="store_true", help="print only a JSON object")
    rotate.set_defaults(func=cmd_keys_rotate_secret)

    queues = sub.add_parser(
        "queues", help="the queued-job counts behind queue positions"
    ).add_subparsers(dest="queues_command", required=True)
    queues.add_parser("check", help="exit 1 if they differ from the jobs table").set_defaults(
        func=cmd_queues
    )
    queues.add_parser(
        "recount", help="set them from the jobs table (after old processes ran)"
    ).set_defaults(func=cmd_queues)

    api = sub.add_parser("api", help="serve the HTTP API (gunicorn)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=2)
    api.add_argument(
        "--threads",
        type=int,
        default=16,
        help="per process, with --worker-class gthread (where Prefer: wait holds a thread)",
    )
    api.add_argument(
        "--worker-class",
        choices=["gevent", "gthread"],
        default="gevent",
        help="gevent: waits and event streams park a greenlet, not a thread",
    )
    api.add_argument(
        "--connections", type=int, default=1000, help="open requests per gevent process"
    )
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="load one model and run its jobs")
    worker.add_argument("--model", required=True)
    worker.add_argument("--device", default="cpu", help="cpu or cuda:N")
    worker.add_argument(
        "--max-batch", type=int, default=8,
        help="the engine's slots (jobs decoding at once; fewer when a GPU's free memory "
        "holds fewer)",
    )
    worker.add_argument("--hostname", default=None, help="name this worker reports")
    worker.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None,
        help="Janus/Janus-Pro: torch.compile the engine's decode step (default: on for CUDA, "
        "off on a CPU)"
    )
    worker.add_argument(
        "--upsample-1024",
        action="store_true",
        help="JanusFlow: upsample outputs to 1024 px as the published demo does",
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port (default JANUS_WORKER_METRICS_PORT; 0 = off)",
    )
    worker.set_defaults(func=cmd_worker)

    sub.add_parser("dispatcher", help="webhook delivery and housekeeping").set_defaults(
        func=cmd_dispatcher
    )

    tiny = sub.add_parser("tiny-checkpoint", help="write a tiny random checkpoint")
    tiny.add_argument("--family", required=True, choices=["janus", "janus-pro", "janusflow"])
    tiny.add_argument("--image-size", type=int, default=384)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("out_dir")
    tiny.set_defaults(func=cmd_tiny_checkpoint)

    dev = sub.add_parser("dev", help="everything on one machine (what `make run` calls)")
    dev.add_argument("--port", type=int, default=8000)
    dev.set_defaults(func=cmd_dev)

    batch = sub.add_parser("batch", help="bulk jobs from a JSONL or CSV file (an HTTP client)")
    batch_sub = batch.add_subparsers(dest="batch_command", required=True)
    for name, help_text in (
        ("submit", "upload a file of jobs"),
        ("results", "download a batch's results as JSONL"),
    ):
        cmd = batch_sub.add_parser(name, help=help_text)
        cmd.add_argument(
            "--api-url", default=os.environ.get("JANUS_API_URL", "http://127.0.0.1:8000")
        )
        cmd.add_argument("--api-key", default=os.environ.get("JANUS_API_KEY", ""))
        cmd.set_defaults(func=cmd_batch)
    submit = batch_sub.choices["submit"]
    submit.add_argument("file")
    submit.add_argument("--model", help="default model for lines that name none")
    submit.add_argument("--task", choices=["generate", "understand"])
    submit.add_argument("--defaults", help="JSON object of fields lines leave out")
    submit.add_argument("--webhook", help="URL that gets batch.completed")
    submit.add_argument("--wait", action="store_true", help="show progress until it finishes")
    results = batch_sub.choices["results"]
    results.add_argument("batch_id")
    results.add_argument("-o", "--output", default="-", help="file to write (default stdout)")

    convert = sub.add_parser(
        "convert",
        help="convert an original deepseek-ai Janus checkpoint to the transformers layout",
    )
    convert.add_argument("src")
    convert.add_argument("dst")
    convert.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command not in ("keys", "batch"):
        if args.command == "tiny-checkpoint":
            _setup_logging("INFO")
        else:
            settings = _settings()
            _setup_logging(settings.log_level, settings.log_format)
    args.func(args)


if __name__ == "__main__":
    main()
