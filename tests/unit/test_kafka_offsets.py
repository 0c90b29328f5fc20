"""A Kafka batch's bookkeeping per partition (fsapp.engine.kafka): the next
offset of each partition after a batch and the messages a node's offline log
holds already, against one message at a time."""
import numpy as np
from hypothesis import given, strategies as st

from fsapp.engine.kafka import _next_offsets, _partitions, _Polled


@st.composite
def batches(draw):
    """Partitions in any order (some absent, up to 40), each partition's
    offsets increasing, as librdkafka hands them over."""
    parts = draw(st.lists(st.integers(0, 40), max_size=60))
    nxt, offs = {}, []
    for p in parts:
        nxt[p] = nxt.get(p, draw(st.integers(0, 1000))) + draw(st.integers(1, 3))
        offs.append(nxt[p])
    return np.array(parts, dtype=np.int32), np.array(offs, dtype=np.int64)


@given(batches())
def test_next_offsets_are_each_partitions_last_message_plus_one(batch):
    parts, offs = batch
    want = {}
    for p, o in zip(parts.tolist(), offs.tolist()):
        want[f"t/{p}"] = o + 1  # the last message of a partition wins
    assert _next_offsets("t", parts, offs) == want
    assert _partitions(parts).tolist() == sorted(set(parts.tolist()))


class _Engine:
    def __init__(self, logged):
        self.logged_offsets = logged


@given(batches(), st.dictionaries(st.integers(0, 40), st.integers(0, 1100)))
def test_again_marks_the_messages_the_offline_log_holds(batch, logged):
    from fsapp.engine.kafka import KafkaIngest

    parts, offs = batch
    ingest = KafkaIngest.__new__(KafkaIngest)
    ingest.engine = _Engine({f"t/{p}": o for p, o in logged.items()})
    got = ingest._again("t", _Polled([None] * len(parts), [b""] * len(parts), parts, offs))
    assert got.dtype == bool and got.tolist() == [o < logged.get(p, 0) for p, o in zip(parts.tolist(), offs.tolist())]
