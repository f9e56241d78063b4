#!/usr/bin/env python3
"""Interoperability scenarios for an MQTT broker, driven by Eclipse paho-mqtt.

Modelled on the scenario list of the Eclipse Paho interoperability tests
(basic, retained, offline queueing, will, zero-length client id, overlapping
subscriptions, keep-alive, subscribe failure, $-topics, unsubscribe), plus
MQTT 5 scenarios (properties, request/response, shared subscriptions,
subscription identifiers, no-local, assigned client id).

usage: paho_interop.py HOST PORT [PREFIX]
The broker must refuse subscriptions to "test/nosubscribe" (deny-list).
Every wait has a deadline; nothing sleeps to synchronise. Exit status 0
when every scenario passes; one line per scenario on stdout.
"""

import queue
import socket
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST, PORT = sys.argv[1], int(sys.argv[2])
PREFIX = sys.argv[3] if len(sys.argv) > 3 else "interop"
DEADLINE = 15.0


class Client:
    """A paho client whose callbacks feed queues."""

    def __init__(self, client_id, version=mqtt.MQTTv311, clean=True, will=None,
                 keepalive=30, connect_props=None):
        self.version = version
        kwargs = dict(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                      client_id=client_id, protocol=version)
        if version != mqtt.MQTTv5:
            kwargs["clean_session"] = clean
        self.c = mqtt.Client(**kwargs)
        self.messages = queue.Queue()
        self.acks = queue.Queue()
        self.connacks = queue.Queue()
        self.disconnects = queue.Queue()
        self.c.on_connect = lambda c, u, flags, rc, props: self.connacks.put((flags, rc, props))
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda c, u, mid, rcs, props: self.acks.put(("sub", mid, rcs))
        self.c.on_unsubscribe = lambda c, u, mid, rcs, props: self.acks.put(("unsub", mid, rcs))
        self.c.on_publish = lambda c, u, mid, rc, props: self.acks.put(("pub", mid, rc))
        self.c.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        if will:
            self.c.will_set(*will)
        args = dict(keepalive=keepalive)
        if version == mqtt.MQTTv5:
            args["clean_start"] = clean
            if connect_props is not None:
                args["properties"] = connect_props
        self.connect_args = args

    def connect(self):
        self.c.connect(HOST, PORT, **self.connect_args)
        self.c.loop_start()
        flags, rc, props = self.connacks.get(timeout=DEADLINE)
        return flags, rc, props

    def wait_ack(self, kind, mid):
        end = time.monotonic() + DEADLINE
        while True:
            k, m, rc = self.acks.get(timeout=max(0.01, end - time.monotonic()))
            if k == kind and m == mid:
                return rc

    def subscribe(self, topic, qos=2, **kw):
        _, mid = self.c.subscribe(topic, qos, **kw)
        return self.wait_ack("sub", mid)

    def unsubscribe(self, topics):
        _, mid = self.c.unsubscribe(topics)
        return self.wait_ack("unsub", mid)

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos, retain, properties=properties)
        info.wait_for_publish(timeout=DEADLINE)
        if not info.is_published():
            raise AssertionError(f"publish to {topic} not acknowledged")

    def message(self, timeout=DEADLINE):
        return self.messages.get(timeout=timeout)

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()

    def kill(self):
        """Drop the connection without DISCONNECT."""
        self.c.loop_stop()
        sock = self.c.socket()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def t(name):
    return f"{PREFIX}/{name}"


def drain_until_marker(client, marker_topic):
    """Messages received before the marker (the marker proves order)."""
    got = []
    while True:
        m = client.message()
        if m.topic == marker_topic:
            return got
        got.append(m)


def basic():
    c = Client(t("basic"))
    c.connect()
    c.subscribe(t("basic/#"), 2)
    for qos in (0, 1, 2):
        c.publish(t(f"basic/{qos}"), f"qos {qos}", qos)
    got = sorted((m.topic, m.payload, m.qos) for m in (c.message() for _ in range(3)))
    want = [(t(f"basic/{q}"), f"qos {q}".encode(), q) for q in (0, 1, 2)]
    assert got == want, got
    c.stop()


