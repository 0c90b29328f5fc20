"""gRPC serving: `fstore serve`'s gRPC port (2 processes, Feast's
ServingService) against its REST port (2 gunicorn workers) at the same fixed
request rates, and against the gRPC floor: a bare grpcio server (2 processes
on one port, the same method name) returning a fixed, pre-encoded response
of the same size without a lookup. 1 entity x 50 features and 100 x 50, the
data of bench_serving (1,000 entities, 50 DOUBLE features).

Open loop: requests are sent at the offered rate whether or not earlier ones
have answered (gRPC: the stub's futures from one client thread; REST:
benches/loadgen.py), so a slow server shows up as latency, not as a lower
rate. Everything shares the machine's 2 cores with the load generator.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benches._common import Row
from benches.bench_serving import (FEATURES, HOST, N_ENTITIES, N_FEATURES, defs_sql, free_port, log, post_json,
                                   read_body, stop, wait_http)
from benches.loadgen import run_open_loop

FLOOR_PY = r"""
import sys, time, signal, threading
from concurrent import futures
import grpc
body = open(sys.argv[2], "rb").read()
def handler(request, context):
    return body
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 1)])
server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("feast.serving.ServingService", {
    "GetOnlineFeatures": grpc.unary_unary_rpc_method_handler(handler, request_deserializer=None,
                                                             response_serializer=None)})])
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
stop.wait()
"""


def _grpc_request(n: int):
    from fsapp.grpc.protos.feast.serving import ServingService_pb2 as pb
    from fsapp.grpc.protos.feast.types import Value_pb2 as vpb
    return pb.GetOnlineFeaturesRequest(
        features=pb.FeatureList(val=FEATURES),
        entities={"user_id": vpb.RepeatedValue(val=[vpb.Value(int64_val=u) for u in range(n)])})


def _open_loop_grpc(port: int, n: int, rate: float, duration: float, warmup: float = 0.5):
    import grpc

    from fsapp.grpc.protos.feast.serving import ServingService_pb2_grpc as pb_grpc
    req = _grpc_request(n)
    lat, errors = [], []
    with grpc.insecure_channel(f"{HOST}:{port}") as ch:
        stub = pb_grpc.ServingServiceStub(ch)
        stub.GetOnlineFeatures(req, timeout=10)  # connect
        pending = []
        total = int(rate * (duration + warmup))
        t0 = time.perf_counter()
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            fut = stub.GetOnlineFeatures.future(req, timeout=10)
            keep = i >= rate * warmup

            def done(f, start=due, keep=keep):  # latency from the scheduled send time (no coordinated omission)
                if f.exception() is not None:
                    errors.append(f.exception())
                elif keep:
                    lat.append(time.perf_counter() - start)
            fut.add_done_callback(done)
            pending.append(fut)
        for f in pending:
            try:
                f.result(timeout=15)
            except Exception:  # noqa: BLE001 - counted in the callback
                pass
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")  # noqa: E731
    return pick(0.5), pick(0.99), len(errors)


def run(quick: bool) -> list[Row]:
    from fsapp.registry.repo import Repo

    work = Path(tempfile.mkdtemp(prefix="fstore-bench-grpc-"))
    rates = {1: 200, 100: 50} if quick else {1: 500, 100: 100}
    duration = 3.0 if quick else 8.0
    now = time.time()
    data = [dict({"user_id": u, "ts": now - 60}, **{f"f{i}": u + i / 100 for i in range(N_FEATURES)})
            for u in range(N_ENTITIES)]
    procs = []
    try:
        root = work / "repo"
        root.mkdir()
        (root / "fstore.yaml").write_text("project: grpcbench\nregistry: data/registry.db\ndata_dir: data\n")
        (root / "defs.sql").write_text(defs_sql())
        Repo(root).apply()
        port, gport = free_port(), free_port()
        proc = subprocess.Popen([sys.executable, "-m", "fsapp.cli", "serve", "--repo", str(root), "--port", str(port),
                                 "--workers", "2", "--grpc-port", str(gport), "--grpc-workers", "2"],
                                stdout=open(work / "serve.log", "w"), stderr=subprocess.STDOUT)
        procs.append(proc)
        wait_http(port, "/health", proc, 120, "fstore serve")
        for i in range(0, len(data), 250):
            status, _, body = post_json(port, "/api/v1/push", {"stream": "s", "rows": data[i:i + 250]})
            assert status == 200, body[:300]
        deadline = time.monotonic() + 60
        import grpc

        from fsapp.grpc.protos.feast.serving import ServingService_pb2_grpc as pb_grpc
        while True:
            try:
                with grpc.insecure_channel(f"{HOST}:{gport}") as ch:
                    floor_body = pb_grpc.ServingServiceStub(ch).GetOnlineFeatures(
                        _grpc_request(1), timeout=2).SerializeToString()
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        rows = []
        for n, rate in rates.items():
            with grpc.insecure_channel(f"{HOST}:{gport}") as ch:
                body = pb_grpc.ServingServiceStub(ch).GetOnlineFeatures(_grpc_request(n)).SerializeToString()
            (work / f"floor{n}.bin").write_bytes(body)
            fport = free_port()
            (work / "floor.py").write_text(FLOOR_PY)
            floors = [subprocess.Popen([sys.executable, str(work / "floor.py"), str(fport), str(work / f"floor{n}.bin")])
                      for _ in range(2)]
            procs += floors
            time.sleep(1.5)
            g50, g99, gerr = _open_loop_grpc(gport, n, rate, duration)
            f50, f99, ferr = _open_loop_grpc(fport, n, rate, duration)
            rest = run_open_loop(HOST, port, "/get-online-features", read_body(n), rate, duration)
            log(f"grpc {n}x50 @ {rate}/s: ours p50 {g50:.2f} p99 {g99:.2f} ms ({gerr} errors); floor p50 {f50:.2f} "
                f"p99 {f99:.2f}; REST p50 {rest.p50:.2f} p99 {rest.p99:.2f} ({len(body)} B protobuf)")
            rows += [
                Row("grpc", f"{n}x50 GetOnlineFeatures p50 @ {rate}/s", g50, "bare grpcio, fixed response", f50, "ms",
                    "lower"),
                Row("grpc", f"{n}x50 GetOnlineFeatures p99 @ {rate}/s", g99, "bare grpcio, fixed response", f99, "ms",
                    "lower", "within 1.3x"),
                Row("grpc", f"{n}x50 gRPC p99 vs REST p99 @ {rate}/s", g99, "fstore REST /get-online-features",
                    rest.p99, "ms", "lower"),
            ]
            for f in floors:
                stop(f)
        return rows
    finally:
        for p in procs:
            stop(p)


if __name__ == "__main__":
    for r in run(quick=True):
        print(r, f"ratio={r.ratio:.2f}")
