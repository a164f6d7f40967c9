#!/bin/sh
# Entrypoint of the api and worker images.
#
# It ends in `exec`, so the service process replaces this shell and runs as PID 1: it
# receives `docker stop`'s SIGTERM itself (Celery's warm shutdown, gunicorn's graceful
# stop). A shell left in between would not forward the signal, and the container would
# be SIGKILLed at the end of stop_grace_period with its batch unfinished.
#
#   docker compose run --rm api janus-service keys create --name me
#   docker compose run --rm api keys create --name me      # same: bare subcommand
#   docker compose run --rm api sh                         # any other program as is
set -eu

case "${1:-}" in
    migrate | keys | api | worker | dispatcher | tiny-checkpoint | convert | batch | dev | -*)
        set -- janus-service "$@"
        ;;
    "")
        set -- janus-service --help
        ;;
esac

exec "$@"
