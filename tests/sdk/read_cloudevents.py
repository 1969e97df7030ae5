"""Reads Kafka records (JSON lines on stdin: headers and value base64, key text) with the
CloudEvents Python SDK's Kafka protocol binding, exactly as a consumer would, and prints one
JSON line per event with its attributes and data. Exits non-zero when the SDK refuses one.

Usage: read_cloudevents.py [structured|binary]   (the mode the SDK must detect)
"""
import base64
import json
import sys

from cloudevents.core.bindings import kafka

expected_mode = sys.argv[1]
for line in sys.stdin:
    record = json.loads(line)
    headers = {k: base64.b64decode(v) for k, v in record["headers"].items()}
    binary = any(k.lower().startswith("ce_") for k in headers)
    mode = "binary" if binary else "structured"
    if mode != expected_mode:
        sys.exit(f"the SDK would read this record in {mode} mode, expected {expected_mode}: {headers}")
    message = kafka.KafkaMessage(
        headers=headers, key=record["key"], value=base64.b64decode(record["value"])
    )
    event = kafka.from_kafka_event(message)
    time = event.get_time()
    print(json.dumps({
        "id": event.get_id(),
        "source": event.get_source(),
        "type": event.get_type(),
        "specversion": event.get_specversion(),
        "subject": event.get_subject(),
        "time": time.isoformat() if time else None,
        "datacontenttype": event.get_datacontenttype(),
        "data": event.get_data() if not isinstance(event.get_data(), bytes)
                else json.loads(event.get_data()),
    }))
