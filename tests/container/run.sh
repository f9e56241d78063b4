#!/usr/bin/env bash
# Container test: build the image from local files, run the proxy and three
# meshed broker nodes on a user-defined network, talk TLS MQTT from the
# host, stop a broker and check traffic continues, check the HEALTHCHECK,
# then `docker stop` the proxy and check it drained and exited 0.
#
# Needs a Docker engine and mosquitto-clients. Every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/../.."

run_id="mqttlbtest$$"
net="$run_id-net"
tag="mqttlb:$run_id"
work="$(mktemp -d)"
containers=()

cleanup() {
  set +e
  for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1; done
  docker network rm "$net" >/dev/null 2>&1
  docker rmi "$tag" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "container test FAILED: $*" >&2; for c in "${containers[@]}"; do echo "--- logs $c" >&2; docker logs --tail 30 "$c" >&2 2>&1; done; exit 1; }

# wait_for DESCRIPTION SECONDS COMMAND...: retry COMMAND until it succeeds.
wait_for() {
  local what=$1 secs=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || fail "timed out after ${secs}s waiting for $what"
    sleep 0.2
  done
}

echo "container: building image $tag"
./scripts/docker-build "$tag" >/dev/null

# Development certificates, readable by the image's non-root user.
./target/static/*/release/mqttlb certs --out "$work/certs" >/dev/null
chmod 0644 "$work"/certs/*

# A user-defined network with fixed addresses for the broker mesh.
subnet_octet=$(( (RANDOM % 200) + 20 ))
docker network create --subnet "172.29.$subnet_octet.0/24" "$net" >/dev/null
ip() { echo "172.29.$subnet_octet.$1"; }

for n in 1 2 3; do
  peers=()
  for m in 1 2 3; do [ "$m" = "$n" ] || peers+=(--peer "$(ip $((10 + m))):1883"); done
  c="$run_id-b$n"
  containers+=("$c")
  docker run -d --name "$c" --network "$net" --ip "$(ip $((10 + n)))" --network-alias "broker$n" \
    "$tag" broker --listen 0.0.0.0:1883 "${peers[@]}" >/dev/null
done

# The proxy finds the brokers by DNS name (Docker's embedded DNS), as it
# would a Kubernetes headless Service.
cat > "$work/mqttlb.toml" <<EOF
[admin]
listen = "0.0.0.0:9100"

[[listener]]
name = "mqtts"
listen = "0.0.0.0:8883"
pool = "brokers"
[listener.tls]
cert = "certs/server.pem"
key = "certs/server.key"
[listener.mqtt]

[pool.brokers]
strategy = "client-id"
resolve_interval = "1s"
health = { check = "mqtt", interval = "500ms", timeout = "1s", rise = 1, fall = 2 }
servers = [ { name = "b1", addr = "broker1:1883" }, { name = "b2", addr = "broker2:1883" }, { name = "b3", addr = "broker3:1883" } ]

[limits]
drain_timeout = "20s"
EOF
chmod 0644 "$work/mqttlb.toml"
proxy="$run_id-proxy"
containers+=("$proxy")
docker run -d --name "$proxy" --network "$net" \
  --health-interval 1s --health-timeout 2s --health-start-period 1s \
  -v "$work/mqttlb.toml:/etc/mqttlb/mqttlb.toml:ro" -v "$work/certs:/etc/mqttlb/certs:ro" \
  -p 127.0.0.1::8883 -p 127.0.0.1::9100 "$tag" >/dev/null

port() { docker port "$proxy" "$1/tcp" | head -n1 | sed 's/.*://'; }
mqtts=$(port 8883)
admin=$(port 9100)
echo "container: proxy on 127.0.0.1:$mqtts (admin :$admin)"

healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$proxy")" = healthy ]; }
wait_for "HEALTHCHECK healthy" 60 healthy
all_up() { [ "$(curl -fsS "http://127.0.0.1:$admin/api/v1/backends" | grep -c '"state": "up"')" = 3 ]; }
wait_for "three brokers discovered by DNS and up" 60 all_up

pubsub() { # pubsub SUB_ID PUB_ID TOPIC MESSAGE
  local out="$work/sub-$1.out"
  mosquitto_sub -h 127.0.0.1 -p "$mqtts" --cafile "$work/certs/ca.pem" -i "$1" -t "$3" -C 1 -W 20 -q 1 > "$out" &
  local sub=$!
  local got=""
  for _ in $(seq 1 100); do
    mosquitto_pub -h 127.0.0.1 -p "$mqtts" --cafile "$work/certs/ca.pem" -i "$2" -t "$3" -m "$4" -q 1 \
      || fail "mosquitto_pub through the proxy"
    if ! kill -0 "$sub" 2>/dev/null; then got=$(cat "$out"); break; fi
    sleep 0.1
  done
  wait "$sub" || true
  [ "$got" = "$4" ] || fail "expected '$4', subscriber got '$got'"
}

pubsub sub-a pub-a "t/a" "hello from the host"
echo "container: TLS pub/sub through the proxy to the mesh works"

docker stop -t 5 "$run_id-b2" >/dev/null
b2_down() { curl -fsS "http://127.0.0.1:$admin/api/v1/backends" | tr -d '\n ' | grep -q '"name":"b2/[^"]*","addr":"[^"]*","state":"down"'; }
b2_gone() { ! curl -fsS "http://127.0.0.1:$admin/api/v1/backends" | grep -q '"b2/'; }
b2_down_or_gone() { b2_down || b2_gone; }
wait_for "broker2 marked down or dropped from DNS" 30 b2_down_or_gone
for i in 1 2 3 4 5; do pubsub "sub-b$i" "pub-b$i" "t/b$i" "still flowing $i"; done
echo "container: traffic continues with broker2 stopped"

# A live client while the proxy is stopped: the drain lets it finish.
mosquitto_sub -h 127.0.0.1 -p "$mqtts" --cafile "$work/certs/ca.pem" -i live -t "t/live" -W 30 > /dev/null &
live=$!
wait_for "live client connected" 20 bash -c "curl -fsS http://127.0.0.1:$admin/metrics | grep -q 'mqttlb_connections_active{listener=\"mqtts\"} [1-9]'"
( sleep 1; kill "$live" 2>/dev/null ) &
docker stop -t 30 "$proxy" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$proxy")
[ "$code" = 0 ] || fail "proxy exited $code after docker stop"
# Into a file first: with pipefail, `grep -q` exiting at its first match
# would fail the pipeline by SIGPIPE-ing a `docker logs` still writing.
docker logs "$proxy" > "$work/proxy.log" 2>&1
grep -q "draining\|stopped" "$work/proxy.log" || fail "no drain in the proxy log"
echo "container: docker stop drained and exited 0"
echo "container test passed"
