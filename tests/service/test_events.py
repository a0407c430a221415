"""GET /v1/runs/{run_id}/events: replay, live rows, statuses, resume, rewinds, the cap.

Rows are written as a worker writes them (tests/service/helpers.py); the per-process poller
looks every 0.05 s here (EVENTS_POLL_SECONDS). Streams are read on a thread, event by event,
and every event is checked against openapi.yaml's schemas.
"""

from __future__ import annotations

import queue
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from service import db
from service.events import STREAM_TTL_SECONDS, hub
from service.models import EventStream, Run, utcnow
from tests.openapi_check import check_events, parse_events
from tests.service.conftest import add_tenant
from tests.service.helpers import (
    add_epoch_rows,
    create_run,
    create_xor_dataset,
    finish_run,
    problem_paths,
    set_status,
)
from worker import lease

EVENTS = "/v1/runs/{run_id}/events"
WAIT = 10.0  # seconds a test waits for an event before failing


class Reader:
    """A stream requested and read on a thread of its own (where the server's generator
    then runs from start to end, as in a server); `next` hands its events over one by one."""

    def __init__(self, client: Any, url: str, headers: dict[str, str]) -> None:
        self.blocks: queue.Queue[str | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        opened: queue.Queue[Any] = queue.Queue()
        threading.Thread(target=self._read, args=(client, url, headers, opened),
                         daemon=True).start()
        response = opened.get(timeout=WAIT)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.mimetype == "text/event-stream"

    def _read(self, client: Any, url: str, headers: dict[str, str], opened: queue.Queue) -> None:
        text = ""
        try:
            response = client.get(url, headers=headers, buffered=False)
            opened.put(response)
            for chunk in response.response:
                text += chunk.decode() if isinstance(chunk, bytes) else chunk
                while "\n\n" in text:
                    block, text = text.split("\n\n", 1)
                    self.blocks.put(block + "\n\n")
        finally:
            self.blocks.put(None)

    def block(self) -> str | None:
        """The next block (an event, a comment, `retry:`), or None once the stream closed."""
        try:
            return self.blocks.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"no event within {WAIT} s; got so far: {self.seen}")

    def next(self) -> dict[str, Any] | None:
        """The next event (comments and `retry:` skipped), or None once the stream closed."""
        while True:
            block = self.block()
            if block is None:
                return None
            parsed = parse_events(block)
            if parsed:
                check_events(EVENTS, parsed)
                self.seen += parsed
                return parsed[0]

    def take(self, n: int) -> list[dict[str, Any]]:
        found = [self.next() for _ in range(n)]
        assert None not in found, f"closed early: {self.seen}"
        return found  # type: ignore[return-value]

    def rest(self) -> list[dict[str, Any]]:
        """Every event until the server closes the stream."""
        found = []
        while (event := self.next()) is not None:
            found.append(event)
        return found


def _open(client: Any, run_id: str, query: str = "", **headers: str) -> Reader:
    return Reader(client, f"/v1/runs/{run_id}/events{query}", headers)


def _events(client: Any, run_id: str, query: str = "", **headers: str) -> list[dict[str, Any]]:
    """A stream that closes by itself (a finished run): all of it."""
    resp = client.get(f"/v1/runs/{run_id}/events{query}", headers=headers)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.headers["Cache-Control"] == "no-store"
    return parse_events(resp.get_data(as_text=True))


