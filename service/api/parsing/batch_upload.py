"""Reading a bulk upload (JSONL or CSV) into checked jobs, or the list of every bad line.

Nothing is stored until every line has passed: one bad line rejects the file.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, replace
from typing import Any

from service.api.context import ModelInfo
from service.api.errors import ApiError
from service.api.parsing.bodies import TooDeep, loads, text_problems
from service.api.parsing.submit import CheckedJob, check_job
from service.core.settings import Settings
from service.lifecycle.jobs import JobSpec

MAX_LISTED_ERRORS = 200
TOP_LEVEL = {"model", "task", "input", "webhook", "webhook_events", "metadata"}
CSV_TOP = {"model", "task", "custom_id", "webhook"}
CSV_INT = {"num_images", "seed", "steps", "max_new_tokens"}
CSV_FLOAT = {"guidance", "temperature", "top_p"}
CSV_TEXT = {"prompt", "image", "question"}


@dataclass
class Line:
    line_no: int  # 1-based; a CSV's header row is line 1
    custom_id: str | None
    job: CheckedJob

    @property
    def spec(self) -> JobSpec:
        return replace(self.job.spec, custom_id=self.custom_id, line_no=self.line_no)


class UploadRejected(ApiError):
    def __init__(self, errors: list[dict[str, Any]], bad_lines: int, total: int) -> None:
        shown = errors[:MAX_LISTED_ERRORS]
        more = f" (first {len(shown)} errors listed)" if len(errors) > len(shown) else ""
        super().__init__(
            422,
            "validation_error",
            f"{bad_lines} of {total} lines are invalid; nothing was enqueued{more}",
            shown,
        )


def _error(line: int, field: str, message: str) -> dict[str, Any]:
    return {"line": line, "field": field, "message": message}


def detect_format(filename: str, content_type: str, data: bytes) -> str:
    name = filename.lower()
    if name.endswith(".csv") or content_type in ("text/csv", "application/csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson", ".json")) or "json" in content_type:
        return "jsonl"
    return "jsonl" if data.lstrip()[:1] == b"{" else "csv"


def merge_defaults(line: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    merged = {**defaults, **line}
    if isinstance(defaults.get("input"), dict) and isinstance(line.get("input"), dict):
        merged["input"] = {**defaults["input"], **line["input"]}
    return merged


def _jsonl_records(text: str) -> tuple[list[tuple[int, Any]], list[dict[str, Any]]]:
    records, errors = [], []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            records.append((number, loads(raw)))
        except TooDeep as exc:
            errors.append(_error(number, "line", str(exc)))
        except ValueError as exc:
            errors.append(_error(number, "line", f"not valid JSON: {exc}"))
    return records, errors


def _csv_value(column: str, value: str) -> Any:
    if column in CSV_INT:
        return int(value)
    if column in CSV_FLOAT:
        number = float(value)
        if not math.isfinite(number):  # float() takes "nan" and "inf"; JSON has neither
            raise ValueError(value)
        return number
    return value


def _csv_records(text: str) -> tuple[list[tuple[int, Any]], list[dict[str, Any]]]:
    try:
        return _csv_rows(text)
    except csv.Error as exc:  # e.g. a field larger than csv.field_size_limit()
        return [], [_error(1, "file", f"not readable as CSV: {exc}")]


def _csv_rows(text: str) -> tuple[list[tuple[int, Any]], list[dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    if not header or not any(header):
        return [], [_error(1, "header", "the CSV needs a header row")]
    known = CSV_TOP | CSV_INT | CSV_FLOAT | CSV_TEXT
    bad = [h for h in header if h not in known and not h.startswith("metadata.")]
    if bad or len(set(header)) != len(header):
        message = f"unknown columns: {', '.join(bad)}" if bad else "duplicate column names"
        return [], [_error(1, "header", message)]
    records, errors = [], []
    for row in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            errors.append(_error(number, "row", f"{len(row)} cells for {len(header)} columns"))
            continue
        record: dict[str, Any] = {"input": {}}
        for column, cell in zip(header, row, strict=True):
            if cell == "":
                continue
            try:
                value = _csv_value(column, cell)
            except ValueError:
                errors.append(_error(number, column, f"not a number: {cell!r}"))
                continue
            if column.startswith("metadata."):
                record.setdefault("metadata", {})[column.removeprefix("metadata.")] = value
            elif column in CSV_TOP:
                record[column] = value
            else:
                record["input"][column] = value
        records.append((number, record))
    return records, errors


def parse_upload(
    data: bytes,
    fmt: str,
    defaults: dict[str, Any],
    models: dict[str, ModelInfo],
    settings: Settings,
) -> list[Line]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApiError(
            422, "validation_error", "the file is not UTF-8 text", [_error(1, "file", str(exc))]
        ) from exc
    records, errors = _jsonl_records(text) if fmt == "jsonl" else _csv_records(text)
    if fmt == "csv":
        defaults = {"task": "generate", **defaults}
    if not records and not errors:
        raise ApiError(
            422, "validation_error", "the file holds no jobs", [_error(1, "file", "no lines")]
        )
    if len(records) > settings.batch_max_lines:
        raise ApiError(
            413,
            "too_many_lines",
            f"{len(records)} lines; at most {settings.batch_max_lines} per batch",
        )
    lines: list[Line] = []
    seen: dict[str, int] = {}
    bad = {e["line"] for e in errors}
    for number, record in records:
        if not isinstance(record, dict):
            errors.append(_error(number, "line", "each line must be a JSON object"))
            bad.add(number)
            continue
        problems = text_problems(record)  # custom_id included, before it is popped
        if problems:
            errors += [_error(number, d["field"], d["message"]) for d in problems]
            bad.add(number)
            continue
        record = dict(record)
        custom_id = record.pop("custom_id", None)
        if custom_id is not None:
            if not isinstance(custom_id, str) or not 0 < len(custom_id) <= 200:
                errors.append(_error(number, "custom_id", "a string of 1 to 200 characters"))
                bad.add(number)
                continue
            if custom_id in seen:
                errors.append(_error(number, "custom_id", f"duplicate of line {seen[custom_id]}"))
                bad.add(number)
                continue
            seen[custom_id] = number
        try:
            job = check_job(merge_defaults(record, defaults), models, settings)
        except ApiError as exc:
            details = exc.details if isinstance(exc.details, list) else []
            errors += [
                _error(number, d.get("field", "body"), d.get("message", exc.message))
                for d in details
            ] or [_error(number, "body", exc.message)]
            bad.add(number)
            continue
        lines.append(Line(number, custom_id, job))
    if errors:
        errors.sort(key=lambda e: e["line"])
        raise UploadRejected(errors, len(bad), len(records))
    return lines


def parse_defaults(raw: str | None) -> dict[str, Any]:
    if raw is None or not raw.strip():
        return {}
    try:
        value = loads(raw)
    except ValueError as exc:
        message = str(exc) if isinstance(exc, TooDeep) else "not valid JSON"
        raise ApiError(
            422,
            "validation_error",
            f"defaults is not valid JSON: {exc}",
            [{"field": "defaults", "message": message}],
        ) from exc
    if not isinstance(value, dict) or set(value) - TOP_LEVEL:
        raise ApiError(
            422,
            "validation_error",
            "defaults must be an object of job fields",
            [{"field": "defaults", "message": f"allowed keys: {', '.join(sorted(TOP_LEVEL))}"}],
        )
    problems = text_problems(value, "defaults")
    if problems:
        raise ApiError(422, "validation_error", f"{problems[0]['field']}: {problems[0]['message']}",
                       problems)
    return value
