"""Error policies with Python handlers, and dead letters carrying the Python traceback."""

import pytest

import projectionist as pj
from conftest import rows


def ledger(name, poison, **options):
    """A projection that records each applied event once, and raises on positions in `poison`
    (a set the test empties to "fix the handler")."""
    p = pj.Projection(name, **options)

    @p.setup
    def setup(tx):
        tx.execute_script(f"CREATE TABLE IF NOT EXISTS {name} (position BIGINT PRIMARY KEY, stream TEXT NOT NULL)")

    @p.reset
    def reset(tx):
        tx.execute_script(f"DELETE FROM {name}")

    @p.on("Tick")
    def tick(tx, event):
        if event.position in poison:
            raise ValueError(f"poisoned tick at {event.position}")
        # The primary key fails on a second application of the same event.
        tx.execute(f"INSERT INTO {name} (position, stream) VALUES (:p, :s)", p=event.position, s=event.stream_id)

    return p


def ticks(store, n):
    store.append_many([(f"S{i % 7}", [("Tick", {"i": i})], None) for i in range(n)])


def test_dead_letters_keep_the_traceback_and_the_rest_of_the_batch_is_applied(store):
    ticks(store, 40)
    poison = {5, 17, 18, 33}
    engine = pj.Engine(store, [ledger("dl", poison, error_policy="dead_letter", batch_size=100)])
    engine.catch_up()
    applied = [int(r[0]) for r in rows(store, "SELECT position FROM dl ORDER BY position")]
    assert applied == [p for p in range(1, 41) if p not in poison]
    letters = engine.dead_letters("dl")
    assert sorted(d["event"].position for d in letters) == sorted(poison)
    for d in letters:
        assert d["error"].startswith("Traceback (most recent call last):"), d["error"]
        assert 'in tick' in d["error"] and f"ValueError: poisoned tick at {d['event'].position}" in d["error"]
    status = engine.status()[0]
    assert (status["dead_letters"], status["errors"], status["state"]) == (4, 4, "running")

    # Fixed: each retry applies its event exactly once, and the dead letter is gone.
    poison.clear()
    for d in letters:
        engine.retry_dead_letter(d["id"])
    assert engine.dead_letters() == []
    assert [int(r[0]) for r in rows(store, "SELECT position FROM dl ORDER BY position")] == list(range(1, 41))
    with pytest.raises(pj.UnknownDeadLetterError):
        engine.retry_dead_letter(letters[0]["id"])


def test_a_retry_that_fails_again_keeps_the_dead_letter(store):
    ticks(store, 3)
    poison = {2}
    engine = pj.Engine(store, [ledger("again", poison, error_policy="dead_letter")])
    engine.catch_up()
    [d] = engine.dead_letters()
    with pytest.raises(pj.RetryFailedError):
        engine.retry_dead_letter(d["id"])
    [again] = engine.dead_letters()
    assert again["attempts"] == d["attempts"] + 1
    engine.discard_dead_letter(d["id"])
    assert engine.dead_letters() == []


def test_skip_stop_retry_and_a_callable_policy(store):
    ticks(store, 10)
    skip = pj.Engine(store, [ledger("skipped", {3}, error_policy="skip")])
    skip.catch_up()
    assert len(rows(store, "SELECT position FROM skipped")) == 9
    assert skip.status()[0]["errors"] == 1 and skip.dead_letters() == []

    stop = pj.Engine(store, [ledger("stopped", {4}, error_policy="stop")])
    stop.catch_up()
    s = stop.status()[0]
    assert s["state"] == "stopped" and s["checkpoint"] == 3 and "poisoned tick at 4" in s["last_error"]

    # retry: a transient failure heals on the second attempt.
    flaky = {6}
    attempts = []
    retry = ledger("retried", flaky, error_policy="retry", max_retries=3)
    original = retry.handlers["Tick"][0]

    def heal_after_one(tx, event):
        if event.position in flaky:
            attempts.append(event.position)
            if len(attempts) > 1:
                flaky.clear()
        return original(tx, event)

    retry.handlers["Tick"] = [heal_after_one]
    pj.Engine(store, [retry]).catch_up()
    assert len(rows(store, "SELECT position FROM retried")) == 10 and attempts == [6, 6]

    decided = []

    def policy(failure):
        decided.append((failure["projection"], failure["event"].position, failure["attempt"], "poisoned" in failure["error"]))
        return "dead_letter" if failure["event"].position == 7 else "skip"

    custom = pj.Engine(store, [ledger("custom", {7, 8}, error_policy=policy)])
    custom.catch_up()
    assert decided == [("custom", 7, 1, True), ("custom", 8, 1, True)]
    assert [d["event"].position for d in custom.dead_letters()] == [7]


def test_a_payload_that_does_not_decode_goes_through_the_policy(store):
    import dataclasses

    @dataclasses.dataclass
    class Tick:
        i: int

    store.append("S", [("Tick", {"i": 1}), ("Tick", {"j": 2}), ("Tick", {"i": 3})])
    got = []
    p = pj.Projection("typed", error_policy="dead_letter")

    @p.on(Tick)
    def tick(tx, event):
        got.append(event.data.i)

    engine = pj.Engine(store, [p])
    engine.catch_up()
    # The batch is rolled back at the failing event and the events before it are applied
    # again: what a handler does outside `tx` (this list) is at-least-once.
    assert got == [1, 1, 3]
    [d] = engine.dead_letters()
    assert d["event"].position == 2 and "cannot decode Tick event at position 2" in d["error"]
    assert "does not decode into Tick" in d["error"]
