"""An independent Kafka client for tests/kafka.rs: kafka-python, a pure-Python
implementation of the protocol, so Throughline's records are checked by code no one here
wrote.

    kafka_client.py produce BROKER TOPIC   < lines   # one record per line, keyed by its
                                                      # person; prints "partition offset" per line
    kafka_client.py consume BROKER TOPIC             # every record from the beginning, as
                                                      # {"partition","offset","key","value",
                                                      # "headers"} lines
"""
import json
import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def person(line):
    try:
        event = json.loads(line)
        return str(event.get("userId") or event.get("anonymousId") or "")
    except Exception:
        return ""


def produce(broker, topic):
    producer = KafkaProducer(bootstrap_servers=broker, acks="all", retries=5,
                             max_in_flight_requests_per_connection=1)
    # one record per request: tansu 0.6.0 reports a partition's end offset as its last
    # batch's base offset + 1, so batches of several records would hide records from
    # consumers that read to the end offsets
    for line in sys.stdin.buffer.read().split(b"\n"):
        if not line:
            continue
        key = person(line).encode("utf-8", "replace") or None
        meta = producer.send(topic, key=key, value=line).get(timeout=30)
        print(meta.partition, meta.offset)
    producer.flush()


def consume(broker, topic):
    consumer = KafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False,
                             group_id=None, consumer_timeout_ms=3000)
    partitions = consumer.partitions_for_topic(topic) or set()
    assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    consumer.seek_to_beginning(*assigned)
    # until nothing more comes for three seconds once records flow, or for ten before the
    # first (not to the end offsets: see produce; a loaded machine may be slow to start)
    records = []
    idle = 0
    while idle < (3 if records else 10):
        polled = consumer.poll(timeout_ms=1000)
        idle = 0 if polled else idle + 1
        for tp, batch in polled.items():
            records.extend(batch)
    records.sort(key=lambda r: (r.partition, r.offset))
    for r in records:
        print(json.dumps({
            "partition": r.partition,
            "offset": r.offset,
            "key": r.key.decode() if r.key is not None else None,
            "value": r.value.decode() if r.value is not None else None,
            "headers": {k: v.decode() for k, v in (r.headers or [])},
        }))


if __name__ == "__main__":
    command, broker, topic = sys.argv[1:4]
    {"produce": produce, "consume": consume}[command](broker, topic)
