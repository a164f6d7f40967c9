"""Container healthcheck: exit 0 when the URL answers 2xx, else 1.

The images are slim Python images without curl or wget; the standard library does.
Usage: python healthcheck.py URL [TIMEOUT_SECONDS]
"""

from __future__ import annotations

import sys
import urllib.request


def main(argv: list[str]) -> int:
    url = argv[1]
    timeout = float(argv[2]) if len(argv) > 2 else 4.0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 0 if 200 <= response.status < 300 else 1
    except Exception as exc:  # urlopen raises HTTPError for 4xx/5xx, URLError when down
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
