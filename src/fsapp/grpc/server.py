"""gRPC serving: Feast's `feast.serving.ServingService` (GetFeastServingInfo,
GetOnlineFeatures) and the standard `grpc.health.v1` health service,
answered from the engine's shared-memory tables like the REST workers
(`fsapp.serve.reader.OnlineReader`), with the same API keys (metadata
`authorization: Bearer <key>`, scope `read`) and the same error meanings as
the REST API, mapped to gRPC status codes:

    unknown feature / view / service       NOT_FOUND
    a request that does not fit            INVALID_ARGUMENT
    no key / an unknown key                UNAUTHENTICATED
    a key without the read scope           PERMISSION_DENIED
    the store cannot answer now            UNAVAILABLE

`fstore serve` runs `--grpc-workers` processes of this module on one port
(SO_REUSEPORT: the kernel spreads connections over them; each has its own
GIL). The message classes are generated from `fsapp/grpc/protos` by
grpcio-tools when the package is built (setup.py).

    python -m fsapp.grpc.server --repo DIR --port 6566
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import signal
import struct
import sys
import threading
import time
from concurrent import futures

import falcon
import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fsapp.api import errors as api_errors
from fsapp.grpc.protos.feast.serving import ServingService_pb2 as pb
from fsapp.grpc.protos.feast.serving import ServingService_pb2_grpc as pb_grpc
from fsapp.grpc.protos.feast.types import Value_pb2 as vpb

log = logging.getLogger("fstore.grpc")
SERVICE = "feast.serving.ServingService"
DEFAULT_GRPC_PORT = 6566
_STATUS = {"PRESENT": pb.PRESENT, "NULL_VALUE": pb.NULL_VALUE, "NOT_FOUND": pb.NOT_FOUND,
           "OUTSIDE_MAX_AGE": pb.OUTSIDE_MAX_AGE}
_CODE_OF_HTTP = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                 403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
                 413: grpc.StatusCode.RESOURCE_EXHAUSTED, 422: grpc.StatusCode.INVALID_ARGUMENT,
                 503: grpc.StatusCode.UNAVAILABLE}


class BadRequest(ValueError):
    """The request does not fit (INVALID_ARGUMENT)."""


def entity_values(name: str, rv) -> list:
    """A RepeatedValue of entity keys → Python values (int or str)."""
    out = []
    for v in rv.val:
        kind = v.WhichOneof("val")
        if kind in ("int64_val", "int32_val", "string_val"):
            out.append(getattr(v, kind))
        elif kind is None or kind == "null_val":
            out.append(None)
        else:
            raise BadRequest(f"entity {name!r}: a key is an integer (int64_val/int32_val) or text (string_val), "
                             f"not {kind}")
    return out


def request_values(name: str, rv) -> list:
    """A RepeatedValue of request_context → Python scalars (on-demand views
    check them against their request source's types)."""
    out = []
    for v in rv.val:
        kind = v.WhichOneof("val")
        if kind in ("int64_val", "int32_val", "double_val", "float_val", "string_val", "bool_val"):
            out.append(getattr(v, kind))
        elif kind is None or kind == "null_val":
            out.append(None)
        else:
            raise BadRequest(f"request_context {name!r}: a value is a number, text or bool, not {kind}")
    return out


def value_of(x) -> vpb.Value:
    """A served value → Value (an unset Value for null, as Feast's servers send)."""
    if x is None:
        return vpb.Value()
    if isinstance(x, bool):
        return vpb.Value(bool_val=x)
    if isinstance(x, int):
        return vpb.Value(int64_val=x)
    if isinstance(x, float):
        return vpb.Value(double_val=x)
    if isinstance(x, str):
        return vpb.Value(string_val=x)
    if isinstance(x, list):  # last_k: doubles, newest first
        return vpb.Value(double_list_val=vpb.DoubleList(val=[float(v) for v in x if v is not None]))
    raise TypeError(f"cannot encode {type(x).__name__} as a feast.types.Value")


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_TS_CACHE: dict[str, Timestamp] = {}


def timestamp_of(iso: str | None) -> Timestamp:
    if not iso:
        return Timestamp()
    ts = _TS_CACHE.get(iso)
    if ts is None:
        d = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
        delta = d - _EPOCH
        ts = Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000)
        if len(_TS_CACHE) > 100_000:
            _TS_CACHE.clear()
        _TS_CACHE[iso] = ts
    return ts


