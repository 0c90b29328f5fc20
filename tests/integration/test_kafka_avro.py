"""Avro streams from Kafka: values in Confluent's wire format, decoded by
fastavro with the stream's .avsc schema as the reader schema and, for schema
ids listed in `kafka.avro_writer_schemas`, the producer's schema resolved
against it; a value that does not decode is dead-lettered with its reason."""
import io
import json
import time

import fastavro
import pytest

from fsapp.engine import Engine
from fsapp.engine.avro import AvroDecoder, AvroError
from fsapp.engine.kafka import KafkaIngest
from fsapp.engine.kafka_config import KafkaConfig
from fsapp.registry.errors import RepoError
from fsapp.registry.repo import Repo

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


# the producer's next schema: a field added, the optional `amount` removed
SCHEMA_V2 = {"type": "record", "name": "Payment", "fields": [
    {"name": "account_id", "type": "long"},
    {"name": "channel", "type": {"type": "enum", "name": "Channel", "symbols": ["web", "pos"]}},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "device", "type": "string"},
]}
READER = dict(SCHEMA, fields=[dict(f, default=None) if f["name"] == "amount" else f for f in SCHEMA["fields"]])


def encode(record, framed=True, schema=SCHEMA, schema_id=7) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return (b"\x00" + schema_id.to_bytes(4, "big") if framed else b"") + buf.getvalue()


def test_decoder_reads_the_stream_schema_and_resolves_writer_schemas(tmp_path):
    (tmp_path / "p.avsc").write_text(json.dumps(READER))
    (tmp_path / "p2.avsc").write_text(json.dumps(SCHEMA_V2))
    dec = AvroDecoder(str(tmp_path / "p.avsc"), writer_schemas={9: str(tmp_path / "p2.avsc")})
    for i in range(-300, 300, 7):
        rec = {"account_id": i * 10**12, "amount": None if i % 3 == 0 else i / 7, "channel": "web" if i % 2 else "pos",
               "ts": 1_764_000_000_000_000 + i}
        assert dec.decode(encode(rec)) == rec  # timestamp-micros: µs as they were
    # schema id 9: written with v2 (a new field, `amount` gone): read as the stream's record
    v2 = {"account_id": 5, "channel": "pos", "ts": 1_764_000_000_123, "device": "ios"}
    assert dec.decode(encode(v2, schema=SCHEMA_V2, schema_id=9)) == {
        "account_id": 5, "amount": None, "channel": "pos", "ts": 1_764_000_000_123_000}  # millis → µs
    with pytest.raises(AvroError, match="Confluent"):
        dec.decode(encode({"account_id": 1, "amount": 1.0, "channel": "web", "ts": 1}, framed=False))
    with pytest.raises(AvroError, match="ends early"):
        dec.decode(encode({"account_id": 1, "amount": 1.0, "channel": "web", "ts": 1})[:-2])
    with pytest.raises(AvroError, match="bytes left"):
        dec.decode(encode({"account_id": 1, "amount": 1.0, "channel": "web", "ts": 1}) + b"\x00")
    # a writer schema that cannot resolve (a field the reader needs, without a default, is missing)
    (tmp_path / "bad.avsc").write_text(json.dumps({"type": "record", "name": "Payment", "fields": [
        {"name": "channel", "type": {"type": "enum", "name": "Channel", "symbols": ["web", "pos"]}}]}))
    dec = AvroDecoder(str(tmp_path / "p.avsc"), writer_schemas={3: str(tmp_path / "bad.avsc")})
    with pytest.raises(AvroError, match="resolve"):
        dec.decode(b"\x00\x00\x00\x00\x03\x00")


def test_avro_events_reach_online_values(kafka_broker, tmp_path):
    topic = "payments-avro"
    kafka_broker.create_topic(topic)
    root = tmp_path / "repo"
    (root / "schemas").mkdir(parents=True)
    (root / "schemas" / "payment.avsc").write_text(json.dumps(READER))
    (root / "schemas" / "payment-v2.avsc").write_text(json.dumps(SCHEMA_V2))
    (root / "fstore.yaml").write_text(f"project: avrotest\nkafka:\n  bootstrap_servers: {kafka_broker.bootstrap}\n"
                                      "  batch_size: 200\n  poll_timeout_ms: 50\n"
                                      "  avro_writer_schemas:\n    '9': schemas/payment-v2.avsc\n")
    (root / "defs.sql").write_text(DEFS.format(topic=topic))
    repo = Repo(root)
    repo.apply()
    t = time.time_ns() // 1000 - 60_000_000
    p = kafka_broker.producer()
    for i in range(12):
        p.produce(topic, encode({"account_id": i % 2, "amount": 2.0, "channel": "web", "ts": t + i}))
    p.produce(topic, b"\x00\x00\x00\x00\x07\x99")  # does not decode
    for i in range(4):  # the producer moved to v2: no amount, a device field
        p.produce(topic, encode({"account_id": i % 2, "channel": "pos", "ts": t // 1000 + 1000 + i, "device": "ios"},
                                schema=SCHEMA_V2, schema_id=9))
    p.flush(10)
    engine = Engine(str(repo.data_dir / "engine"), str(repo.registry_path), fsync="never")
    ingest = KafkaIngest(engine, KafkaConfig.from_repo(repo))
    ingest._subscribe()
    try:
        deadline = time.monotonic() + 20
        while sum(ingest.counts["consumed"].values()) < 17:
            assert time.monotonic() < deadline, ingest.stats()
            ingest.poll_once()
        out = engine.get_online_features(["account_totals:n_payments", "account_totals:total"],
                                         entities={"account_id": [0, 1]})
        assert out["results"][1]["values"] == [8, 8] and out["results"][2]["values"] == [12.0, 12.0]
        assert engine.stats()["kafka"]["dead_lettered_by_kind"] == {f"{topic}:avro": 1}
    finally:
        ingest.stop()
        engine.close()
    letters = kafka_broker.read_all(f"{topic}.dlq")
    assert len(letters) == 1 and b"payment.avsc" in dict(letters[0].headers())["fstore.reason"]


def test_writer_schema_settings_are_checked(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "defs.sql").write_text("CREATE ENTITY account (account_id BIGINT);")
    for bad, says in (("avro_writer_schemas: [a.avsc]", "mapping of Confluent schema ids"),
                      ("avro_writer_schemas:\n    v2: a.avsc", "is not a schema id")):
        (root / "fstore.yaml").write_text(f"project: avrotest\nkafka:\n  bootstrap_servers: x:1\n  {bad}\n")
        with pytest.raises(RepoError, match=says):
            KafkaConfig.from_repo(Repo(root))
