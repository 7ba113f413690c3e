#!/usr/bin/env bash
# Scale-out on PostgreSQL: the throughput of the orders workload's `order_summary` projection
# with 8 partitions, run by 1, 2 and 3 `projectionist run` processes, and the takeover time
# after a SIGKILL with the default 10 s bound.
#
#   cargo build --release -p projectionist-cli
#   bash bench/scale-out.sh            # EVENTS=200000 by default
#
# SCHEMA_PREFIX (default scaleout) names the schemas it creates and drops: <prefix>_0 … _3.
#
# For each process count, the events are imported first and the projection is paused; the
# processes start and share the partitions (leases); then the projection is resumed and the
# clock runs until every partition's checkpoint is at the head. Throughputs are reported as
# ratios to one process in the same run (absolute times on a shared machine are noise).
set -euo pipefail

BIN=${PROJECTIONIST_BIN:-target/release/projectionist}
PG=${PROJECTIONIST_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
EVENTS=${EVENTS:-200000}
PARTITIONS=${PARTITIONS:-8}
SCHEMA_PREFIX=${SCHEMA_PREFIX:-scaleout}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

sep='?'; case "$PG" in *\?*) sep='&';; esac
sql() { psql "$PG" -XAtq -c "SET client_min_messages = warning; $1"; }
now() { date +%s.%N; }

# The example projections, with order_summary split into partitions (and, as a baseline,
# not split).
awk -v n="$PARTITIONS" '{ print } /^name = "order_summary"/ { print "partitions = " n }' \
    examples/projectionist.toml > "$WORK/projectionist.toml"
cp examples/projectionist.toml "$WORK/unpartitioned.toml"
"$BIN" generate --events "$EVENTS" > "$WORK/orders.jsonl"

declare -A RATE
for procs in 0 1 2 3; do
    schema="${SCHEMA_PREFIX}_$procs"
    url="$PG${sep}schema=$schema"
    sql "DROP SCHEMA IF EXISTS $schema CASCADE"
    config="$WORK/projectionist.toml"
    [ "$procs" = 0 ] && config="$WORK/unpartitioned.toml"
    export PROJECTIONIST_DATABASE_URL="$url" PROJECTIONIST_CONFIG="$config"
    "$BIN" import "$WORK/orders.jsonl" > /dev/null
    "$BIN" pause order_summary > /dev/null
    PIDS=()
    for _ in $(seq "$(( procs > 0 ? procs : 1 ))"); do
        PROJECTIONIST_LOG=warn "$BIN" run --projection order_summary > /dev/null 2>>"$WORK/run.log" &
        PIDS+=("$!")
    done
    # Wait until the processes share the partitions.
    shared() {
        [ "$(sql "SELECT count(DISTINCT owner) FROM $schema.projection_leases
                  WHERE projection = 'order_summary' AND expires_at > now()")" = "$procs" ] &&
        [ "$(sql "SELECT count(*) FROM $schema.projection_leases
                  WHERE projection = 'order_summary' AND expires_at > now()")" = "$PARTITIONS" ]
    }
    until [ "$procs" = 0 ] || shared; do
        sleep 0.1
    done
    start=$(now)
    "$BIN" resume order_summary > /dev/null
    head=$(sql "SELECT xid || ',' || position FROM $schema.events ORDER BY xid DESC, position DESC LIMIT 1")
    until [ "$(sql "SELECT count(*) FROM $schema.projection_checkpoints WHERE projection = 'order_summary'
                    AND partition < $PARTITIONS AND (txid, position) < ($head)")" = "0" ]; do
        sleep 0.05
    done
    end=$(now)
    RATE[$procs]=$(echo "$EVENTS / ($end - $start)" | bc -l)
    if [ "$procs" = 0 ]; then
        label="not partitioned, 1 process"
    else
        label="$PARTITIONS partitions, $procs process(es)"
    fi
    printf '%s: %.0f events/s over %.2f s\n' "$label" "${RATE[$procs]}" "$(echo "$end - $start" | bc -l)"
    if [ "$procs" = 3 ]; then
        # Takeover: kill one process with SIGKILL and time until its partitions have a new owner.
        victim=${PIDS[0]}
        held=$(sql "SELECT string_agg(partition::text, ',') FROM $schema.projection_leases
                    WHERE projection = 'order_summary' AND owner LIKE '%-$victim-%'")
        killed=$(now)
        kill -9 "$victim"
        until [ "$(sql "SELECT count(*) FROM $schema.projection_leases WHERE projection = 'order_summary'
                        AND partition IN ($held) AND expires_at > now() AND owner NOT LIKE '%-$victim-%'")" \
                = "$(echo "$held" | tr ',' '\n' | wc -l)" ]; do
            sleep 0.05
        done
        taken=$(now)
        printf 'takeover of partitions %s after SIGKILL: %.2f s (bound 10 s)\n' "$held" "$(echo "$taken - $killed" | bc -l)"
    fi
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    sql "DROP SCHEMA IF EXISTS $schema CASCADE"
done
printf 'ratio to 1 process on %d partitions: 2 processes %.2fx, 3 processes %.2fx\n' "$PARTITIONS" \
    "$(echo "${RATE[2]} / ${RATE[1]}" | bc -l)" "$(echo "${RATE[3]} / ${RATE[1]}" | bc -l)"
printf 'ratio to the unpartitioned projection in 1 process: 1 process %.2fx, 2 processes %.2fx, 3 processes %.2fx\n' \
    "$(echo "${RATE[1]} / ${RATE[0]}" | bc -l)" "$(echo "${RATE[2]} / ${RATE[0]}" | bc -l)" "$(echo "${RATE[3]} / ${RATE[0]}" | bc -l)"
