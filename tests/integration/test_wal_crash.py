"""kill -9 loops: a child writes at fsync="always" and reports every
acknowledged write over a pipe; the parent SIGKILLs it at a random moment,
recovers, and checks that no acknowledged write was lost, none was applied
twice, and the recovered state equals a reference model of what was recovered
(acknowledged ⊆ recovered ⊆ sent)."""
import json
import os
import random
import signal
import threading
import time

import numpy as np
import pytest

from fscore.durable import DurableTable
from fscore.schema import Schema
from fscore.table_ref import RefTable
from fscore.wal import Wal, read_log

SCHEMA = Schema(keys=[("k", "int64")], columns=[("n", "int64"), ("tag", "string", 12)])
KEYS = np.arange(32, dtype=np.int64)
CAPACITY = 64


def child_ops(seed):
    """The child's writes: (op, keys, values); the parent rebuilds them from the message."""
    rng = random.Random(seed)
    while True:
        keys = rng.sample(range(len(KEYS)), rng.randint(1, 4))
        if rng.random() < 0.85:
            yield {"op": "put", "keys": keys, "n": [rng.randrange(10**6) for _ in keys],
                   "tag": [f"t{rng.randrange(999)}" for _ in keys]}
        else:
            yield {"op": "del", "keys": keys}


def run_child(path, seed, wfd, checkpoint_every):
    """Child body: never returns (os._exit)."""
    try:
        dt = DurableTable.open(path, SCHEMA, capacity=CAPACITY, segment_bytes=8192)
        lsn = dt.last_lsn
        os.write(wfd, f"R {lsn}\n".encode())
        for i, op in enumerate(child_ops(seed)):
            lsn += 1
            # "sent" before the append: may or may not survive the kill.
            os.write(wfd, f"S {lsn} {json.dumps(op)}\n".encode())
            keys = np.array(op["keys"], dtype=np.int64)
            if op["op"] == "put":
                got = dt.put_batch(keys, {"n": np.array(op["n"]), "tag": np.array(op["tag"], dtype=object)},
                                   np.full(len(keys), lsn), now=lsn)
            else:
                got = dt.delete_batch(keys)
            assert got == lsn, (got, lsn)
            os.write(wfd, f"A {lsn}\n".encode())  # acknowledged: must survive
            if checkpoint_every and i % checkpoint_every == checkpoint_every - 1:
                dt.checkpoint(background=True)
    except BaseException as e:  # pragma: no cover - reported to the parent
        os.write(wfd, f"E {e!r}\n".encode()[:4000])
    os._exit(1)


def read_all(fd):
    chunks = []
    while True:
        b = os.read(fd, 65536)
        if not b:
            return b"".join(chunks).decode()
        chunks.append(b)


def apply_to_model(model, op, lsn):
    keys = np.array(op["keys"], dtype=np.int64)
    if op["op"] == "put":
        model.put_batch(keys, {"n": np.array(op["n"]), "tag": np.array(op["tag"], dtype=object)},
                        np.full(len(keys), lsn), now=lsn)
    else:
        model.delete_batch(keys)


