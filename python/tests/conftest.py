"""Fixtures: a fresh store on each backend. PostgreSQL comes from PROJECTIONIST_TEST_POSTGRES_URL
(default: the local test database); its tests are marked `postgres`, and scripts/test deselects
them (`-m "not postgres"`) where no PostgreSQL answers, outside CI. Inside a run a missing
database is a failure, never a skip."""

import hashlib
import os
import re
import sys

import pytest

import projectionist as pj

PG_URL = os.environ.get("PROJECTIONIST_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_configure(config):
    config.addinivalue_line("markers", "postgres: needs PostgreSQL")


def pg_url(name: str) -> str:
    """A URL on a fresh schema of its own for `name`."""
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    schema = "py_" + re.sub(r"[^a-z0-9_]", "_", name.lower())[-30:].strip("_") + "_" + digest
    url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}schema={schema}"
    pj.Store.open(url).query(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    """A fresh store's URL, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/events.db"
    return pg_url(request.node.name)


@pytest.fixture
def store(url):
    return pj.Store.open(url)


def child(script: str, *args: str):
    """The command line of a test child process."""
    return [sys.executable, os.path.join(HERE, script), *args]


def rows(store, sql):
    """A query's rows, as tuples of text."""
    return [tuple(r) for r in store.query(sql)[1]]