def response_of(out: dict) -> pb.GetOnlineFeaturesResponse:
    resp = pb.GetOnlineFeaturesResponse(status=True)
    resp.metadata.feature_names.val.extend(out["metadata"]["feature_names"])
    for col in out["results"]:
        fv = resp.results.add()
        fv.values.extend([value_of(x) for x in col["values"]])
        fv.statuses.extend([_STATUS[s] for s in col["statuses"]])
        fv.event_timestamps.extend([timestamp_of(t) for t in col["event_timestamps"]])
    return resp


# ---- the response's wire format, written directly
#
# PERF: building a GetOnlineFeaturesResponse as protobuf objects (a Value and
# a Timestamp message per cell) cost 8.6 ms for 100 entities x 50 features,
# plus 2.5 ms to serialise it; the lookup itself 0.16 ms. These functions
# write the same bytes the protobuf runtime would parse back into the equal
# message (tests/unit/test_grpc_wire.py compares them on every value kind),
# a numpy pass for a column of doubles.

_STATUS_BYTE = {"PRESENT": b"\x01", "NULL_VALUE": b"\x02", "NOT_FOUND": b"\x03", "OUTSIDE_MAX_AGE": b"\x04"}
_DOUBLE_CELL = np.dtype([("tag", "u1"), ("len", "u1"), ("vtag", "u1"), ("v", "<f8")])


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: its tag byte (field < 16), length, payload."""
    return bytes((tag,)) + _varint(len(payload)) + payload


def _value_bytes(x) -> bytes:
    """One feast.types.Value message (fields as numbered in Value.proto)."""
    if x is None:
        return b""
    if isinstance(x, bool):
        return b"\x38\x01" if x else b"\x38\x00"
    if isinstance(x, int):
        return b"\x20" + _varint(x)
    if isinstance(x, float):
        return b"\x29" + struct.pack("<d", x)
    if isinstance(x, str):
        return _field(0x12, x.encode())
    if isinstance(x, list):  # double_list_val = 15: DoubleList{ packed doubles }
        data = struct.pack(f"<{len(x)}d", *[float(v) for v in x if v is not None])
        return _field(0x7A, _field(0x0A, data) if data else b"")
    raise TypeError(f"cannot encode {type(x).__name__} as a feast.types.Value")


def _values_field(vals: list) -> bytes:
    """FeatureVector.values (field 1, repeated Value) for one column."""
    if vals and set(map(type, vals)) == {float}:  # PERF: C-level type scan
        cells = np.empty(len(vals), dtype=_DOUBLE_CELL)
        cells["tag"], cells["len"], cells["vtag"] = 0x0A, 9, 0x29
        cells["v"] = vals
        return cells.tobytes()
    return b"".join([_field(0x0A, _value_bytes(v)) for v in vals])


def _timestamp_bytes(iso: str | None) -> bytes:
    if not iso:
        return b""
    ts = timestamp_of(iso)
    return ((b"\x08" + _varint(ts.seconds)) if ts.seconds else b"") + ((b"\x10" + _varint(ts.nanos)) if ts.nanos
                                                                        else b"")


def encode_response(out: dict) -> bytes:
    """`online_response(...)` → the serialized GetOnlineFeaturesResponse."""
    names = b"".join([_field(0x0A, n.encode()) for n in out["metadata"]["feature_names"]])
    parts = [_field(0x0A, _field(0x0A, names))]
    stamps: dict[int, bytes] = {}  # a view's timestamp list is shared by its features: encode it once
    for col in out["results"]:
        ts = col["event_timestamps"]
        enc = stamps.get(id(ts))
        if enc is None:
            enc = stamps[id(ts)] = b"".join([_field(0x1A, _timestamp_bytes(t)) for t in ts])
        statuses = b"".join(map(_STATUS_BYTE.__getitem__, col["statuses"]))
        parts.append(_field(0x12, _values_field(col["values"]) + _field(0x12, statuses) + enc))
    parts.append(b"\x18\x01")  # status = true
    return b"".join(parts)


class Servicer(pb_grpc.ServingServiceServicer):
    def __init__(self, reader, keys=None, clock=None, version: str = "fstore", forwarder=None):
        self.reader, self.keys = reader, keys
        # a node of a Kafka group: keys other nodes own are read from them (fsapp.api.forwarding)
        self.forwarder = forwarder
        self.clock = clock or (lambda: time.time_ns() // 1000)
        self.version = version

    def _authorize(self, context) -> None:
        if self.keys is None:
            return
        header = dict(context.invocation_metadata()).get("authorization")
        try:
            self.keys.verify(header, "read")
        except falcon.HTTPError as e:
            context.abort(_CODE_OF_HTTP.get(int(str(e.status)[:3]), grpc.StatusCode.UNAUTHENTICATED),
                          f"{e.title}: {e.description}")

    def GetFeastServingInfo(self, request, context):
        self._authorize(context)
        return pb.GetFeastServingInfoResponse(version=self.version)

    def GetOnlineFeatures(self, request, context):
        self._authorize(context)
        try:
            kind = request.WhichOneof("kind")
            if kind is None:
                raise BadRequest("send `features` (view:feature references) or `feature_service`")
            if not request.entities and not request.request_context:
                raise BadRequest("`entities` is empty: give each entity key column its values")
            entities = {name: entity_values(name, rv) for name, rv in request.entities.items()}
            for name, rv in request.request_context.items():  # on-demand features' request columns
                if name in entities:
                    raise BadRequest(f"{name!r} is both an entity key and a request_context column")
                entities[name] = request_values(name, rv)
            features = list(request.features.val) if kind == "features" else None
            service = request.feature_service if kind == "feature_service" else None
            out = self.reader.get_online_features(features, service, entities, now=self.clock(),
                                                  full_feature_names=request.full_feature_names)
            remote = self.forwarder.plan(entities) if self.forwarder is not None else None
            if remote:
                # lists of their own: the reader shares one timestamp list among a view's features
                out = {"metadata": out["metadata"],
                       "results": [{k: list(v) for k, v in col.items()} for col in out["results"]]}
                auth = dict(context.invocation_metadata()).get("authorization")
                self.forwarder.fill(out, remote, (features, service, entities, None, request.full_feature_names),
                                    auth)
            return encode_response(out)  # bytes: registered with no response serializer (make_server)
        except BadRequest as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Exception as e:  # noqa: BLE001 - mapped like the REST API's errors, or INTERNAL
            code, detail = _code_of(e)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("GetOnlineFeatures failed")
            context.abort(code, detail)


def _code_of(e: Exception) -> tuple:
    for cls, status, title in api_errors._STATUS_OF:
        if isinstance(e, cls):
            return _CODE_OF_HTTP.get(int(status[:3]), grpc.StatusCode.INTERNAL), f"{title}: {e}"
    return grpc.StatusCode.INTERNAL, "the server failed on this request; the log has the details"


def make_server(reader, address: str, *, keys=None, threads: int = 8, reuse_port: bool = True, forwarder=None):
    """A started-able grpc.Server with the serving and health services."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads),
                         options=[("grpc.so_reuseport", 1 if reuse_port else 0)])
    from fsapp.cli import version
    servicer = Servicer(reader, keys, version=f"fstore {version()}", forwarder=forwarder)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {
        "GetFeastServingInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetFeastServingInfo, request_deserializer=pb.GetFeastServingInfoRequest.FromString,
            response_serializer=pb.GetFeastServingInfoResponse.SerializeToString),
        "GetOnlineFeatures": grpc.unary_unary_rpc_method_handler(
            servicer.GetOnlineFeatures, request_deserializer=pb.GetOnlineFeaturesRequest.FromString,
            response_serializer=None),  # the servicer writes the wire bytes itself (encode_response)
    })])
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen for gRPC on {address} (in use by another program?)")
    return server


