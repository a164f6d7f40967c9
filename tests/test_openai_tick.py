"""OpenAI batches move on with nobody reading them: the dispatcher's tick
(service/openai/batch_tick.py) expires them and writes their result files, once,
racing reads and other dispatchers. Driven like tests/test_openai.py (the official
client against a live API, jobs ended through the lifecycle), the tick run here;
tests/test_openai_e2e.py and tests/test_embedded.py run it inside a real dispatcher.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from openai import OpenAI
from sqlalchemy import create_engine, select, update

from service.core.tables import Job, OpenAIBatch, OpenAIFile, utcnow
from service.lifecycle.status import JobStatus
from tests.helpers import start_api
from tests.test_openai import finish, image_line, in_background, result_lines, upload


@pytest.fixture(scope="module")
def oai(settings, api_key, tmp_path_factory):  # type: ignore[no-untyped-def]
    api, base = start_api(settings, tmp_path_factory.mktemp("openai-tick") / "api.log")
    yield OpenAI(base_url=f"{base}/openai/v1", api_key=api_key, max_retries=0)
    api.stop()


@pytest.fixture(scope="module")
def engine(settings):  # type: ignore[no-untyped-def]
    engine = create_engine(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def tick(settings):  # type: ignore[no-untyped-def]
    """One tick of the dispatcher's OpenAI batch step, run here (service/entry/dispatcher.py
    runs it every sweep; tests/test_openai_e2e.py has a real dispatcher)."""
    from service.core.db import make_db, make_sessionmaker
    from service.core.storage import storage_from_settings
    from service.openai.batch_tick import advance_due

    engine = make_db(settings.database_url)
    sessions = make_sessionmaker(engine)
    storage = storage_from_settings(settings)
    yield lambda: advance_due(sessions=sessions, storage=storage, settings=settings)
    engine.dispose()


def batch_row(engine, batch_id: str) -> Any:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(select(OpenAIBatch).where(OpenAIBatch.id == batch_id)).one()


def output_files(engine, batch_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return list(conn.scalars(select(OpenAIFile.id).where(
            OpenAIFile.filename.in_([f"{batch_id}_output.jsonl", f"{batch_id}_error.jsonl"]))))


def batch_jobs(engine, batch_id: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return dict(conn.execute(select(Job.custom_id, Job.id).where(Job.batch_id == batch_id))
                    .all())


def test_the_tick_completes_a_batch_nobody_reads(oai: OpenAI, engine, tick) -> None:  # type: ignore[no-untyped-def]
    source = upload(oai, [image_line("quiet-a"), image_line("quiet-b")])
    batch = oai.batches.create(input_file_id=source.id, endpoint="/v1/images/generations",
                               completion_window="24h")
    for job_id in batch_jobs(engine, batch.id).values():
        finish(engine, job_id, JobStatus.SUCCEEDED, output={"images": [], "seed": 1})
    assert batch_row(engine, batch.id).finalized_at is None  # nobody has read it
    report = tick()
    assert batch.id in report.finalized and batch.id not in report.failed
    row = batch_row(engine, batch.id)
    assert row.finalized_at is not None and row.error_file_id is None
    lines = result_lines(oai, row.output_file_id)  # a client that polls only the file
    assert [line["custom_id"] for line in lines] == ["quiet-a", "quiet-b"]
    assert batch.id not in tick().finalized  # done once
    done = oai.batches.retrieve(batch.id)
    assert done.status == "completed" and done.output_file_id == row.output_file_id
    assert output_files(engine, batch.id) == [row.output_file_id]


def test_the_tick_expires_a_batch_past_its_window(oai: OpenAI, engine, tick) -> None:  # type: ignore[no-untyped-def]
    source = upload(oai, [image_line("slow-a"), image_line("slow-b")])
    batch = oai.batches.create(input_file_id=source.id, endpoint="/v1/images/generations",
                               completion_window="24h")
    jobs = batch_jobs(engine, batch.id)
    finish(engine, jobs["slow-a"], JobStatus.SUCCEEDED, output={"images": [], "seed": 1})
    with engine.begin() as conn:
        conn.execute(update(OpenAIBatch).where(OpenAIBatch.id == batch.id)
                     .values(expires_at=utcnow() - timedelta(seconds=1)))
    report = tick()
    assert batch.id in report.expired and batch.id in report.finalized
    row = batch_row(engine, batch.id)
    assert row.expired_at is not None and row.finalized_at is not None
    [done] = result_lines(oai, row.output_file_id)
    [late] = result_lines(oai, row.error_file_id)
    assert done["custom_id"] == "slow-a" and done["response"]["status_code"] == 200
    assert late["custom_id"] == "slow-b" and late["error"]["code"] == "batch_expired"
    again = tick()
    assert batch.id not in again.expired and batch.id not in again.finalized
    expired = oai.batches.retrieve(batch.id)
    assert expired.status == "expired" and expired.error_file_id == row.error_file_id
    assert (expired.request_counts.completed, expired.request_counts.failed) == (1, 1)


def test_racing_ticks_and_reads_write_one_output_file(oai: OpenAI, engine, tick) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.orm import Session

    source = upload(oai, [image_line("race")])
    batch = oai.batches.create(input_file_id=source.id, endpoint="/v1/images/generations",
                               completion_window="24h")
    [job_id] = batch_jobs(engine, batch.id).values()
    finish(engine, job_id, JobStatus.SUCCEEDED, output={"images": [], "seed": 1})
    with Session(engine) as holder:  # another finalizer holds the record's row
        holder.execute(select(OpenAIBatch.id).where(OpenAIBatch.id == batch.id)
                       .with_for_update()).one()
        thread, out = in_background(tick)
        thread.join(60)
        alive = thread.is_alive()
        if not alive:  # a read skips it too, and says so
            assert oai.batches.retrieve(batch.id).status == "finalizing"
        holder.rollback()
        thread.join(60)
    assert not alive, "the tick waited for the row's lock instead of skipping it"
    assert batch.id not in out["value"].finalized
    assert output_files(engine, batch.id) == []
    start = threading.Barrier(4)
    ticks = [in_background(lambda: (start.wait(), tick())[1]) for _ in range(3)]
    read = in_background(lambda: (start.wait(), oai.batches.retrieve(batch.id))[1])
    for thread, _ in (*ticks, read):
        thread.join(60)
    assert all("error" not in out for _, out in (*ticks, read)), [o for _, o in ticks]
    assert sum(batch.id in out["value"].finalized for _, out in ticks) <= 1
    row = batch_row(engine, batch.id)
    assert output_files(engine, batch.id) == [row.output_file_id]
    assert oai.batches.retrieve(batch.id).output_file_id == row.output_file_id


def test_a_tick_racing_an_expiring_read_does_not_expire_it_again(oai: OpenAI, engine, tick) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.orm import Session

    from service.openai import records

    source = upload(oai, [image_line("both")])
    batch = oai.batches.create(input_file_id=source.id, endpoint="/v1/images/generations",
                               completion_window="24h")
    with engine.begin() as conn:
        conn.execute(update(OpenAIBatch).where(OpenAIBatch.id == batch.id)
                     .values(expires_at=utcnow() - timedelta(seconds=1)))
    with Session(engine) as reader:  # a read expiring it, not yet committed
        record, ours = records.get_record(session=reader, api_key_id=None, record_id=batch.id)
        moment = utcnow()
        assert records.expire_if_due(session=reader, record=record, batch=ours, now=moment)
        thread, out = in_background(tick)
        thread.join(1.0)  # the tick finds it due and waits on the record's row
        reader.commit()
    thread.join(60)
    assert batch.id not in out["value"].expired
    row = batch_row(engine, batch.id)
    assert row.expired_at == moment and row.finalized_at is not None


def test_one_broken_batch_does_not_stop_the_tick(oai: OpenAI, engine, tick) -> None:  # type: ignore[no-untyped-def]
    broken = oai.batches.create(input_file_id=upload(oai, [image_line("broken")]).id,
                                endpoint="/v1/images/generations", completion_window="24h")
    fine = oai.batches.create(input_file_id=upload(oai, [image_line("fine")]).id,
                              endpoint="/v1/images/generations", completion_window="24h")
    [bad_job] = batch_jobs(engine, broken.id).values()
    [good_job] = batch_jobs(engine, fine.id).values()
    finish(engine, bad_job, JobStatus.SUCCEEDED, output={"images": 5})  # not a list: a bad row
    finish(engine, good_job, JobStatus.SUCCEEDED, output={"images": [], "seed": 1})
    report = tick()
    assert broken.id in report.failed and fine.id in report.finalized
    assert batch_row(engine, broken.id).finalized_at is None  # nothing half-written
    assert output_files(engine, broken.id) == []
    assert batch_row(engine, fine.id).output_file_id
    assert broken.id in tick().failed  # a plain tick tries it again, alone


def test_a_failing_batch_sits_out_more_ticks_each_time(oai: OpenAI, engine, settings) -> None:  # type: ignore[no-untyped-def]
    from service.core.db import make_db, make_sessionmaker
    from service.core.storage import storage_from_settings
    from service.openai.batch_tick import Ticker

    broken = oai.batches.create(input_file_id=upload(oai, [image_line("again")]).id,
                                endpoint="/v1/images/generations", completion_window="24h")
    [job_id] = batch_jobs(engine, broken.id).values()
    finish(engine, job_id, JobStatus.SUCCEEDED, output={"images": 5})
    own = make_db(settings.database_url)
    ticker = Ticker(sessions=make_sessionmaker(own), storage=storage_from_settings(settings),
                    settings=settings)
    tried = [broken.id in ticker.tick().failed for _ in range(8)]
    assert tried == [True, False, True, False, False, False, True, False]  # sits out 1, 3, 7
    with engine.begin() as conn:  # mended: done at its next try, and forgotten
        conn.execute(update(Job).where(Job.id == job_id).values(output={"images": []}))
    for _ in range(Ticker.MAX_SIT_OUT):
        if broken.id not in ticker.failing:
            break
        ticker.tick()
    assert broken.id not in ticker.failing and batch_row(engine, broken.id).output_file_id
    own.dispose()


def test_on_sqlite_a_second_finalizer_waits_then_finds_it_done(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`make run`'s SQLite has no row locks: the claim is the database's write lock."""
    from service.core.db import make_db, make_sessionmaker
    from service.core.tables import ApiKey, Batch
    from service.entry.migrate import upgrade
    from service.openai import records

    url = f"sqlite:///{tmp_path / 'j.db'}"
    upgrade(url)
    sessions = make_sessionmaker(make_db(url))
    with sessions() as session:
        session.add(ApiKey(id="key_1", name="k", key_hash="h" * 64, key_prefix="jk_",
                           webhook_secret="whsec_x"))
        session.add(Batch(id="batch_1", api_key_id="key_1", status="completed", total=0))
        session.flush()
        records.create_record(session=session, api_key_id="key_1", record_id="batch_1",
                              batch_id="batch_1", endpoint="/v1/images/generations",
                              input_file_id="file-x", completion_window="24h", metadata={})
        session.commit()
    first = sessions()
    assert records.lock_for_finalizing(session=first, record_id="batch_1") is not None

    def second() -> Any:
        with sessions() as session:
            return records.lock_for_finalizing(session=session, record_id="batch_1")

    thread, out = in_background(second)
    thread.join(1.0)
    assert thread.is_alive(), out  # it waits for the first, it does not take the record too
    records.finalized(session=first, record=records.get_record(
        session=first, api_key_id=None, record_id="batch_1")[0], output_file_id=None,
        error_file_id=None)
    first.commit()
    first.close()
    thread.join(60)
    assert "error" not in out and out["value"] is None
