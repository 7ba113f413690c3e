"""Guarantees across processes: exactly-once across SIGKILL, wait-for between an appender and a
runner, and a clean stop on SIGTERM."""

import json
import os
import random
import signal
import subprocess
import time

import projectionist as pj
from conftest import child, rows
from strict import counters

EVENTS = 50_000
STREAMS = 500


def import_ticks(store, n, streams):
    def appends():
        for i in range(n):
            yield (f"S{i % streams}", [("Tick", {"i": i})], None)

    assert store.import_(appends()) == n


def checkpoint(store):
    return pj.Engine(store, [counters()]).status()[0]["checkpoint"]


def test_exactly_once_across_sigkills(url):
    store = pj.Store.open(url)
    import_ticks(store, EVENTS, STREAMS)
    rng = random.Random(os.environ.get("PROJECTIONIST_TEST_SEED", "13"))
    progress = []
    # The killed children sleep 50 µs per event (outside `tx`), so that each kill lands mid-run.
    slow = dict(os.environ, CHILD_HANDLER_DELAY="0.00005")
    for _ in range(5):
        proc = subprocess.Popen(child("child.py", "catch_up", url), stdout=subprocess.PIPE, text=True, env=slow)
        assert proc.stdout.readline().strip() == "started"
        time.sleep(rng.uniform(0.1, 0.8))
        assert proc.poll() is None, "the child finished before it was killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        progress.append(checkpoint(store))
    # Each kill landed mid-run, after some progress.
    assert all(a <= b for a, b in zip(progress, progress[1:])) and 0 < progress[0] and progress[-1] < EVENTS, progress
    final = subprocess.run(child("child.py", "catch_up", url), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr

    engine = pj.Engine(store, [counters()])
    [status] = engine.status()
    assert (status["state"], status["errors"], status["dead_letters"], status["checkpoint"]) == ("running", 0, 0, EVENTS)
    assert rows(store, "SELECT count(*), min(position), max(position) FROM applied") == [(str(EVENTS), "1", str(EVENTS))]
    per_stream = EVENTS // STREAMS
    assert rows(store, f"SELECT count(*) FROM counters WHERE version = {per_stream}") == [(str(STREAMS),)]
    before = rows(store, "SELECT stream, version, total FROM counters ORDER BY stream")
    engine.rebuild("counters")
    assert rows(store, "SELECT stream, version, total FROM counters ORDER BY stream") == before


def test_wait_for_across_processes_an_appender_and_a_runner(url):
    store = pj.Store.open(url)
    runner = subprocess.Popen(child("child.py", "run", url), stdout=subprocess.PIPE, text=True)
    try:
        assert runner.stdout.readline().strip() == "started"
        appender = subprocess.run(child("child.py", "append", url, "30"), capture_output=True, text=True, timeout=120)
        assert appender.returncode == 0, appender.stderr
        tokens = appender.stdout.split()
        assert len(tokens) == 30
        engine = pj.Engine(store, [counters()])
        # Each token, waited for in this third process, is applied by the runner.
        for k, token in enumerate(tokens):
            engine.wait_for("counters", token, timeout=20)
            applied = int(rows(store, f"SELECT count(*) FROM applied WHERE position <= {k + 1}")[0][0])
            assert applied == k + 1
        # Nothing appends any more: a later position times out, with a distinct exception.
        try:
            txid, _, position = tokens[-1].rpartition(":")
            later = f"{txid}:{int(position) + 1}" if txid else str(int(position) + 1)
            engine.wait_for("counters", later, timeout=0.3)
            raise AssertionError("wait_for did not time out")
        except pj.WaitTimeoutError as e:
            assert e.projection == "counters"
    finally:
        runner.send_signal(signal.SIGTERM)
        out, _ = runner.communicate(timeout=30)
    # SIGTERM stops `run()` cleanly: it returns its reports and the process exits 0.
    assert runner.returncode == 0
    reports = json.loads(out.strip().splitlines()[-1])
    assert reports[0]["projection"] == "counters" and reports[0]["position"] == 30
