#!/usr/bin/env bash
# One command from a fresh machine to a working stack: two bridged Mosquitto
# nodes behind mqttlb on 127.0.0.1:8883 (TLS, client-id routing, MQTT health
# checks). Prints copy-paste client commands; Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-mqttlb-demo}"

./scripts/ensure-packages mosquitto=mosquitto mosquitto_pub=mosquitto-clients
export PATH="$PATH:/usr/sbin"

cargo build --release --locked --quiet
bin="$PWD/target/release/mqttlb"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
[ -f "$dir/certs/server.pem" ] || "$bin" certs --out "$dir/certs" >/dev/null

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; echo "stopped"; }
trap cleanup EXIT INT TERM

for n in 1 2; do
  port=$((18830 + n))
  mkdir -p "$dir/node$n"
  {
    echo "listener $port 127.0.0.1"
    echo "allow_anonymous true"
    echo "persistence false"
    echo "log_dest file $dir/node$n/mosquitto.log"
    echo "connection_messages true"
    if [ "$(id -u)" = 0 ]; then echo "user root"; fi
    if [ "$n" = 2 ]; then
      # Bridge node2 to node1 so clients on either node talk to each other.
      echo "connection node2-to-node1"
      echo "address 127.0.0.1:18831"
      echo "topic # both 0"
    fi
  } > "$dir/node$n/mosquitto.conf"
  mosquitto -c "$dir/node$n/mosquitto.conf" & pids+=($!)
done

cat > "$dir/mqttlb.toml" <<TOML
[[listener]]
name = "mqtts"
listen = "127.0.0.1:8883"
pool = "brokers"
[listener.tls]
cert = "certs/server.pem"
key = "certs/server.key"
[listener.mqtt]

[pool.brokers]
strategy = "client-id"
health = { check = "mqtt", interval = "1s", timeout = "500ms", rise = 2, fall = 2 }
servers = [ { name = "node1", addr = "127.0.0.1:18831" }, { name = "node2", addr = "127.0.0.1:18832" } ]
TOML
"$bin" proxy --config "$dir/mqttlb.toml" & pids+=($!)

cat <<TXT

mqttlb is listening on 127.0.0.1:8883 (TLS) in front of Mosquitto nodes on :18831 and :18832.
In another terminal:

  mosquitto_sub -h 127.0.0.1 -p 8883 --cafile $dir/certs/ca.pem -i sub-1 -t 'demo/#' -v
  mosquitto_pub -h 127.0.0.1 -p 8883 --cafile $dir/certs/ca.pem -i pub-1 -t demo/hello -m 'hello through mqttlb'

Each client id always lands on the same node (see $dir/node*/mosquitto.log).
Ctrl-C stops everything.
TXT
wait
