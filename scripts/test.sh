#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs and starts the stand-in Kafka and MongoDB
# services (unless KAFKA_BOOTSTRAP / MONGODB_URI name real ones), runs every test, stops them.
set -euo pipefail
cd "$(dirname "$0")/.."

# Formatting first: it fails in a second, before anything is built or installed.
cargo fmt --all -- --check || { echo "test.sh: run \`cargo fmt --all\` (house width in rustfmt.toml)" >&2; exit 1; }

scripts/services.sh install
eval "$(scripts/services.sh start)"
trap 'scripts/services.sh stop' EXIT
export KAFKA_BOOTSTRAP MONGODB_URI DIFFSTREAM_TEST_BROKER DIFFSTREAM_SECANTUS DIFFSTREAM_TANSU

cargo test --workspace --locked "$@"
