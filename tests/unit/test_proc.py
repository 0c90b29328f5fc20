"""fscore.proc.fork_task: what a checkpoint's forked child relies on."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fscore.proc import ForkedTaskError, fork_task, pid_alive


def test_the_child_sees_memory_as_it_was_at_the_fork(tmp_path):
    state = {"v": 1}
    out = tmp_path / "seen"
    task = fork_task(lambda: (time.sleep(0.2), out.write_text(str(state["v"]))))
    state["v"] = 2  # the parent changes its state at once
    task.wait()
    assert out.read_text() == "1"


def test_an_exception_in_the_child_is_the_parents_error():
    with pytest.raises(ForkedTaskError, match="ValueError: bad blob"):
        fork_task(lambda: (_ for _ in ()).throw(ValueError("bad blob"))).wait()
    with pytest.raises(ForkedTaskError, match="killed by signal 9"):
        fork_task(lambda: os.kill(os.getpid(), signal.SIGKILL)).wait()


def test_the_child_dies_with_its_parent(tmp_path):
    """kill -9 of the engine while its child writes a checkpoint must not leave
    the child running (it would hold memory and write a file nobody commits)."""
    pidfile = tmp_path / "child.pid"
    script = textwrap.dedent(f"""
        import os, time
        from fscore.proc import fork_task
        task = fork_task(lambda: (open({str(pidfile)!r}, "w").write(str(os.getpid())), time.sleep(60)))
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        for _ in range(200):
            if pidfile.exists() and pidfile.read_text():
                break
            time.sleep(0.05)
        child = int(pidfile.read_text())
        assert pid_alive(child)
    finally:
        parent.kill()
        parent.wait()
    for _ in range(100):
        if not pid_alive(child):
            break
        time.sleep(0.05)
    assert not pid_alive(child)


def test_the_child_does_not_collect_the_parents_garbage():
    """A forked checkpoint child died of SIGSEGV now and then (the engine state machine, fork mode):
    a cycle of the parent's garbage holding a DuckDB connection (e.g. through an exception's
    traceback) was collected by the child's GC, and DuckDB's destructor crashed without its
    threads. The child runs with the GC off (it writes a file and exits)."""
    import gc

    import duckdb
    was = gc.isenabled()
    gc.disable()  # the cycle stays in the youngest generation until the child's first collection
    try:
        for _ in range(3):
            con = duckdb.connect()
            con.execute("SELECT sum(i) FROM range(3000000) t(i)").fetchall()  # its worker threads ran
            cycle = [con, con.cursor()]
            cycle.append(cycle)
            del con, cycle

            def allocate():  # what a child's encoding does: allocations that would trigger collections
                junk = [[i, {}] for i in range(50_000)]
                assert len(junk) == 50_000 and not gc.isenabled()
            gc.enable()  # as in the engine: on, with the cycle not collected yet
            try:
                fork_task(allocate).wait()
            finally:
                gc.disable()
    finally:
        gc.collect()
        if was:
            gc.enable()
