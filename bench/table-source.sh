#!/usr/bin/env bash
# Table sources on PostgreSQL: `rebuild order_summary` of the orders workload read from a
# mapped table of an app's own shape and from Python eventsourcing's stored-event table, as
# ratios to the same rebuild reading Projectionist's own events table, in one sitting.
#
#   cargo build --release -p projectionist-cli
#   bash bench/table-source.sh            # EVENTS=200000 by default
#
# The eventsourcing table is written by the library itself (bench/peers/eventsourcing_store.py,
# in the peers' virtual environment, made as bench/peers/run-eventsourcing.sh makes it). Each
# rebuild runs twice, alternating, and its best time counts. Every read model is compared with
# the events table's, row by row.
set -euo pipefail

BIN=${PROJECTIONIST_BIN:-target/release/projectionist}
PG=${PROJECTIONIST_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
EVENTS=${EVENTS:-200000}
VENV=${PEER_VENV:-target/peers/venv}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

sep='?'; case "$PG" in *\?*) sep='&';; esac
sql() { psql "$PG" -XAtq -c "SET client_min_messages = warning; $1"; }
rm_schemas() { for s in tsb_own tsb_es tsb_m_own tsb_m_table tsb_m_es; do sql "DROP SCHEMA IF EXISTS $s CASCADE"; done; }

cp examples/projectionist.toml "$WORK/projectionist.toml"
export PROJECTIONIST_CONFIG="$WORK/projectionist.toml" PROJECTIONIST_LOG=warn
"$BIN" generate --events "$EVENTS" > "$WORK/orders.jsonl"
rm_schemas

echo "loading $EVENTS events: Projectionist's events table, a mapped copy, and eventsourcing's table" >&2
"$BIN" import "$WORK/orders.jsonl" --database "$PG${sep}schema=tsb_own" > /dev/null
sql "CREATE TABLE tsb_own.app_events (seq bigserial PRIMARY KEY, aggregate_id text NOT NULL,
       aggregate_version integer NOT NULL, name text NOT NULL, payload jsonb NOT NULL, created_at timestamptz NOT NULL);
     INSERT INTO tsb_own.app_events (aggregate_id, aggregate_version, name, payload, created_at)
       SELECT stream_id, stream_version, event_type, data, recorded_at FROM tsb_own.events ORDER BY position;
     ANALYZE tsb_own.app_events;"
host=$(sed -E 's|^[a-z]+://([^@/]*@)?([^:/?]+).*|\2|' <<<"$PG")
db=$(sed -E 's|^[a-z]+://[^/]*/([^?]*).*|\1|' <<<"$PG")
(cd bench/peers && PGHOST="$host" PGDATABASE="$db" "../../$VENV/bin/python" eventsourcing_store.py \
    --postgres-schema tsb_es "$WORK/orders.jsonl")

MAPPED="table+$PG${sep}table=tsb_own.app_events&position=seq&stream_id=aggregate_id&stream_version=aggregate_version&event_type=name&data=payload&recorded_at=created_at"
ES="eventsourcing+$PG${sep}application=Orders&schema=tsb_es"

# rebuild SCHEMA [SOURCE]: events/s of `rebuild order_summary` into SCHEMA.
rebuild() {
    local url="$PG${sep}schema=$1" out
    if [ -n "${2:-}" ]; then
        "$BIN" run --once --projection order_summary --database "$url" --source "$2" > /dev/null
        out=$("$BIN" rebuild order_summary --yes --database "$url" --source "$2")
    else
        "$BIN" run --once --projection order_summary --database "$url" > /dev/null
        out=$("$BIN" rebuild order_summary --yes --database "$url")
    fi
    # "rebuilt order_summary: N events in S s (R events/s), checkpoint C"
    sed -E 's/.* in ([0-9.]+) s .*/\1/' <<<"$out"
}

declare -A BEST
best() { awk -v a="${BEST[$1]:-}" -v b="$2" 'BEGIN { print (a == "" || b < a) ? b : a }'; }
for round in 1 2; do
    BEST[own]=$(best own "$(rebuild tsb_own)")
    BEST[table]=$(best table "$(rebuild tsb_m_table "$MAPPED")")
    BEST[es]=$(best es "$(rebuild tsb_m_es "$ES")")
    echo "round $round: events table ${BEST[own]} s, mapped table ${BEST[table]} s, eventsourcing table ${BEST[es]} s (best so far)" >&2
done

# The read models must be equal, row by row.
cols="order_id, customer_id, customer_name, status, item_count, round(total_amount::numeric, 6), carrier, tracking_number, version"
ref=$(sql "SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM (SELECT $cols FROM tsb_own.order_summary) t")
for s in tsb_m_table tsb_m_es; do
    got=$(sql "SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM (SELECT $cols FROM $s.order_summary) t")
    if [ "$got" != "$ref" ]; then
        echo "error: $s.order_summary differs from the events table's read model" >&2
        exit 1
    fi
done

rate() { awk -v n="$EVENTS" -v s="$1" 'BEGIN { printf "%.0f", n / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b / a }'; }
printf '%-32s %12s %10s\n' "source of rebuild order_summary" "events/s" "ratio"
printf '%-32s %12s %10s\n' "Projectionist's events table" "$(rate "${BEST[own]}")" "1.00"
printf '%-32s %12s %10s\n' "mapped table (table+postgres)" "$(rate "${BEST[table]}")" "$(ratio "${BEST[table]}" "${BEST[own]}")"
printf '%-32s %12s %10s\n' "eventsourcing table" "$(rate "${BEST[es]}")" "$(ratio "${BEST[es]}" "${BEST[own]}")"
echo "read models verified equal to the events table's (order_summary, row by row)"
rm_schemas