def retained():
    p = Client(t("ret-pub"))
    p.connect()
    topics = [t(f"ret/{q}") for q in (0, 1, 2)]
    for q, topic in enumerate(topics):
        p.publish(topic, f"retained {q}", q, retain=True)
    s = Client(t("ret-sub"))
    s.connect()
    s.subscribe(t("ret/#"), 2)
    got = sorted((m.topic, m.retain) for m in (s.message() for _ in range(3)))
    assert got == [(topic, True) for topic in topics], got
    s.stop()
    for topic in topics:
        p.publish(topic, b"", 1, retain=True)
    s = Client(t("ret-sub2"))
    s.connect()
    s.subscribe(t("ret/#"), 2)
    p.publish(t("ret/marker"), "m", 1)
    assert drain_until_marker(s, t("ret/marker")) == [], "retained messages were cleared"
    s.stop()
    p.stop()


def offline_queueing():
    a = Client(t("offline-a"), clean=False)
    a.connect()
    a.subscribe(t("offline/#"), 2)
    a.stop()
    b = Client(t("offline-b"))
    b.connect()
    for qos in (0, 1, 2):
        b.publish(t(f"offline/{qos}"), f"queued {qos}", qos)
    b.stop()
    a = Client(t("offline-a"), clean=False)
    flags, rc, _ = a.connect()
    assert flags.session_present, "session present"
    got = sorted(m.qos for m in (a.message() for _ in range(2)))
    assert got == [1, 2], f"QoS 1 and 2 queued while offline: {got}"
    a.stop()
    # Clean up the persistent session.
    Client(t("offline-a"), clean=True).connect()


def will_message():
    w = Client(t("will-watch"))
    w.connect()
    w.subscribe(t("will/#"), 2)
    c = Client(t("will-client"), will=(t("will/client"), "gone", 1, False))
    c.connect()
    c.kill()
    m = w.message()
    assert (m.topic, m.payload) == (t("will/client"), b"gone"), m.topic
    w.stop()


def zero_length_client_id():
    c = Client("", clean=True)
    _, rc, _ = c.connect()
    assert rc == 0, rc
    c.stop()
    # paho refuses to send this CONNECT itself: write it by hand.
    connect = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 0x00, 0, 60, 0, 0])
    with socket.create_connection((HOST, PORT), timeout=DEADLINE) as s:
        s.sendall(connect)
        connack = s.recv(4)
    assert connack == bytes([0x20, 2, 0, 2]), f"identifier rejected, got {connack!r}"


def overlapping_subscriptions():
    c = Client(t("overlap"))
    c.connect()
    c.subscribe(t("overlap/#"), 2)
    c.subscribe(t("overlap/+"), 1)
    c.publish(t("overlap/x"), "once", 2)
    c.publish(t("overlap/marker"), "m", 1)
    got = drain_until_marker(c, t("overlap/marker"))
    assert [(m.topic, m.qos) for m in got] == [(t("overlap/x"), 2)], [(m.topic, m.qos) for m in got]
    c.stop()


def keepalive():
    w = Client(t("ka-watch"))
    w.connect()
    w.subscribe(t("ka/#"), 2)
    c = Client(t("ka-client"), will=(t("ka/client"), "timed out", 1, False), keepalive=2)
    c.connect()
    started = time.monotonic()
    c.c.loop_stop()  # no more PINGREQ: the broker must give up after 1.5 x 2 s
    m = w.message()
    assert m.topic == t("ka/client"), m.topic
    assert time.monotonic() - started >= 2.5, "not before 1.5 x keep-alive"
    w.stop()


def subscribe_failure():
    c = Client(t("nosub"))
    c.connect()
    rcs = c.subscribe("test/nosubscribe", 2)
    assert [int(rc.value) for rc in rcs] == [0x80], rcs
    c.stop()


def dollar_topics():
    c = Client(t("dollar"))
    c.connect()
    c.subscribe("#", 1)
    c.publish("$internal/x", "hidden", 1)
    c.publish(t("dollar/marker"), "m", 1)
    got = drain_until_marker(c, t("dollar/marker"))
    assert all(not m.topic.startswith("$") for m in got), [m.topic for m in got]
    c.stop()


