"""MQTT over secure WebSockets with Eclipse paho-mqtt (PyPI), through mqttlb.

usage: paho_ws.py HOST PORT CA_FILE PATH
Connects a subscriber and a publisher with transport="websockets" over TLS,
MQTT 3.1.1 and 5.0, publishes QoS 1 and checks every message arrives.
Prints "ws ok" and exits 0 on success; every wait is bounded.
"""
import queue
import ssl
import sys

import paho.mqtt.client as mqtt

host, port, ca, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
TIMEOUT = 15


def client(cid, protocol):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                    transport="websockets", protocol=protocol)
    c.tls_set(ca_certs=ca, cert_reqs=ssl.CERT_REQUIRED)
    c.ws_set_options(path=path)
    events = queue.Queue()
    c.on_connect = lambda cl, ud, flags, rc, props=None: events.put(("connack", rc))
    c.on_subscribe = lambda cl, ud, mid, rcs, props=None: events.put(("suback", rcs))
    c.on_message = lambda cl, ud, msg: events.put(("message", msg.topic, msg.payload))
    c.connect(host, port, keepalive=30)
    c.loop_start()
    return c, events


def expect(events, kind):
    while True:
        ev = events.get(timeout=TIMEOUT)
        if ev[0] == kind:
            return ev


for name, protocol in [("v311", mqtt.MQTTv311), ("v5", mqtt.MQTTv5)]:
    sub, sub_events = client(f"ws-sub-{name}", protocol)
    assert not expect(sub_events, "connack")[1].is_failure, name
    sub.subscribe(f"ws/{name}", qos=1)
    expect(sub_events, "suback")
    pub, pub_events = client(f"ws-pub-{name}", protocol)
    assert not expect(pub_events, "connack")[1].is_failure, name
    for i in range(20):
        pub.publish(f"ws/{name}", f"m{i}".encode(), qos=1).wait_for_publish(TIMEOUT)
    got = [expect(sub_events, "message")[2] for _ in range(20)]
    assert got == [f"m{i}".encode() for i in range(20)], (name, got)
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
    print(f"{name}: 20/20 messages over wss")
print("ws ok")
