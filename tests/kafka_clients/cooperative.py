"""Two confluent-kafka consumers of one group with the cooperative-sticky assignor: the second
joins while the first is reading, the partitions are shared incrementally, every record is read.

usage: cooperative.py BOOTSTRAP TOPIC N
prints: distinct D total T assigned {'a': [...], 'b': [...]}
"""
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaException

bootstrap, topic, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
seen = {}
assigned = {}
refused = []
lock = threading.Lock()


def member(name, delay):
    time.sleep(delay)
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "coop",
        "partition.assignment.strategy": "cooperative-sticky",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    })

    def on_assign(consumer, partitions):
        with lock:
            assigned.setdefault(name, set()).update(p.partition for p in partitions)

    c.subscribe([topic], on_assign=on_assign)
    deadline = time.time() + 45
    try:
        while time.time() < deadline:
            m = c.poll(0.2)
            if m is None or m.error():
                with lock:
                    if len(seen) >= n:
                        break
                continue
            with lock:
                seen[m.value()] = seen.get(m.value(), 0) + 1
            try:
                c.commit(m, asynchronous=False)
            except KafkaException as e:
                # A commit during a rebalance is refused (REBALANCE_IN_PROGRESS), as Kafka
                # refuses it; the next one covers it.
                with lock:
                    refused.append(str(e))
            time.sleep(0.003)  # slow enough that the second member joins mid-way
    finally:
        c.close()


threads = [threading.Thread(target=member, args=("a", 0)), threading.Thread(target=member, args=("b", 2))]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("distinct", len(seen), "total", sum(seen.values()),
      "assigned", {k: sorted(v) for k, v in sorted(assigned.items())},
      "refused commits", len(refused), refused[:1], flush=True)