def _kinds(events: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(name, epoch position or status or rewind target) of each event."""
    def what(e: dict[str, Any]) -> Any:
        if e["event"] == "status":
            return e["data"]["status"]
        return (e["data"]["phase"], e["data"]["epoch"])
    return [(e["event"], what(e)) for e in events]


@pytest.fixture
def queued(any_client: Any) -> dict[str, Any]:
    return create_run(any_client, create_xor_dataset(any_client)["id"])


def test_a_finished_run_replays_everything_then_its_status_and_closes(
        any_app: Flask, any_client: Any, queued: dict[str, Any]) -> None:
    run_id = queued["id"]
    add_epoch_rows(any_app, run_id, range(1, 4), phase="pretrain", layers=(0,))
    finish_run(any_app, run_id, epochs=5)
    events = _events(any_client, run_id)
    assert _kinds(events) == [("epoch", ("pretrain", e)) for e in (1, 2, 3)] + [
        ("epoch", ("train", e)) for e in range(1, 6)] + [("status", "succeeded")]
    epochs = any_client.get(f"/v1/runs/{run_id}/epochs").get_json()["items"]
    assert [e["data"] for e in events[:-1]] == epochs  # the rows exactly as GET gives them
    assert events[-1]["data"] == any_client.get(f"/v1/runs/{run_id}").get_json()
    assert len({e["id"] for e in events}) == len(events)

    with_stats = _events(any_client, run_id, "?include=layer_stats")
    stats = any_client.get(f"/v1/runs/{run_id}/layer-stats").get_json()["items"]
    for event in with_stats[:-1]:
        row = dict(event["data"])
        assert [(s["phase"], s["epoch"]) for s in row["layer_stats"]] == [
            (row["phase"], row["epoch"])] * (1 if row["phase"] == "pretrain" else 2)
        assert row.pop("layer_stats") == [s for s in stats if (s["phase"], s["epoch"]) ==
                                          (row["phase"], row["epoch"])]
        assert row in epochs

    # max_points: evenly spaced epochs per phase of what was stored at the start
    picked = _kinds(_events(any_client, run_id, "?max_points=2"))
    assert picked == [("epoch", ("pretrain", 1)), ("epoch", ("pretrain", 3)),
                      ("epoch", ("train", 1)), ("epoch", ("train", 5)), ("status", "succeeded")]


def test_max_points_picks_among_the_rows_there_are(any_app: Flask, any_client: Any,
                                                  queued: dict[str, Any]) -> None:
    """Rows are 1..M in practice, picked from their count; when they are not, from them."""
    add_epoch_rows(any_app, queued["id"], [1, 2, 3, 9])
    finish_run(any_app, queued["id"], epochs=0)
    assert _kinds(_events(any_client, queued["id"], "?max_points=3")) == [
        ("epoch", ("train", e)) for e in (1, 3, 9)] + [("status", "succeeded")]


def test_an_epoch_without_statistics_carries_none(any_app: Flask, any_client: Any,
                                                  queued: dict[str, Any]) -> None:
    add_epoch_rows(any_app, queued["id"], [1, 2], layers=())  # statistics thinned away
    finish_run(any_app, queued["id"], epochs=0)
    events = _events(any_client, queued["id"], "?include=layer_stats")
    assert [e["data"]["layer_stats"] for e in events[:-1]] == [[], []]


def test_resuming_goes_on_right_after_the_event(any_app: Flask, any_client: Any,
                                                queued: dict[str, Any]) -> None:
    run_id = queued["id"]
    add_epoch_rows(any_app, run_id, [1, 2], phase="pretrain", layers=(0,))
    finish_run(any_app, run_id, epochs=4)
    whole = _events(any_client, run_id)
    for k, event in enumerate(whole):
        assert _events(any_client, run_id, **{"Last-Event-ID": event["id"]}) == whole[k + 1:]
        assert _events(any_client, run_id, f"?last_event_id={event['id']}") == whole[k + 1:]
    # The header wins: EventSource sends it when it reconnects to the URL it first opened.
    resumed = _events(any_client, run_id, f"?last_event_id={whole[0]['id']}",
                      **{"Last-Event-ID": whole[3]["id"]})
    assert resumed == whole[4:]


@pytest.mark.parametrize("bad", ["nonsense", "0.train.x.running", "0.train.3.dancing",
                                 "0.test.3.running", "1.train.3.running"])
def test_an_id_the_stream_did_not_send_is_422(any_client: Any, queued: dict[str, Any],
                                              bad: str) -> None:
    url = EVENTS.format(run_id=queued["id"])
    assert problem_paths(any_client.get(url, headers={"Last-Event-ID": bad})) == [
        "header.Last-Event-ID"]
    assert problem_paths(any_client.get(f"{url}?last_event_id={bad}")) == ["query.last_event_id"]


def test_a_live_run_is_followed_until_it_ends(any_app: Flask, any_client: Any,
                                              queued: dict[str, Any]) -> None:
    run_id = queued["id"]
    stream = _open(any_client, run_id)
    assert _kinds(stream.take(1)) == [("status", "queued")]
    add_epoch_rows(any_app, run_id, [1, 2, 3], running=True)
    assert _kinds(stream.take(4)) == [("status", "running")] + [
        ("epoch", ("train", e)) for e in (1, 2, 3)]
    add_epoch_rows(any_app, run_id, [4, 5], running=True)
    assert _kinds(stream.take(2)) == [("epoch", ("train", 4)), ("epoch", ("train", 5))]
    finish_run(any_app, run_id, epochs=0)  # the status only: every row is there
    assert _kinds(stream.rest()) == [("status", "succeeded")]
    # The rows it sent are the rows a stream opened now replays.
    replay = _events(any_client, run_id)
    assert [e["data"] for e in stream.seen if e["event"] == "epoch"] == [
        e["data"] for e in replay[:-1]]
    assert stream.seen[-1]["data"] == replay[-1]["data"]


def test_a_rewind_comes_before_the_rows_trained_again(any_app: Flask, any_client: Any,
                                                      queued: dict[str, Any]) -> None:
    """A worker died after epoch 5 with its checkpoint at 3: the next claim deletes 4 and 5,
    and trains them again. A client that got them is told, and gets the new ones; a client
    that had got only up to 2 is told nothing and gets 3 on."""
    run_id = queued["id"]
    stream = _open(any_client, run_id)
    add_epoch_rows(any_app, run_id, range(1, 6), running=True)
    first = stream.take(7)  # queued, running, 1..5
    assert _kinds(first)[-1] == ("epoch", ("train", 5))
    with db.session_scope(any_app) as session:
        lease.forget_after(session, run_id, "train", 3)  # what the next claim does
    add_epoch_rows(any_app, run_id, range(4, 7), running=True)
    assert _kinds(stream.take(4)) == [("rewind", ("train", 3))] + [
        ("epoch", ("train", e)) for e in (4, 5, 6)]

    def resumed(after: dict[str, Any]) -> list[tuple[str, Any]]:
        finish_run(any_app, run_id, epochs=0)  # (once: ends the streams opened here)
        return _kinds(_events(any_client, run_id, **{"Last-Event-ID": after["id"]}))

    assert resumed(first[6]) == [("rewind", ("train", 3))] + [
        ("epoch", ("train", e)) for e in (4, 5, 6)] + [("status", "succeeded")]
    assert resumed(first[3]) == [("epoch", ("train", e)) for e in range(3, 7)] + [
        ("status", "succeeded")]
    assert _kinds(stream.rest()) == [("status", "succeeded")]


def test_keepalive_comments_while_nothing_happens(any_app: Flask, any_client: Any,
                                                  queued: dict[str, Any]) -> None:
    any_app.config["EVENTS_KEEPALIVE_SECONDS"] = 0.05
    stream = _open(any_client, queued["id"])
    assert stream.block() == "retry: 2000\n\n"
    assert _kinds([stream.next()]) == [("status", "queued")]
    assert stream.block() == ": keep-alive\n\n"
    set_status(any_app, queued["id"], "cancelled")
    assert _kinds(stream.rest()) == [("status", "cancelled")]


def test_a_tenant_may_keep_so_many_streams_open(any_app: Flask, any_client: Any,
                                                queued: dict[str, Any]) -> None:
    any_app.config["TENANT_MAX_EVENT_STREAMS"] = 2
    run_id = queued["id"]
    with db.session_scope(any_app) as session:  # a dead process's streams: not counted
        tenant = session.get(Run, run_id).tenant_id
        old = utcnow() - timedelta(seconds=STREAM_TTL_SECONDS + 1)
        session.add_all(EventStream(tenant_id=tenant, seen_at=old) for _ in range(3))
    streams = [_open(any_client, run_id) for _ in range(2)]
    for stream in streams:
        assert _kinds(stream.take(1)) == [("status", "queued")]
    resp = any_client.get(EVENTS.format(run_id=run_id))
    assert resp.status_code == 429 and resp.get_json()["code"] == "too_many_streams"
    assert resp.headers["Retry-After"] == "30" and resp.get_json()["limit"] == 2

    _, key = add_tenant(any_app, "other")  # per tenant
    theirs = any_app.test_client(api_key=key)
    their_run = create_run(theirs, create_xor_dataset(theirs)["id"])
    set_status(any_app, their_run["id"], "cancelled")
    assert theirs.get(EVENTS.format(run_id=their_run["id"])).status_code == 200

    set_status(any_app, run_id, "cancelled")  # ends the streams: they count no more
    for stream in streams:
        assert _kinds(stream.rest()) == [("status", "cancelled")]
    assert any_client.get(EVENTS.format(run_id=run_id)).status_code == 200
    with db.session_scope(any_app) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(EventStream).where(
            EventStream.seen_at > old)) == 0


def test_streams_at_the_same_place_share_one_read(any_app: Flask, any_client: Any,
                                                  queued: dict[str, Any]) -> None:
    run_id = queued["id"]
    streams = [_open(any_client, run_id) for _ in range(3)]
    for stream in streams:
        stream.take(1)
    time.sleep(5 * any_app.config["EVENTS_POLL_SECONDS"])  # every joining is seen and read
    reads: list[str] = []

    def count(_conn, _cursor, statement: str, *_args: Any) -> None:  # noqa: ANN001
        if statement.lstrip().startswith("SELECT") and "FROM epochs" in statement:
            reads.append(statement)

    sa.event.listen(db.engine(any_app), "before_cursor_execute", count)
    try:
        add_epoch_rows(any_app, run_id, [1, 2], running=True)
        for stream in streams:
            assert _kinds(stream.take(3))[1:] == [("epoch", ("train", 1)), ("epoch", ("train", 2))]
    finally:
        sa.event.remove(db.engine(any_app), "before_cursor_execute", count)
    assert len(reads) == 1, reads
    set_status(any_app, run_id, "cancelled")
    for stream in streams:
        stream.rest()


def test_shutting_down_ends_every_stream(any_app: Flask, any_client: Any,
                                         queued: dict[str, Any]) -> None:
    stream = _open(any_client, queued["id"])
    stream.take(1)
    hub(any_app).stop()
    assert stream.rest() == []  # closed without a terminal status: the client resumes elsewhere
