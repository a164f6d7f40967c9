"""`janus-service` whose lease keepers renew hourly rather than every lease/3 s (run by
tests/test_cancel_push.py): a cancel can then reach a running job only by its push."""

from __future__ import annotations

import sys

from service.entry.cli import main
from service.workers import lease

if __name__ == "__main__":
    lease.RENEW_AT_MOST_EVERY = 3600.0
    main(sys.argv[1:])
