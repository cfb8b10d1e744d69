#!/usr/bin/env bash
# Runs every test of Throughline, after installing what some of them need:
#   - tansu, a Kafka-protocol broker (tests/kafka.rs): `cargo install`, about 10 minutes on
#     2 cores the first time, into ~/.cargo/bin (outside the clone; skipped when there);
#   - kafka-python and Segment's Python SDK (tests/kafka.rs, tests/server.rs), in .venv;
#   - RudderStack's and Segment's Node SDKs (tests/server.rs), in tests/sdk/node_modules;
#   - Debian's Chromium (tests/console.rs) and PostgreSQL (tests/postgres.rs), with apt-get
#     when they are missing.
# Then `cargo test`, with the tests that need these included (a plain `cargo test` lists them
# as ignored, each with its reason). Arguments go to cargo test: tests/run.sh --test kafka
#
# Left out: the agreement test at scale (tests/scale.rs, minutes of work; its module docs
# say how to run it) and, unless this runs as root, the full-disk test (it mounts a tmpfs).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'tests/run.sh: %s\n' "$*" >&2; }

python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check segment-analytics-python \
    kafka-python==2.2.15
export THROUGHLINE_SDK_PYTHON="$PWD/.venv/bin/python"

TANSU="$(command -v tansu || echo "$HOME/.cargo/bin/tansu")"
if [ ! -x "$TANSU" ]; then
    say "building tansu 0.6.0 (once per machine, about 10 minutes)"
    cargo install tansu --version 0.6.0 --locked --features dynostore
fi
export THROUGHLINE_TANSU="$TANSU"

# pinned, and no lock file is written
(cd tests/sdk && npm install --no-audit --no-fund --no-save --no-package-lock --loglevel=error \
    @rudderstack/rudder-sdk-node@3.0.13 @segment/analytics-node@2.3.0)
export THROUGHLINE_SDK_NODE="$(command -v node)"

if ! command -v chromium >/dev/null; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium >/dev/null
fi
export THROUGHLINE_CHROMIUM="$(command -v chromium)"

# PostgreSQL's server programs (tests/postgres.rs makes a cluster of its own with them)
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
if [ -z "$(pg_bin)" ] || [ ! -x "$(pg_bin)/initdb" ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q postgresql >/dev/null
fi
export THROUGHLINE_PG_BIN="$(pg_bin)"

# cargo's arguments, then the test binaries' (after a `--` of the caller's, if any)
cargo_args=()
test_args=()
seen_dashes=""
for arg in "$@"; do
    if [ -z "$seen_dashes" ] && [ "$arg" = "--" ]; then
        seen_dashes=1
    elif [ -n "$seen_dashes" ]; then
        test_args+=("$arg")
    else
        cargo_args+=("$arg")
    fi
done
skips=(--skip large_adversarial_workload_agrees_with_the_oracle)
if [ "$(id -u)" -ne 0 ]; then
    say "not root: the full-disk test (it mounts a tmpfs) is left out"
    skips+=(--skip a_full_disk_loses_no_acknowledged_event)
fi
exec cargo test --locked "${cargo_args[@]}" -- --include-ignored "${skips[@]}" "${test_args[@]}"
