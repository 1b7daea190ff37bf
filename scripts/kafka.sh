#!/usr/bin/env bash
# A real single-node Apache Kafka (KRaft) on localhost, from Maven Central jars.
#
#   scripts/kafka.sh up     fetch the jars once, format storage once, start, wait until it answers
#   scripts/kafka.sh down   stop the broker this script started; no process is left behind
#   scripts/kafka.sh status
#   scripts/kafka.sh compose-secrets [DIR]   CA, certificates, passwords for docker-compose.secure.yml
#
# State lives under .kafka/ (git-ignored): jars/, data/, logs/, broker.pid.
# `up` is a no-op when a broker already answers at KAFKA_ADDRESS (default localhost:9092).
#
# KAFKA_SECURE=1 starts a secured broker instead, by default at localhost:19092 with its
# state under .kafka-secure/ (so it never touches the plain one). Besides PLAINTEXT on
# port P it listens with SASL_PLAINTEXT on P+2, SSL with client certificates (mutual
# TLS) on P+3 and SASL_SSL on P+4; SASL takes PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512
# (the SCRAM users are created when the storage is formatted). Made once, in secure/:
# a CA (ca.pem), the broker's certificate, a client certificate (client.pem) and its
# key (client.key, encrypted with the password in key-password), and the SASL user's
# password (sasl-password; user KAFKA_SASL_USER, default `streams`).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
secure="${KAFKA_SECURE:-0}"
if [ "$secure" = 1 ]; then
  state="${KAFKA_STATE_DIR:-$root/.kafka-secure}"
  address="${KAFKA_ADDRESS:-localhost:19092}"
else
  state="${KAFKA_STATE_DIR:-$root/.kafka}"
  address="${KAFKA_ADDRESS:-localhost:9092}"
fi
port="${address##*:}"
controller_port="${KAFKA_CONTROLLER_PORT:-$((port + 1))}"
sasl_user="${KAFKA_SASL_USER:-streams}"
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
  if [ "$secure" = 1 ]; then write_secure_config; fi
}

# A CA, the broker's certificate (localhost, kafka, 127.0.0.1), a client certificate with an
# encrypted key, and random passwords; made once, kept readable by this user only.
make_secrets() {
  local dir="${1:-$state/secure}"
  [ -f "$dir/.complete" ] && return
  echo "kafka: making a CA, certificates and passwords in $dir (once)"
  rm -rf "$dir"
  mkdir -p "$dir"
  chmod 700 "$dir"
  (
    cd "$dir"
    umask 077
    openssl rand -hex 16 >sasl-password
    openssl rand -hex 16 >key-password
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
      -subj "/CN=streams-test-ca" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    sign() { # name subject extensions [key options...]
      local name="$1" subject="$2" ext="$3"
      shift 3
      openssl req -newkey rsa:2048 "$@" -keyout "$name.key" -out "$name.csr" -subj "$subject" 2>/dev/null
      printf '%s\n' "$ext" "basicConstraints=CA:FALSE" "authorityKeyIdentifier=keyid" \
        "subjectKeyIdentifier=hash" >"$name.ext"
      openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile "$name.ext" -out "$name.pem" 2>/dev/null
    }
    sign broker /CN=localhost "subjectAltName=DNS:localhost,DNS:kafka,IP:127.0.0.1
extendedKeyUsage=serverAuth" -nodes
    sign client /CN=streams-client "extendedKeyUsage=clientAuth" -passout file:key-password
    # The broker reads its key and certificate from one PEM file (PKCS#8 key first).
    openssl pkcs8 -topk8 -nocrypt -in broker.key -out broker-keystore.pem
    cat broker.pem >>broker-keystore.pem
    rm -f ./*.csr ./*.ext ca.srl
  )
  touch "$dir/.complete"
}

write_secure_config() {
  local dir="$state/secure" p="$port" password listeners
  password="$(cat "$dir/sasl-password")"
  listeners="SASL_PLAINTEXT://localhost:$((p + 2)),SSL://localhost:$((p + 3)),SASL_SSL://localhost:$((p + 4))"
  sed -i -e "s#^listeners=PLAINTEXT://localhost:$p,#listeners=PLAINTEXT://localhost:$p,$listeners,#" \
    -e "s#^advertised.listeners=.*#&,$listeners#" \
    -e "s#^listener.security.protocol.map=.*#&,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL#" \
    "$state/server.properties"
  {
    echo "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
    for listener in sasl_plaintext sasl_ssl; do
      echo "listener.name.$listener.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$sasl_user=\"$password\";"
      for mechanism in scram-sha-256 scram-sha-512; do
        echo "listener.name.$listener.$mechanism.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
      done
    done
    echo "ssl.keystore.type=PEM"
    echo "ssl.keystore.location=$dir/broker-keystore.pem"
    echo "ssl.truststore.type=PEM"
    echo "ssl.truststore.location=$dir/ca.pem"
    echo "listener.name.ssl.ssl.client.auth=required"
  } >>"$state/server.properties"
  chmod 600 "$state/server.properties"
}

# What docker-compose.secure.yml mounts as secrets: the CA and passwords above, plus the
# broker's JAAS file (SASL PLAIN users) and a client config for its healthcheck. The
# containers run as their own users: the files are readable, the directory is not.
compose_secrets() {
  local dir="$1" password
  make_secrets "$dir"
  password="$(cat "$dir/sasl-password")"
  printf 'KafkaServer {\n  org.apache.kafka.common.security.plain.PlainLoginModule required\n  username="%s" password="%s" user_%s="%s";\n};\n' \
    "$sasl_user" "$password" "$sasl_user" "$password" >"$dir/kafka_server_jaas.conf"
  {
    echo "security.protocol=SASL_SSL"
    echo "sasl.mechanism=PLAIN"
    echo "sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"$sasl_user\" password=\"$password\";"
    echo "ssl.truststore.type=PEM"
    echo "ssl.truststore.location=/run/secrets/kafka_ca"
  } >"$dir/client.properties"
  chmod 700 "$dir"
  chmod 644 "$dir"/*
  chmod 600 "$dir"/ca.key "$dir"/broker.key "$dir"/client.key  # never mounted
  echo "kafka: secrets for docker-compose.secure.yml in $dir (user $sasl_user)"
}

# The SCRAM users exist from the start: StorageTool writes them into the metadata log.
scram_args() {
  [ "$secure" = 1 ] || return 0
  local password
  password="$(cat "$state/secure/sasl-password")"
  for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
    printf '%s\n' --add-scram "$mechanism=[name=$sasl_user,password=$password]"
  done
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
  if [ "$secure" = 1 ]; then make_secrets; fi
  write_config
  if [ ! -f "$state/data/meta.properties" ]; then
    local scram
    mapfile -t scram < <(scram_args)
    java_cmd kafka.tools.StorageTool format --ignore-formatted \
      -t "$(cat "$state/cluster-id" 2>/dev/null || java_cmd kafka.tools.StorageTool random-uuid | tee "$state/cluster-id")" \
      -c "$state/server.properties" "${scram[@]}" >"$state/logs/format.log" 2>&1
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
      if [ "$secure" = 1 ]; then
        echo "kafka: SASL_PLAINTEXT localhost:$((port + 2)), SSL (client certificate) localhost:$((port + 3)), SASL_SSL localhost:$((port + 4))"
        echo "kafka: SASL user $sasl_user, password in $state/secure/sasl-password; CA $state/secure/ca.pem"
      fi
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
  compose-secrets) compose_secrets "${2:-$root/secrets}" ;;
  *) echo "usage: $0 up|down|status|compose-secrets [DIR]" >&2; exit 2 ;;
esac
