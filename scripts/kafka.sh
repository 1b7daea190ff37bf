#!/usr/bin/env bash
# A real single-node Apache Kafka (KRaft) on localhost, from Maven Central jars.
#
#   scripts/kafka.sh up     fetch the jars once, format storage once, start, wait until it answers
#   scripts/kafka.sh down   stop the broker this script started; no process is left behind
#   scripts/kafka.sh status
#   scripts/kafka.sh jars   fetch the jars only (tests run the Java client from them)
#
# State lives under .kafka/ (git-ignored): jars/, data/, logs/, broker.pid.
# `up` is a no-op when a broker already answers at KAFKA_ADDRESS (default localhost:9092).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
state="${KAFKA_STATE_DIR:-$root/.kafka}"
address="${KAFKA_ADDRESS:-localhost:9092}"
port="${address##*:}"
controller_port="${KAFKA_CONTROLLER_PORT:-$((port + 1))}"
pidfile="$state/broker.pid"
python="${PYTHON:-python3}"

ping() { "$python" "$root/streams/kafka_ping.py" "$address"; }

fetch_jars() {
  if [ -f "$state/jars/.complete" ] && cmp -s "$root/kafka/pom.xml" "$state/jars/.complete"; then
    return
  fi
  echo "kafka: resolving the broker jars from Maven Central (once)"
  rm -rf "$state/jars"
  mkdir -p "$state/jars"
  mvn -q -B -f "$root/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$state/jars" -DincludeScope=runtime
  cp "$root/kafka/pom.xml" "$state/jars/.complete"
}

write_config() {
  mkdir -p "$state/data" "$state/logs"
  sed -e "s#@DATA@#$state/data#" -e "s#@PORT@#$port#" -e "s#@CONTROLLER_PORT@#$controller_port#" \
    "$root/kafka/server.properties" > "$state/server.properties"
  sed -e "s#@LOGS@#$state/logs#" "$root/kafka/log4j.properties" > "$state/log4j.properties"
}

java_args() {
  printf '%s\n' -Xms256m -Xmx"${KAFKA_HEAP:-1g}" -XX:+UseG1GC \
    -Dlog4j.configuration="file:$state/log4j.properties" \
    -Dkafka.logs.dir="$state/logs" \
    -cp "$state/jars/*"
}

java_cmd() {
  local args
  mapfile -t args < <(java_args)
  java "${args[@]}" "$@"
}

up() {
  if ping; then
    echo "kafka: a broker already answers at $address; nothing to do"
    return
  fi
  fetch_jars
  write_config
  if [ ! -f "$state/data/meta.properties" ]; then
    java_cmd kafka.tools.StorageTool format --ignore-formatted \
      -t "$(cat "$state/cluster-id" 2>/dev/null || java_cmd kafka.tools.StorageTool random-uuid | tee "$state/cluster-id")" \
      -c "$state/server.properties" >"$state/logs/format.log" 2>&1
  fi
  echo "kafka: starting $(basename "$(ls "$state"/jars/kafka_2.13-*.jar)" .jar) at $address"
  local args
  mapfile -t args < <(java_args)
  setsid nohup java "${args[@]}" kafka.Kafka "$state/server.properties" \
    >"$state/logs/stdout.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 1 240); do
    if ping; then
      echo "kafka: up (pid $(cat "$pidfile"))"
      return
    fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "kafka: the broker exited; last lines of $state/logs:" >&2
      tail -n 40 "$state/logs/stdout.log" "$state/logs/server.log" >&2 || true
      rm -f "$pidfile"
      exit 1
    fi
    sleep 0.5
  done
  echo "kafka: no answer at $address after 120 s; see $state/logs/server.log" >&2
  exit 1
}

down() {
  if [ ! -f "$pidfile" ]; then
    echo "kafka: no broker started by this script"
    return
  fi
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "kafka: no clean stop after 30 s; killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
  echo "kafka: stopped"
}

status() {
  if ping; then echo "kafka: answers at $address"; else echo "kafka: no broker at $address"; return 1; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  jars) fetch_jars ;;
  *) echo "usage: $0 up|down|status|jars" >&2; exit 2 ;;
esac
