#!/usr/bin/env python3
"""Writes the seed corpus of the agent_proto fuzz target: talm.agent.v1 messages (see
proto/talm/agent/v1/agent.proto), protobuf-encoded by hand, framed as the target reads them
(one side byte, then 2-byte big-endian length + message, repeated). Run from fuzz/:
`python3 seeds/agent_proto.py`. The other targets' seeds are plain files (FUZZING.md)."""
import json
import os
import struct


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def f_int(field, n):  # varint field (uint32/64, int64 >= 0, bool, enum)
    return varint(field << 3) + varint(n)


def f_bytes(field, data):  # length-delimited field (string, bytes, message)
    if isinstance(data, str):
        data = data.encode()
    return varint(field << 3 | 2) + varint(len(data)) + data


def frame(side, msgs):
    return bytes([side]) + b"".join(struct.pack(">H", len(m)) + m for m in msgs)


# AgentMessage: hello=1, heartbeat=2, report=3.
facts = (
    f_bytes(1, f_int(1, 120 << 30) + f_int(2, 80 << 30) + f_int(3, 85))  # containers_storage
    + f_bytes(2, f_int(1, 50 << 30) + f_int(2, 1) + f_int(3, 1))  # recovery
    + f_bytes(3, f_bytes(1, "rhcos") + f_bytes(2, "a" * 64) + f_int(3, 0) + f_int(4, 1))
    + f_bytes(4, "4.16.3")
)
hello = f_bytes(1, f_bytes(1, "0.1.0") + f_bytes(2, "sno1") + f_bytes(3, facts)
                + f_bytes(4, "precache-7") + f_bytes(5, "backup-2"))
heartbeat = f_bytes(2, b"")


def report(seq, task, body_field, body):
    return f_bytes(3, f_int(1, seq) + f_bytes(2, task) + f_bytes(3, "sno1") + f_bytes(body_field, body))


accepted = report(1, "precache-7", 4, f_int(1, 2))  # TaskAccepted{kind: PRECACHE}
progress = report(0, "precache-7", 5, f_bytes(1, "pulling 3/10") + f_int(2, 3) + f_int(3, 10))
result = report(2, "precache-7", 6, f_int(1, 1) + f_bytes(2, "10 images"))  # SUCCEEDED
# TaskProgress with bytes, throughput (4) and the registries after mirror resolution (5).
transfer = report(0, "precache-7", 5, f_bytes(1, "queued by the hub's pre-cache budget")
                  + f_int(2, 1 << 20) + f_int(3, 64 << 20) + f_int(4, 5 << 20)
                  + f_bytes(5, "mirror.example:5000") + f_bytes(5, "quay.io"))

# HubMessage: welcome=1, assign=2, cancel=3, ack=4, update=5.
welcome = f_bytes(1, f_bytes(1, "sno1") + f_int(2, 15))


def assign(task, kind, params):
    return f_bytes(2, f_bytes(1, task) + f_int(2, kind) + f_bytes(3, json.dumps(params)) + f_int(4, 1796533200))


precache = assign("precache-7", 2, {
    "platformImage": "quay.io/openshift-release-dev/ocp-release@sha256:" + "0" * 64,
    "operatorsIndexes": ["registry.example/redhat-operator-index:v4.16"],
    "operatorsPackagesAndChannels": ["local-storage-operator:stable"],
    "excludePrecachePatterns": ["aws", "^azure"],
    "spaceRequired": "40",
    "additionalImages": ["quay.io/ns/img:v1"],
})
check = assign("check-1", 1, {"spaceRequired": "30"})
approve = assign("ip-1", 4, {"subscriptions": [{"name": "sub", "namespace": "openshift-local-storage"}], "pollSeconds": 5})
# A held assignment with a hub cap (rate_limit_bytes_per_second=5, hold=6), then TaskUpdates.
held = f_bytes(2, f_bytes(1, "precache-8") + f_int(2, 2) + f_bytes(3, json.dumps({"platformImage": "quay.io/r@sha256:" + "1" * 64, "spaceRequired": "35"}))
               + f_int(4, 1796533200) + f_int(5, 8 << 20) + f_int(6, 1))
let_in = f_bytes(5, f_bytes(1, "precache-8") + f_int(2, 4 << 20))
recap = f_bytes(5, f_bytes(1, "precache-8") + f_int(2, 1 << 20) + f_int(3, 1))
cancel = f_bytes(3, f_bytes(1, "precache-7"))
ack = f_bytes(4, f_int(1, 2))

out = "corpus/agent_proto"
os.makedirs(out, exist_ok=True)
seeds = {
    "gateway-session": frame(0, [hello, heartbeat, accepted, progress, result]),
    "gateway-hello": frame(0, [hello]),
    "agent-session": frame(1, [welcome, precache, check, approve, cancel, ack]),
    "gateway-transfer": frame(0, [hello, accepted, transfer, result]),
    "agent-grants": frame(1, [welcome, held, let_in, recap, ack]),
}
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print("wrote", ", ".join(sorted(seeds)), "to", out)
