"""The gRPC response's hand-written wire format (fsapp.grpc.server.
encode_response) parses back into exactly the message the protobuf runtime
builds from the same values, for every value kind fstore serves."""
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from fsapp.grpc.protos.feast.serving import ServingService_pb2 as pb
from fsapp.grpc.server import encode_response, response_of

FLOATS = st.floats(allow_nan=False) | st.just(-0.0) | st.just(math.inf)
CELL = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), FLOATS, st.text(max_size=5),
                 st.lists(FLOATS, max_size=4))
STATUS = st.sampled_from(["PRESENT", "NULL_VALUE", "NOT_FOUND", "OUTSIDE_MAX_AGE"])
TS = st.sampled_from(["1970-01-01T00:00:00Z", "2026-11-30T10:00:00Z", "2026-11-30T10:00:00.123456Z",
                      "1969-12-31T23:59:59Z"])


@st.composite
def responses(draw):
    n = draw(st.integers(0, 5))
    cols = draw(st.integers(1, 4))
    names = draw(st.lists(st.text(min_size=1, max_size=6), min_size=cols, max_size=cols))
    shared = draw(st.lists(TS, min_size=n, max_size=n))
    results = []
    for _ in range(cols):
        kind = draw(st.sampled_from(["floats", "mixed"]))
        vals = draw(st.lists(FLOATS if kind == "floats" else CELL, min_size=n, max_size=n))
        ts = shared if draw(st.booleans()) else draw(st.lists(TS, min_size=n, max_size=n))
        results.append({"values": vals, "statuses": draw(st.lists(STATUS, min_size=n, max_size=n)),
                        "event_timestamps": ts})
    return {"metadata": {"feature_names": names}, "results": results}


@settings(max_examples=300, deadline=None)
@given(out=responses())
def test_hand_written_bytes_parse_to_the_runtimes_message(out):
    got = pb.GetOnlineFeaturesResponse.FromString(encode_response(out))
    assert got == response_of(out)
