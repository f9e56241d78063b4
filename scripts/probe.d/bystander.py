"""The bystander pair of scripts/probe: an Eclipse paho-mqtt QoS 1
subscriber and publisher (MQTT 3.1.1, persistent sessions, TLS through the
proxy with the dev CA) that run through every case; every message carries
a sequence number and its send time, so loss, duplicates, latency and
reconnects can be told per case and for the whole run."""

import threading
import time

import paho.mqtt.client as mqtt

TOPIC = "probe/bystander"


class Bystander:
    def __init__(self, port: int, ca: str, rate: float = 20.0, tag: str = ""):
        self.port = port
        self.ca = ca
        self.rate = rate
        self.lock = threading.Lock()
        self.sent: list[float] = []  # seq -> send time (monotonic)
        self.received: dict[int, int] = {}  # seq -> times received
        self.latencies: list[tuple[float, float]] = []  # (receive time, latency)
        self.connects = {"sub": 0, "pub": 0}
        self.disconnects: list[tuple[float, str, str]] = []
        self.warm = threading.Event()
        self.stop_event = threading.Event()
        self.publishing = threading.Event()
        self.tag = tag or str(int(time.time()))
        self.sub = self._client(f"probe-bystander-sub-{self.tag}", "sub")
        self.pub = self._client(f"probe-bystander-pub-{self.tag}", "pub")
        self.sub.on_message = self._on_message
        self.thread = threading.Thread(target=self._publish_loop, daemon=True, name="bystander-pub")

    def _client(self, cid: str, role: str):
        c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=cid,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        c.tls_set(ca_certs=self.ca)
        c.reconnect_delay_set(1, 2)
        c.max_queued_messages_set(0)

        def on_connect(client, _u, _flags, reason_code, _props):
            if reason_code == 0:
                with self.lock:
                    self.connects[role] += 1
                if role == "sub":
                    client.subscribe(TOPIC, qos=1)

        def on_disconnect(_c, _u, _flags, reason_code, _props):
            with self.lock:
                self.disconnects.append((time.monotonic(), role, str(reason_code)))

        c.on_connect = on_connect
        c.on_disconnect = on_disconnect
        return c

    def _on_message(self, _c, _u, msg):
        t = time.monotonic()
        try:
            kind, seq, sent_at = msg.payload.decode().split()
        except ValueError:
            return
        if kind == "warm":
            self.warm.set()
            return
        seq = int(seq)
        with self.lock:
            self.received[seq] = self.received.get(seq, 0) + 1
            self.latencies.append((t, t - float(sent_at)))

    def start(self, deadline: float = 30.0):
        """Connect both, wait until a message makes it end to end (the mesh
        between the nodes is up), then publish at `rate`."""
        self.sub.connect_async("127.0.0.1", self.port, keepalive=30)
        self.pub.connect_async("127.0.0.1", self.port, keepalive=30)
        self.sub.loop_start()
        self.pub.loop_start()
        end = time.monotonic() + deadline
        while time.monotonic() < end and not self.warm.is_set():
            if self.connects["sub"] and self.connects["pub"]:
                self.pub.publish(TOPIC, f"warm 0 {time.monotonic()}", qos=1)
            self.warm.wait(0.5)
        if not self.warm.is_set():
            raise RuntimeError("bystander: no message went end to end through the proxy")
        self.thread.start()
        self.publishing.wait(5)

    def _publish_loop(self):
        period = 1.0 / self.rate
        nxt = time.monotonic()
        self.publishing.set()
        while not self.stop_event.is_set():
            with self.lock:
                seq = len(self.sent)
                self.sent.append(time.monotonic())
            self.pub.publish(TOPIC, f"seq {seq} {time.monotonic()}", qos=1)
            nxt += period
            self.stop_event.wait(max(0.0, nxt - time.monotonic()))

    # ------------------------------------------------------------ accounting

    def mark(self):
        """A point in time for `since`."""
        with self.lock:
            return {"t": time.monotonic(), "seq": len(self.sent), "disc": len(self.disconnects)}

    def missing(self, upto: int):
        with self.lock:
            return [s for s in range(upto) if s not in self.received]

    def wait_caught_up(self, upto: int | None = None, deadline: float = 10.0):
        """Wait until every message sent before `upto` arrived; the
        missing ones at the deadline."""
        if upto is None:
            with self.lock:
                upto = len(self.sent)
        end = time.monotonic() + deadline
        while True:
            miss = self.missing(upto)
            if not miss or time.monotonic() >= end:
                return miss
            time.sleep(0.05)

    def since(self, mark):
        """Messages, disconnects and the worst latency since `mark`."""
        with self.lock:
            sent = len(self.sent) - mark["seq"]
            disc = self.disconnects[mark["disc"] :]
            lat = [l for t, l in self.latencies if t >= mark["t"]]
        return {
            "sent": sent,
            "disconnects": len(disc),
            "max_latency": max(lat) if lat else 0.0,
        }

    def stop(self, deadline: float = 20.0):
        """Stop publishing, wait for stragglers, disconnect; totals."""
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(5)
        missing = self.wait_caught_up(deadline=deadline)
        for c in (self.pub, self.sub):
            try:
                c.disconnect()
                c.loop_stop()
            except Exception:
                pass
        with self.lock:
            sent = len(self.sent)
            received = sum(1 for s in self.received if s < sent)
            dups = sum(n - 1 for n in self.received.values() if n > 1)
            lat = sorted(l for _, l in self.latencies)
        return {
            "sent": sent,
            "received": received,
            "lost": len(missing),
            "duplicated": dups,
            "reconnects": max(0, self.connects["sub"] - 1) + max(0, self.connects["pub"] - 1),
            "p50_latency": lat[len(lat) // 2] if lat else 0.0,
            "max_latency": lat[-1] if lat else 0.0,
            "missing": missing[:20],
        }

    def kill(self):
        self.stop_event.set()
        for c in (self.pub, self.sub):
            try:
                c.loop_stop()
            except Exception:
                pass
