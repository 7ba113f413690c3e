"""Inline projections: applied in the append's own transaction (seed 000's SYNC projections)."""

import pytest

import projectionist as pj
from conftest import rows


def balances(fail_on=None):
    p = pj.Projection("balances", inline=True, error_policy="stop")

    @p.setup
    def setup(tx):
        tx.execute_script("CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, amount BIGINT NOT NULL)")

    @p.on("Deposited")
    def deposited(tx, event):
        if fail_on is not None and event.data["amount"] == fail_on:
            raise RuntimeError("refused")
        row = tx.query_one("SELECT amount FROM balances WHERE account = :a", a=event.stream_id)
        amount = (row["amount"] if row else 0) + event.data["amount"]
        tx.execute(
            "INSERT INTO balances (account, amount) VALUES (:a, :n) ON CONFLICT (account) DO UPDATE SET amount = :n",
            a=event.stream_id,
            n=amount,
        )

    return p


def test_read_your_writes_right_after_append(store):
    engine = pj.Engine(store, [balances()])
    engine.catch_up()  # setup
    engine.append("acc-1", [("Deposited", {"amount": 10})])
    assert rows(store, "SELECT account, amount FROM balances") == [("acc-1", "10")]
    engine.append("acc-1", [("Deposited", {"amount": 5}), ("Deposited", {"amount": 1})], expected_version=1)
    assert rows(store, "SELECT account, amount FROM balances") == [("acc-1", "16")]
    engine.append_many([("acc-2", [("Deposited", {"amount": 2})], 0)])
    assert rows(store, "SELECT account, amount FROM balances ORDER BY account") == [("acc-1", "16"), ("acc-2", "2")]


def test_a_failing_inline_handler_fails_the_append_and_writes_nothing(store):
    engine = pj.Engine(store, [balances(fail_on=13)])
    engine.catch_up()
    engine.append("acc-1", [("Deposited", {"amount": 10})])
    head = store.head()
    with pytest.raises(pj.InlineProjectionError) as e:
        engine.append("acc-1", [("Deposited", {"amount": 1}), ("Deposited", {"amount": 13})])
    assert "RuntimeError: refused" in str(e.value)
    assert store.head() == head
    assert rows(store, "SELECT account, amount FROM balances") == [("acc-1", "10")]
