#!/usr/bin/env python3
"""Writes the orders workload into a Python `eventsourcing` 9.5.6 application's event store,
in PostgreSQL or SQLite, optionally compressed and encrypted, and optionally projects it with
the library's own ProjectionRunner into `order_summary` (PostgreSQL).

Projectionist's interop test (cli/tests/postgres_eventsourcing.rs) and the table-source bench
use it: Projectionist then reads the application's table where it lies (an
`eventsourcing+postgres://` or `eventsourcing+sqlite://` source) and must give the same read
model.

    eventsourcing_store.py --postgres-schema S [--project ROWS.json] [--compress] [--cipher-key K] WORKLOAD
    eventsourcing_store.py --sqlite PATH [--compress] [--cipher-key K] WORKLOAD

The application is `Orders` (PostgreSQL table `orders_events`; SQLite table `stored_events`).
PostgreSQL settings come from PGHOST, PGPORT, PGUSER, PGPASSWORD and PGDATABASE.
"""

import argparse
import json
import os
import sys
from typing import Any

import psycopg
from psycopg import sql

from eventsourcing.projection import ProjectionRunner
from eventsourcing_orders import (
    OrderSummaryProjection,
    OrderSummaryView,
    Orders,
    load_events,
    read_workload,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--postgres-schema", help="the PostgreSQL schema of the application's tables (created)")
    where.add_argument("--sqlite", help="the SQLite file of the application's tables")
    p.add_argument("--compress", action="store_true", help="zlib-compress the stored states")
    p.add_argument("--cipher-key", help="AES-encrypt the stored states with this key (base64)")
    p.add_argument("--project", help="PostgreSQL: project with ProjectionRunner, write the rows to this JSON file")
    p.add_argument("input", help="workload JSON lines (- for stdin)")
    a = p.parse_args()

    events = read_workload(a.input)
    env: dict[str, str] = {"ORIGINATOR_ID_TYPE": "text"}
    if a.postgres_schema:
        kw = {
            "host": os.environ.get("PGHOST") or "127.0.0.1",
            "port": os.environ.get("PGPORT") or "5432",
            "user": os.environ.get("PGUSER") or "postgres",
            "password": os.environ.get("PGPASSWORD", ""),
            "dbname": os.environ.get("PGDATABASE") or "test",
        }
        with psycopg.connect(autocommit=True, **kw) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(a.postgres_schema)))
        env.update(
            {
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                "POSTGRES_DBNAME": kw["dbname"],
                "POSTGRES_HOST": kw["host"],
                "POSTGRES_PORT": kw["port"],
                "POSTGRES_USER": kw["user"],
                "POSTGRES_PASSWORD": kw["password"],
                "POSTGRES_SCHEMA": a.postgres_schema,
            }
        )
    else:
        env.update({"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": a.sqlite})
    if a.compress:
        env["COMPRESSOR_TOPIC"] = "eventsourcing.compressor:ZlibCompressor"
    if a.cipher_key:
        env["CIPHER_TOPIC"] = "eventsourcing.cipher:AESCipher"
        env["CIPHER_KEY"] = a.cipher_key

    last_id = load_events(env, events, 5000)
    if last_id != len(events):
        print(f"error: notification ids reach {last_id}, expected {len(events)}", file=sys.stderr)
        return 1
    print(f"{len(events)} events stored", file=sys.stderr)

    if a.project:
        if not a.postgres_schema:
            print("error: --project needs --postgres-schema", file=sys.stderr)
            return 2
        with ProjectionRunner(
            application_class=Orders,
            projection_class=OrderSummaryProjection,
            view_class=OrderSummaryView,
            env=env,
        ) as runner:
            runner.wait(last_id, timeout=600)
            rows: list[dict[str, Any]] = runner.view.rows()
        with open(a.project, "w", encoding="utf-8") as f:
            json.dump(rows, f)
        print(f"{len(rows)} orders projected by ProjectionRunner", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
