"""Avro streams from Kafka: values in Confluent's wire format, decoded with
the stream's .avsc schema (checked against fastavro as an independent
encoder); a value that does not decode is dead-lettered with its reason."""
import io
import json
import time

import pytest

from fsapp.engine import Engine
from fsapp.engine.avro import AvroDecoder, AvroError
from fsapp.engine.kafka import KafkaIngest
from fsapp.engine.kafka_config import KafkaConfig
from fsapp.registry.repo import Repo

fastavro = pytest.importorskip("fastavro")

SCHEMA = {"type": "record", "name": "Payment", "fields": [
    {"name": "account_id", "type": "long"},
    {"name": "amount", "type": ["null", "double"]},
    {"name": "channel", "type": {"type": "enum", "name": "Channel", "symbols": ["web", "pos"]}},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
]}
DEFS = """
CREATE ENTITY account (account_id BIGINT);
CREATE STREAM payments (account_id BIGINT, amount DOUBLE, channel VARCHAR, ts TIMESTAMP)
    WITH (topic = '{topic}', timestamp = 'ts', format = 'avro', avro_schema = 'schemas/payment.avsc');
CREATE FEATURE VIEW account_totals AS
SELECT account_id, count(*) OVER lifetime() AS n_payments, sum(amount) OVER lifetime() AS total
FROM payments;
"""


def encode(record, framed=True) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(SCHEMA), record)
    return (b"\x00\x00\x00\x00\x07" if framed else b"") + buf.getvalue()


def test_decoder_equals_fastavro_on_many_records(tmp_path):
    path = tmp_path / "p.avsc"
    path.write_text(json.dumps(SCHEMA))
    dec = AvroDecoder(str(path))
    for i in range(-300, 300, 7):
        rec = {"account_id": i * 10**12, "amount": None if i % 3 == 0 else i / 7, "channel": "web" if i % 2 else "pos",
               "ts": 1_764_000_000_000_000 + i}
        assert dec.decode(encode(rec)) == rec
    with pytest.raises(AvroError, match="Confluent"):
        dec.decode(encode({"account_id": 1, "amount": 1.0, "channel": "web", "ts": 1}, framed=False))
    with pytest.raises(AvroError, match="ends early"):
        dec.decode(encode({"account_id": 1, "amount": 1.0, "channel": "web", "ts": 1})[:-2])


def test_avro_events_reach_online_values(kafka_broker, tmp_path):
    topic = "payments-avro"
    kafka_broker.create_topic(topic)
    root = tmp_path / "repo"
    (root / "schemas").mkdir(parents=True)
    (root / "schemas" / "payment.avsc").write_text(json.dumps(SCHEMA))
    (root / "fstore.yaml").write_text(f"project: avrotest\nkafka:\n  bootstrap_servers: {kafka_broker.bootstrap}\n"
                                      "  batch_size: 200\n  poll_timeout_ms: 50\n")
    (root / "defs.sql").write_text(DEFS.format(topic=topic))
    repo = Repo(root)
    repo.apply()
    t = time.time_ns() // 1000 - 60_000_000
    p = kafka_broker.producer()
    for i in range(12):
        p.produce(topic, encode({"account_id": i % 2, "amount": 2.0, "channel": "web", "ts": t + i}))
    p.produce(topic, b"\x00\x00\x00\x00\x07\x99")  # does not decode
    p.flush(10)
    engine = Engine(str(repo.data_dir / "engine"), str(repo.registry_path), fsync="never")
    ingest = KafkaIngest(engine, KafkaConfig.from_repo(repo))
    ingest._subscribe()
    try:
        deadline = time.monotonic() + 20
        while sum(ingest.counts["consumed"].values()) < 13:
            assert time.monotonic() < deadline, ingest.stats()
            ingest.poll_once()
        out = engine.get_online_features(["account_totals:n_payments", "account_totals:total"],
                                         entities={"account_id": [0, 1]})
        assert out["results"][1]["values"] == [6, 6] and out["results"][2]["values"] == [12.0, 12.0]
        assert engine.stats()["kafka"]["dead_lettered_by_kind"] == {f"{topic}:avro": 1}
    finally:
        ingest.stop()
        engine.close()
    letters = kafka_broker.read_all(f"{topic}.dlq")
    assert len(letters) == 1 and b"payment.avsc" in dict(letters[0].headers())["fstore.reason"]