def unsubscribe():
    c = Client(t("unsub"))
    c.connect()
    for name in ("a", "b", "c"):
        c.subscribe(t(f"unsub/{name}"), 1)
    c.unsubscribe([t("unsub/a"), t("unsub/b")])
    for name in ("a", "b", "c"):
        c.publish(t(f"unsub/{name}"), name, 1)
    m = c.message()
    assert m.topic == t("unsub/c"), m.topic
    c.publish(t("unsub/c"), "marker", 1)
    assert c.message().payload == b"marker", "nothing from the unsubscribed topics"
    c.stop()


# ---------------------------------------------------------------- MQTT 5

def v5(client_id, **kw):
    return Client(client_id, version=mqtt.MQTTv5, **kw)


def properties_and_request_response():
    responder = v5(t("responder"))
    responder.connect()
    responder.subscribe(t("req"), 1)

    def serve():
        m = responder.message()
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = m.properties.CorrelationData
        props.UserProperty = [("served-by", "responder")]
        responder.publish(m.properties.ResponseTopic, b"pong:" + m.payload, 1, properties=props)

    th = threading.Thread(target=serve)
    th.start()
    asker = v5(t("asker"))
    asker.connect()
    asker.subscribe(t("resp/asker"), 1)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = t("resp/asker")
    props.CorrelationData = b"\x00\x01corr"
    props.ContentType = "text/plain"
    props.PayloadFormatIndicator = 1
    props.UserProperty = [("a", "1"), ("a", "2")]
    asker.publish(t("req"), "ping", 1, properties=props)
    m = asker.message()
    th.join(DEADLINE)
    assert m.payload == b"pong:ping", m.payload
    assert m.properties.CorrelationData == b"\x00\x01corr"
    assert ("served-by", "responder") in m.properties.UserProperty, m.properties.UserProperty
    asker.stop()
    responder.stop()


def shared_subscription():
    members = []
    for i in (1, 2):
        c = v5(t(f"worker{i}"))
        c.connect()
        c.subscribe(f"$share/g/{t('jobs')}/#", 1)
        members.append(c)
    p = v5(t("jobs-pub"))
    p.connect()
    for i in range(10):
        p.publish(t("jobs/x"), str(i), 1)
    counts = []
    got = []
    for c in members:
        n = 0
        try:
            while True:
                got.append(int(c.message(timeout=2.0).payload))
                n += 1
                if len(got) == 10:
                    break
        except queue.Empty:
            pass
        counts.append(n)
    assert sorted(got) == list(range(10)), sorted(got)
    assert all(n > 0 for n in counts), counts
    for c in members + [p]:
        c.stop()


def subscription_identifier_and_no_local():
    c = v5(t("subid"))
    c.connect()
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = 42
    c.subscribe(t("subid/#"), 1, properties=props)
    opts = mqtt.SubscribeOptions(qos=1, noLocal=True)
    c.c.subscribe(t("own"), options=opts)
    c.publish(t("own"), "mine", 1)
    c.publish(t("subid/x"), "tagged", 1)
    m = c.message()
    assert m.topic == t("subid/x"), f"no-local: {m.topic}"
    assert m.properties.SubscriptionIdentifier == [42], m.properties.SubscriptionIdentifier
    c.stop()


def assigned_client_id():
    c = v5("")
    _, rc, props = c.connect()
    assert rc == 0, rc
    assert getattr(props, "AssignedClientIdentifier", ""), "server assigned an id"
    c.stop()


SCENARIOS = [
    basic, retained, offline_queueing, will_message, zero_length_client_id,
    overlapping_subscriptions, keepalive, subscribe_failure, dollar_topics,
    unsubscribe, properties_and_request_response, shared_subscription,
    subscription_identifier_and_no_local, assigned_client_id,
]


def main():
    failed = 0
    for s in SCENARIOS:
        try:
            s()
            print(f"ok   {s.__name__}", flush=True)
        except Exception as e:  # noqa: BLE001 - report every scenario
            failed += 1
            print(f"FAIL {s.__name__}: {type(e).__name__}: {e}", flush=True)
    print(f"{len(SCENARIOS) - failed}/{len(SCENARIOS)} scenarios passed", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
