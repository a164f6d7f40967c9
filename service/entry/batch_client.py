"""`janus-service batch submit|results`: bulk jobs for people who'd rather not write HTTP."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import requests

from service.lifecycle.status import TERMINAL, BatchStatus

TERMINAL_BATCH = (BatchStatus.COMPLETED, BatchStatus.CANCELED)


class ClientError(RuntimeError):
    pass


class BatchClient:
    def __init__(self, api_url: str, api_key: str, timeout: float = 60.0) -> None:
        if not api_key:
            raise ClientError("no API key: pass --api-key or set JANUS_API_KEY")
        self.base = api_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout

    def _check(self, response: requests.Response) -> Any:
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError):
                raise ClientError(f"HTTP {response.status_code}: {response.text[:500]}") from None
            lines = [f"{error['code']}: {error['message']}"]
            for detail in (error.get("details") or [])[:50]:
                if isinstance(detail, dict):
                    where = f"line {detail['line']} " if "line" in detail else ""
                    lines.append(f"  {where}{detail.get('field', '')}: {detail.get('message')}")
            raise ClientError("\n".join(lines))
        return response

    def submit(self, path: Path, defaults: dict[str, Any], webhook: str | None = None) -> dict:
        with path.open("rb") as fh:
            data = {"defaults": json.dumps(defaults)}
            if webhook:
                data["webhook"] = webhook
            response = self.session.post(f"{self.base}/v1/batches", data=data,
                                         files={"file": (path.name, fh)}, timeout=self.timeout)
        return self._check(response).json()

    def get(self, batch_id: str) -> dict:
        return self._check(self.session.get(f"{self.base}/v1/batches/{batch_id}",
                                            timeout=self.timeout)).json()

    def results(self, batch_id: str, out: TextIO) -> int:
        response = self.session.get(f"{self.base}/v1/batches/{batch_id}/results",
                                    stream=True, timeout=self.timeout)
        self._check(response)
        response.encoding = "utf-8"  # NDJSON is UTF-8; requests can't tell without a charset
        count = 0
        for line in response.iter_lines(decode_unicode=True):
            if line:
                out.write(line + "\n")
                count += 1
        return count

    def wait(self, batch_id: str, progress: TextIO, interval: float = 2.0) -> dict:
        started = time.monotonic()
        while True:
            batch = self.get(batch_id)
            progress.write("\r" + progress_line(batch, time.monotonic() - started))
            progress.flush()
            if batch["status"] in TERMINAL_BATCH:
                progress.write("\n")
                return batch
            time.sleep(interval)


def progress_line(batch: dict, elapsed: float, width: int = 30) -> str:
    counts = batch["counts"]
    total = counts["total"] or 1
    done = sum(counts[status] for status in TERMINAL)
    filled = int(width * done / total)
    eta = "--"
    if 0 < done < total:
        eta = f"{elapsed / done * (total - done):.0f}s"
    return (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
            f"queued {counts['queued']} running {counts['running']} "
            f"ok {counts['succeeded']} failed {counts['failed']} canceled {counts['canceled']} "
            f"ETA {eta} ({batch['status']})")


def submit_command(args: Any) -> int:
    client = BatchClient(args.api_url, args.api_key)
    defaults: dict[str, Any] = json.loads(args.defaults) if args.defaults else {}
    if args.model:
        defaults["model"] = args.model
    if args.task:
        defaults["task"] = args.task
    try:
        batch = client.submit(Path(args.file), defaults, args.webhook)
        print(batch["id"])
        if args.wait:
            batch = client.wait(batch["id"], sys.stderr)
            print(json.dumps(batch["counts"]), file=sys.stderr)
            return 0 if batch["counts"]["failed"] == 0 else 1
    except ClientError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


def results_command(args: Any) -> int:
    client = BatchClient(args.api_url, args.api_key)
    try:
        if args.output == "-":
            count = client.results(args.batch_id, sys.stdout)
        else:
            with open(args.output, "w") as out:
                count = client.results(args.batch_id, out)
    except ClientError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{count} results written to {args.output}", file=sys.stderr)
    return 0