def kill_loop(path, cycles, seed, max_delay=0.12):
    rng = random.Random(seed)
    sent = {}  # lsn -> op, of the current timeline
    acked_ever = 0
    for cycle in range(cycles):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(r)
            run_child(path, seed * 1000 + cycle, w, checkpoint_every=rng.choice([0, 7, 25]))
        os.close(w)
        out = []
        reader = threading.Thread(target=lambda: out.append(read_all(r)))
        reader.start()
        time.sleep(rng.uniform(0.01, max_delay))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        reader.join()
        os.close(r)
        lines = out[0].splitlines()
        assert not [l for l in lines if l.startswith("E ")], f"child failed: {lines[-3:]} (seed {seed})"
        acked = [int(l.split()[1]) for l in lines if l.startswith("A ")]
        for l in lines:
            if l.startswith("S "):
                _, lsn, op = l.split(" ", 2)
                sent[int(lsn)] = json.loads(op)  # a retried LSN replaces a lost one
        with DurableTable.open(path, SCHEMA, capacity=CAPACITY, segment_bytes=8192) as dt:
            recovered = dt.last_lsn
            if acked:
                assert recovered >= max(acked), f"acknowledged LSN {max(acked)} lost (cycle {cycle}, seed {seed})"
            assert recovered >= acked_ever and recovered <= max(sent, default=0)
            acked_ever = max([acked_ever] + acked)
            for lsn in [l for l in sent if l > recovered]:
                del sent[lsn]  # never recovered: the next child reuses the LSN
            assert dt.replayed == recovered - dt.checkpoint_lsn  # each record applied once
            model = RefTable(SCHEMA, capacity=CAPACITY)
            for lsn in range(1, recovered + 1):
                apply_to_model(model, sent[lsn], lsn)
            got, want = dt.get_batch(KEYS, 10**9), model.get_batch(KEYS, 10**9)
            np.testing.assert_array_equal(got.status, want.status, err_msg=f"cycle {cycle} seed {seed}")
            present = want.status == 1
            np.testing.assert_array_equal(got.values["n"][present], want.values["n"][present])
            np.testing.assert_array_equal(got.values["tag"][present], want.values["tag"][present])
            # The log itself: consecutive LSNs, no duplicates.
            lsns = [lsn for lsn, _, _ in read_log(os.path.join(path, "wal"), dt.checkpoint_lsn)]
            assert lsns == list(range(dt.checkpoint_lsn + 1, recovered + 1))
    return acked_ever


@pytest.fixture
def crash_seed(seed):
    return seed


def test_kill9_loses_no_acknowledged_write(tmp_path, crash_seed):
    acked = kill_loop(str(tmp_path / "store"), cycles=50, seed=crash_seed)
    assert acked > 50, "children acknowledged too few writes to test anything"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_kill9_loses_no_acknowledged_write_many_cycles(tmp_path, crash_seed):
    kill_loop(str(tmp_path / "store"), cycles=400, seed=crash_seed, max_delay=0.3)


def wal_child(path, wfd, n_threads, cycle, **wal_kw):
    """Several threads append concurrently (group commit) and report acks."""
    try:
        w = Wal(path, segment_bytes=16384, **wal_kw)

        def appender(t):
            for i in range(10**9):
                payload = f"{cycle}:{t}:{i}".encode()
                os.write(wfd, b"S " + payload + b"\n")
                w.append(1, payload)
                os.write(wfd, b"A " + payload + b"\n")

        threads = [threading.Thread(target=appender, args=(t,)) for t in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    except BaseException as e:  # pragma: no cover
        os.write(wfd, f"E {e!r}\n".encode())
    os._exit(1)


@pytest.mark.parametrize("wal_kw", [{}, {"max_syncers": 1}, {"max_syncers": 8, "commit_delay_us": 50}],
                         ids=["default", "serial", "overlap8"])
def test_kill9_during_group_commit_loses_no_acknowledged_record(tmp_path, seed, wal_kw):
    rng = random.Random(seed)
    path = str(tmp_path / "wal")
    sent, acked = set(), set()
    for cycle in range(12):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(r)
            wal_child(path, w, 4, cycle, **wal_kw)
        os.close(w)
        out = []
        reader = threading.Thread(target=lambda: out.append(read_all(r)))
        reader.start()
        time.sleep(rng.uniform(0.02, 0.1))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        reader.join()
        os.close(r)
        lines = out[0].splitlines()
        assert not [l for l in lines if l.startswith("E ")], lines[-3:]
        sent |= {l[2:] for l in lines if l.startswith("S ")}
        acked |= {l[2:] for l in lines if l.startswith("A ")}
        Wal(path).close()  # recover (truncate a torn tail) like a restart would
    recovered = [p.decode() for _, _, p in read_log(path)]
    assert len(set(recovered)) == len(recovered), f"a record was recovered twice (seed {seed})"
    assert acked <= set(recovered), f"lost acknowledged records: {sorted(acked - set(recovered))[:5]} (seed {seed})"
    assert set(recovered) <= sent
    assert len(acked) > 100, "children acknowledged too few records to test anything"