class _EngineCluster:
    """The engine's GET /api/v1/cluster document, over its socket (what the
    read forwarder needs to know the owners)."""

    def __init__(self, socket_path: str):
        from fsapp.serve.protocol import EngineClient

        self.client = EngineClient(socket_path)

    def cluster(self) -> dict:
        result, _ = self.client.call("backend", b"", method="cluster", kwargs={})
        return result


def main(argv=None) -> int:
    from fsapp.registry.repo import Repo
    from fsapp.api.auth import ApiKeys, api_keys_for
    from fsapp.serve.reader import OnlineReader

    ap = argparse.ArgumentParser(prog="python -m fsapp.grpc.server")
    ap.add_argument("--repo", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=DEFAULT_GRPC_PORT)
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    repo = Repo(args.repo)
    keys = api_keys_for(repo)
    reader = OnlineReader(str(repo.data_dir / "engine"), str(repo.registry_path))
    forwarder = None
    if ((repo.config.get("kafka") or {}).get("assign")) == "group":
        from fsapp.api.forwarding import ReadForwarder
        from fsapp.serve.supervisor import socket_path_for
        forwarder = ReadForwarder(_EngineCluster(socket_path_for(repo)))
    server = make_server(reader, f"{args.host}:{args.port}", keys=ApiKeys(keys) if keys else None,
                         threads=args.threads, forwarder=forwarder)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    print(f"fstore grpc: pid {os.getpid()} serving {SERVICE} on {args.host}:{args.port}", file=sys.stderr, flush=True)
    stop.wait()
    server.stop(5).wait()
    reader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
