"""Kafka batches against the brute-force reading of the dead-letter rule: a
message is a dead letter exactly when it is refused on its own. Any mix of
good and malformed messages, consumed as one poll batch, must leave the same
dead letters and the same online values as the same messages consumed one
batch each (where no message's JSON types can mix with another's). The bug
this found: one message whose entity key was JSON text made the whole
batch's key column text, which the key refuses, so every good event of the
batch was dead-lettered with it.

KafkaIngest's decoding, bisecting and pushing run for real into real
engines; the messages are the decoder's view of confluent_kafka.Message
(which Python cannot construct), as in test_kafka_decode.py."""
import json
import tempfile

from confluent_kafka import TIMESTAMP_CREATE_TIME
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fsapp.engine import Engine
from fsapp.engine.kafka import KafkaIngest
from fsapp.engine.kafka_config import DeadLetterFile, KafkaConfig
from fsapp.registry.repo import Repo

DEFS = """
CREATE ENTITY account (account_id BIGINT);
CREATE STREAM payments (account_id BIGINT, amount DOUBLE, merchant VARCHAR, online BOOLEAN, ts TIMESTAMP)
    WITH (topic = 'p', timestamp = 'ts', allowed_lateness = '100d');
CREATE FEATURE VIEW account_totals AS
SELECT account_id, count(*) OVER lifetime() AS n, sum(amount) OVER lifetime() AS total,
       approx_count_distinct(merchant) OVER lifetime() AS merchants, max(online) OVER lifetime() AS any_online
FROM payments;
"""
FEATURES = ["account_totals:n", "account_totals:total", "account_totals:merchants", "account_totals:any_online"]
KEYS = [0, 1, 2, -3, 2**40]
T0 = 1_764_000_000


class Msg:
    def __init__(self, value, offset):
        self._value, self._offset = value, offset

    def error(self):
        return None

    def value(self):
        return self._value

    def key(self):
        return None

    def timestamp(self):
        return (TIMESTAMP_CREATE_TIME, T0 * 1000)

    def partition(self):
        return 0

    def offset(self):
        return self._offset

    def topic(self):
        return "p"


FIELD = {
    "account_id": st.one_of(st.sampled_from(KEYS), st.sampled_from(["x", "2", "", None, 1.5, 2.0, True, [1]]),
                            st.just(2**64)),
    "amount": st.one_of(st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: round(x, 2)),
                        st.sampled_from(["1.5", "lots", None, True, 3, {"a": 1}, 1e308])),
    "merchant": st.one_of(st.sampled_from(["m1", "m2", ""]), st.sampled_from([7, None, [1], 2.5, False])),
    "online": st.one_of(st.booleans(), st.sampled_from(["true", 1, 0, None, "maybe"])),
    "ts": st.one_of(st.integers(T0, T0 + 10**5), st.sampled_from(["2026-11-27T10:00:00Z", "yesterday", None, -1])),
}


@st.composite
def message(draw):
    if draw(st.integers(0, 14)) == 0:
        return draw(st.sampled_from([b"{not json", b"[1]", b"null", b"", None]))
    obj = {k: draw(v) for k, v in FIELD.items() if draw(st.integers(0, 9)) > 0}
    return json.dumps(obj).encode()


def consume(root, batches):
    """Ingests the batches into a fresh engine; (online values, dead letter offsets)."""
    repo = Repo(root)
    engine = Engine(str(repo.data_dir / "engine"), str(repo.registry_path), fsync="never")
    dead = DeadLetterFile(f"{root}/dead.jsonl")
    cfg = KafkaConfig(bootstrap_servers="127.0.0.1:9", group_id="unused")
    ingest = KafkaIngest(engine, cfg, dead_letters=dead)
    try:
        for b in batches:
            ingest._ingest("p", b)
        out = engine.get_online_features(FEATURES, entities={"account_id": KEYS})
        values = [r["values"] for r in out["results"][1:]]
    finally:
        ingest.consumer.close()
        dead.close()
        engine.close()
    with open(f"{root}/dead.jsonl") as f:
        letters = sorted(json.loads(line)["offset"] for line in f)
    return values, letters


def new_repo():
    root = tempfile.mkdtemp(prefix="fstore-kafka-alone-")
    with open(f"{root}/fstore.yaml", "w") as f:
        f.write("project: alone\n")
    with open(f"{root}/defs.sql", "w") as f:
        f.write(DEFS)
    Repo(root).apply()
    return root


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(message(), min_size=1, max_size=14), cut=st.integers(1, 14))
def test_a_batch_dead_letters_exactly_what_is_refused_alone(values, cut):
    import shutil

    msgs = [Msg(v, i) for i, v in enumerate(values)]
    batched, alone = new_repo(), new_repo()
    try:
        got = consume(batched, [msgs[:cut], msgs[cut:]] if cut < len(msgs) else [msgs])
        want = consume(alone, [[m] for m in msgs])
    finally:
        shutil.rmtree(batched, ignore_errors=True)
        shutil.rmtree(alone, ignore_errors=True)
    assert got[1] == want[1], f"dead letters {got[1]} in batches, {want[1]} one by one"
    for g, w, name in zip(got[0], want[0], FEATURES):
        if name.endswith("total"):
            assert all((a is None and b is None) or abs(a - b) <= 1e-9 * max(1.0, abs(b)) for a, b in zip(g, w)), \
                (name, g, w)
        else:
            assert g == w, (name, g, w)
