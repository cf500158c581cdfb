"""confluent-kafka (librdkafka's own Python wheel) as a Kafka client of ferry's listener.
Commands and formats: see common.py."""

import json
import sys

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from common import Deadline, log, read_records, record_json, usage

# A group join waits about session.timeout.ms: keep it short (the broker must accept 6 s).
GROUP = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1000,
    "max.poll.interval.ms": 30000,
}


def produce(bootstrap, topic, extra=None):
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 30000,
            **(extra or {}),
        }
    )
    failed = []
    acked = [0]

    def on_delivery(err, _msg):
        if err is not None:
            failed.append(str(err))
        else:
            acked[0] += 1

    n = 0
    deadline = Deadline(50)
    for r in read_records(sys.stdin):
        headers = [(k, v.encode()) for k, v in (r.get("headers") or {}).items()]
        kwargs = {"value": r["value"].encode(), "on_delivery": on_delivery}
        if r.get("key") is not None:
            kwargs["key"] = r["key"].encode()
        if headers:
            kwargs["headers"] = headers
        if r.get("timestamp_ms") is not None:
            kwargs["timestamp"] = r["timestamp_ms"]
        while True:
            try:
                p.produce(topic, **kwargs)
                break
            except BufferError:
                p.poll(0.05)
                if deadline.passed():
                    log("produce: deadline passed with the local queue full")
                    sys.exit(3)
        n += 1
        p.poll(0)
    left = p.flush(deadline.left())
    if left:
        log(f"produce: {left} records unacknowledged at the deadline")
        sys.exit(3)
    if failed:
        log(f"produce: {len(failed)} failed, first: {failed[0]}")
        sys.exit(1)
    print(json.dumps({"produced": n, "acked": acked[0]}))


def consume(bootstrap, topic, group, expect, idle_s, deadline_s):
    deadline = Deadline(deadline_s)
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **GROUP,
        }
    )
    c.subscribe([topic])
    out = sys.stdout
    got = 0
    errors = 0
    idle_until = None
    code = 0
    while True:
        if deadline.passed():
            log(f"consume: deadline passed with {got} of {expect} records")
            code = 3
            break
        if got >= expect and idle_until is None:
            idle_until = Deadline(idle_s)
        if idle_until is not None and idle_until.passed():
            break
        for m in c.consume(num_messages=10000, timeout=0.2):
            if m.error():
                errors += 1
                if errors <= 5:
                    log(f"consume: error {m.error()}")
                continue
            got += 1
            out.write(
                record_json(m.partition(), m.offset(), m.key(), m.value(), m.headers(), m.timestamp()[1])
                + "\n"
            )
    out.flush()
    if code == 0 and got > 0:
        try:
            c.commit(asynchronous=False)
        except KafkaException as e:
            log(f"consume: commit failed: {e}")
            code = 1
    assignment = [tp.partition for tp in c.assignment()]
    c.close()
    log(json.dumps({"consumed": got, "errors": errors, "assignment": assignment}))
    sys.exit(code)


def committed(bootstrap, topic, group, partitions):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=15)
    out = {}
    for tp in tps:
        if tp.error is not None:
            log(f"committed: {tp.partition}: {tp.error}")
            sys.exit(1)
        out[str(tp.partition)] = tp.offset if tp.offset >= 0 else -1
    c.close()
    print(json.dumps(out))


def admin(bootstrap, action, args):
    """create TOPIC PARTITIONS | delete TOPIC | group GROUP: CreateTopics, DeleteTopics, and
    ListGroups + DescribeGroups of one group, printed as JSON."""
    a = AdminClient({"bootstrap.servers": bootstrap})
    if action == "create":
        fs = a.create_topics([NewTopic(args[0], num_partitions=int(args[1]), replication_factor=1)])
        for f in fs.values():
            f.result(timeout=15)
        print(json.dumps({"created": args[0]}))
    elif action == "delete":
        for f in a.delete_topics([args[0]]).values():
            f.result(timeout=15)
        print(json.dumps({"deleted": args[0]}))
    elif action == "group":
        listed = a.list_consumer_groups(request_timeout=15).result(timeout=15)
        desc = a.describe_consumer_groups([args[0]], request_timeout=15)[args[0]].result(timeout=15)
        print(
            json.dumps(
                {
                    "listed": sorted(g.group_id for g in listed.valid),
                    "list_errors": [str(e) for e in listed.errors],
                    "group": desc.group_id,
                    "state": str(desc.state),
                    "members": len(desc.members),
                }
            )
        )
    else:
        usage("admin")


def main(argv):
    if len(argv) < 2:
        usage(argv[0])
    cmd, args = argv[1], argv[2:]
    if cmd == "produce" and len(args) in (2, 3):
        produce(args[0], args[1], json.loads(args[2]) if len(args) == 3 else None)
    elif cmd == "admin" and len(args) >= 2:
        admin(args[0], args[1], args[2:])
    elif cmd == "consume" and len(args) == 6:
        consume(args[0], args[1], args[2], int(args[3]), float(args[4]), float(args[5]))
    elif cmd == "committed" and len(args) == 4:
        committed(args[0], args[1], args[2], int(args[3]))
    else:
        usage(argv[0])


if __name__ == "__main__":
    main(sys.argv)
