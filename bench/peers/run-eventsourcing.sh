#!/usr/bin/env bash
# Projects the orders workload with the Python eventsourcing library 9.5.6 (the benchmark's
# peer) and prints its events/s. See README.md beside this file.
#
#   bench/peers/run-eventsourcing.sh [--events N] [--seed S] [--json] [--verbose]
#
# Environment:
#   PROJECTIONIST_BIN  the projectionist binary (default: target/release/projectionist)
#   PEER_VENV          the virtualenv to create and use (default: target/peers/venv)
#   PYTHON             the Python (3.11 or newer) that makes the virtualenv (default: python3)
#   PGHOST PGPORT PGUSER PGPASSWORD
#                      PostgreSQL (default: 127.0.0.1, 5432, postgres, empty: trust auth)
#   PGDATABASE         database to connect to first (default: test)
#   PEER_PGDATABASE    database the peer drops and re-creates for itself (default: peer_bench);
#                      where the user may not create databases, a schema of that name in
#                      PGDATABASE is dropped and re-created instead
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

events=20000
seed=1
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --events) events="${2:?--events needs a number}"; shift 2 ;;
        --events=*) events="${1#*=}"; shift ;;
        --seed) seed="${2:?--seed needs a number}"; shift 2 ;;
        --seed=*) seed="${1#*=}"; shift ;;
        --json|--verbose) extra+=("$1"); shift ;;
        --timeout) extra+=("$1" "${2:?--timeout needs seconds}"); shift 2 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run-eventsourcing.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
done
[[ "$events" =~ ^[1-9][0-9]*$ ]] || { echo "run-eventsourcing.sh: --events must be a positive integer" >&2; exit 2; }
[[ "$seed" =~ ^[0-9]+$ ]] || { echo "run-eventsourcing.sh: --seed must be a non-negative integer" >&2; exit 2; }

bin="${PROJECTIONIST_BIN:-$root/target/release/projectionist}"
if [[ ! -x "$bin" ]]; then
    echo "run-eventsourcing.sh: no projectionist binary at $bin" >&2
    echo "  build it with: cargo build --release -p projectionist-cli, or set PROJECTIONIST_BIN" >&2
    exit 2
fi

# The virtualenv, (re)installed when requirements.txt changes. pip's output goes to stderr,
# so that the result stays the last line of stdout.
venv="${PEER_VENV:-$root/target/peers/venv}"
python="${PYTHON:-python3}"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "run-eventsourcing.sh: eventsourcing 9.5.6 needs Python 3.11 or newer ($python is older; set PYTHON)" >&2
        exit 2
    }
    echo "run-eventsourcing.sh: installing the peer into $venv" >&2
    "$python" -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
    echo "$want" > "$stamp"
fi

"$bin" generate --events "$events" --seed "$seed" \
    | "$venv/bin/python" "$here/eventsourcing_orders.py" --events "$events" --seed "$seed" ${extra[@]+"${extra[@]}"} -
