"""What the two client scripts share: the command line, the record format on stdin and stdout,
and deadlines (a client that hangs exits 3 instead of hanging the test).

Commands (the same for confluent_client.py and kafka_python_client.py):

  produce BOOTSTRAP TOPIC [CONFIG_JSON]
      Reads one JSON object per stdin line: {"value": str, "key": str|null,
      "headers": {str: str}, "timestamp_ms": int|null}; produces each with acks=all; exits 0
      once every one is acknowledged, 1 if any failed. Prints {"produced": N} on stdout.
      CONFIG_JSON: producer settings over the defaults (e.g. {"compression.type": "zstd"}).

  consume BOOTSTRAP TOPIC GROUP EXPECT IDLE_S DEADLINE_S
      Joins GROUP (auto.offset.reset=earliest, no auto commit), reads until EXPECT records came,
      then IDLE_S seconds more (anything extra shows up), commits synchronously and leaves.
      Prints one JSON object per record on stdout: {"partition", "offset", "key", "value",
      "headers", "timestamp_ms"}, and a summary on stderr. Exits 3 past DEADLINE_S (the records
      so far are printed).

  committed BOOTSTRAP TOPIC GROUP PARTITIONS
      Prints {"0": offset, ...}: GROUP's committed offsets (OffsetFetch), -1 where none.

  admin BOOTSTRAP create TOPIC PARTITIONS | delete TOPIC | group GROUP   (confluent only)
      CreateTopics, DeleteTopics; ListGroups and DescribeGroups of GROUP.
"""

import json
import sys
import time


def usage(name):
    sys.stderr.write(__doc__)
    sys.exit(2)


def read_records(stream):
    for line in stream:
        line = line.strip()
        if line:
            yield json.loads(line)


def record_json(partition, offset, key, value, headers, timestamp_ms):
    def text(b):
        if b is None:
            return None
        return b.decode("utf-8", "backslashreplace") if isinstance(b, bytes) else str(b)

    return json.dumps(
        {
            "partition": partition,
            "offset": offset,
            "key": text(key),
            "value": text(value),
            "headers": [[k, text(v)] for k, v in (headers or [])],
            "timestamp_ms": timestamp_ms,
        },
        ensure_ascii=False,
    )


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + float(seconds)

    def passed(self):
        return time.monotonic() >= self.end

    def left(self):
        return max(0.0, self.end - time.monotonic())


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()
