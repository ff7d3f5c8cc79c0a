#!/usr/bin/env bash
# scripts/bench-restart.sh N [N …] — restart time vs history (issue 8), against the broker in
# $KAFKA_BOOTSTRAP (default 127.0.0.1:19092; `eval "$(scripts/services.sh start)"` starts one).
# Needs `cargo build --release` first. Restart time vs history: N clicks in a topic, a run that reads them all (checkpoints every 2 s),
# then two restarts of the same config with nothing new: from the checkpoint, and with
# restart = "replay". Each restart stops 3 s after it goes idle; the figure is its wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${KAFKA_BOOTSTRAP:-127.0.0.1:19092}; D=$PWD/target/release/diffstream; WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for N in "$@"; do
  T=rt-$N-$RANDOM; S=$WORK/$T; mkdir -p $S
  t0=$(date +%s.%N); $D gen clicks --count $N --to kafka --topic $T --bootstrap $B --create-partitions 3 >/dev/null 2>$S/gen.log
  echo "N=$N produced in $(echo "$(date +%s.%N) - $t0" | bc) s"
  for mode in checkpoint replay; do
    cat > $S/$mode.toml <<TOML
dataflows = ["user_event_counts"]
[runtime]
state_dir = "$S/state"
checkpoint_interval = "2s"
restart = "$mode"
[kafka]
bootstrap_servers = "$B"
[inputs.clicks]
kind = "kafka"
topics = ["$T"]
group_id = "g-$T"
stop_when_idle = "3s"
[output.kafka]
topic_prefix = "$T.out."
TOML
  done
  t0=$(date +%s.%N); $D run --config $S/checkpoint.toml -w 2 -q; echo "  first run (reads all $N): $(echo "$(date +%s.%N) - $t0" | bc) s"
  for mode in checkpoint replay; do
    t0=$(date +%s.%N); /usr/bin/time -f "%M" -o $S/$mode.rss $D run --config $S/$mode.toml -w 2 -q
    echo "  restart ($mode): $(echo "$(date +%s.%N) - $t0 - 3" | bc) s beyond the 3 s idle stop, peak RSS $(( $(cat $S/$mode.rss) / 1024 )) MiB"
  done
  du -sh $S/state/checkpoints | sed 's/^/  checkpoints on disk: /'
done
