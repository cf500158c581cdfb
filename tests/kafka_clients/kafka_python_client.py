"""kafka-python (a pure-Python implementation of the protocol, independent of librdkafka) as a
Kafka client of ferry's listener. Commands and formats: see common.py."""

import json
import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from common import Deadline, log, read_records, record_json, usage

GROUP = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "max_poll_interval_ms": 30000,
}


def produce(bootstrap, topic, extra=None):
    deadline = Deadline(50)
    p = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        batch_size=256 * 1024,
        request_timeout_ms=30000,
        **(extra or {}),
    )
    futures = []
    for r in read_records(sys.stdin):
        headers = [(k, v.encode()) for k, v in (r.get("headers") or {}).items()]
        key = r["key"].encode() if r.get("key") is not None else None
        futures.append(
            p.send(
                topic,
                value=r["value"].encode(),
                key=key,
                headers=headers or None,
                timestamp_ms=r.get("timestamp_ms"),
            )
        )
        if deadline.passed():
            log("produce: deadline passed while sending")
            sys.exit(3)
    p.flush(timeout=deadline.left())
    pending = [f for f in futures if not f.is_done]
    failed = [f for f in futures if f.is_done and f.failed()]
    if pending:
        log(f"produce: {len(pending)} records unacknowledged at the deadline")
        sys.exit(3)
    if failed:
        log(f"produce: {len(failed)} failed, first: {failed[0].exception!r}")
        sys.exit(1)
    p.close(timeout=5)
    print(json.dumps({"produced": len(futures), "acked": len(futures)}))


def consume(bootstrap, topic, group, expect, idle_s, deadline_s):
    deadline = Deadline(deadline_s)
    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=10000,
        **GROUP,
    )
    c.subscribe([topic])
    out = sys.stdout
    got = 0
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
        for _tp, records in c.poll(timeout_ms=200).items():
            for m in records:
                got += 1
                out.write(
                    record_json(m.partition, m.offset, m.key, m.value, m.headers, m.timestamp)
                    + "\n"
                )
    out.flush()
    if code == 0 and got > 0:
        try:
            c.commit()
        except Exception as e:  # the library's commit errors have no common base
            log(f"consume: commit failed: {e!r}")
            code = 1
    assignment = sorted(tp.partition for tp in c.assignment())
    c.close(autocommit=False)
    log(json.dumps({"consumed": got, "assignment": assignment}))
    sys.exit(code)


def committed(bootstrap, topic, group, partitions):
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    out = {}
    for p in range(partitions):
        off = c.committed(TopicPartition(topic, p))
        out[str(p)] = off if off is not None and off >= 0 else -1
    c.close(autocommit=False)
    print(json.dumps(out))


def main(argv):
    if len(argv) < 2:
        usage(argv[0])
    cmd, args = argv[1], argv[2:]
    if cmd == "produce" and len(args) in (2, 3):
        produce(args[0], args[1], json.loads(args[2]) if len(args) == 3 else None)
    elif cmd == "consume" and len(args) == 6:
        consume(args[0], args[1], args[2], int(args[3]), float(args[4]), float(args[5]))
    elif cmd == "committed" and len(args) == 4:
        committed(args[0], args[1], args[2], int(args[3]))
    else:
        usage(argv[0])


if __name__ == "__main__":
    main(sys.argv)
