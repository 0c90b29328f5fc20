"""Open-loop HTTP load generator (no dependencies beyond the standard library).

Requests are scheduled at fixed intended times t0 + i/rate; a pool of threads
takes the next slot, sleeps until its intended time and sends it. Latency is
measured from the *intended* send time, so a stalled server (or a load
generator that fell behind) shows up in the percentiles instead of silently
lowering the offered rate (no coordinated omission, as in wrk2). The pool
bounds the requests in flight; a slot that has to wait for a free thread is
still timed from its intended time.

HTTP/1.1 over raw sockets: keep-alive when the server keeps the connection
open (uvicorn), a new connection per request when it answers
`Connection: close` (gunicorn sync workers) — every target is measured as is.
Loopback only; bounded in count (rate * duration) and in time (a hard
deadline; slots not answered by then count as failed, at the deadline).
"""
from __future__ import annotations

import itertools
import math
import socket
import sys
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Result:
    rate: float             # offered, requests/s
    duration: float         # scheduled seconds
    sent: int = 0
    ok: int = 0
    errors: int = 0         # non-2xx, socket errors, timeouts
    unsent: int = 0         # slots never sent before the hard deadline
    latencies: list = field(default_factory=list)  # seconds from intended send time, successes only
    send_lag: list = field(default_factory=list)   # actual - intended send time, seconds
    wall: float = 0.0
    first_error: str = ""

    def pct(self, q: float) -> float:
        """q-quantile in ms; failures (errors, unsent) count as +inf latency."""
        n_fail = self.errors + self.unsent
        total = len(self.latencies) + n_fail
        if total == 0:
            return math.nan
        k = min(total - 1, max(0, math.ceil(q * total) - 1))
        if k >= len(self.latencies):
            return math.inf
        return sorted(self.latencies)[k] * 1e3

    @property
    def p50(self): return self.pct(0.50)
    @property
    def p99(self): return self.pct(0.99)
    @property
    def p999(self): return self.pct(0.999)

    @property
    def achieved(self) -> float:
        return self.ok / self.wall if self.wall else 0.0

    def lag_ms(self, q: float) -> float:
        if not self.send_lag:
            return math.nan
        s = sorted(self.send_lag)
        return s[min(len(s) - 1, int(q * len(s)))] * 1e3

    @classmethod
    def pooled(cls, parts: list["Result"]) -> "Result":
        """Several runs at one rate as one: their samples together (the
        percentiles of all of them, not an average of percentiles)."""
        out = cls(rate=parts[0].rate, duration=sum(p.duration for p in parts))
        for p in parts:
            if p.rate != out.rate:
                raise ValueError("pooled runs must have the same rate")
            out.sent += p.sent
            out.ok += p.ok
            out.errors += p.errors
            out.unsent += p.unsent
            out.latencies += p.latencies
            out.send_lag += p.send_lag
            out.wall += p.wall
            out.first_error = out.first_error or p.first_error
        return out

    def summary(self) -> str:
        return (f"rate {self.rate:>6.0f}/s sent {self.sent} ok {self.ok} err {self.errors} unsent {self.unsent} "
                f"p50 {self.p50:.2f} p99 {self.p99:.2f} p99.9 {self.p999:.2f} ms; "
                f"send lag p50 {self.lag_ms(.5):.2f} p99 {self.lag_ms(.99):.2f} ms"
                + (f"; first error: {self.first_error}" if self.first_error else ""))


def build_request(host: str, port: int, method: str, path: str, body: bytes = b"",
                  content_type: str = "application/json") -> bytes:
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: keep-alive\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class Conn:
    """One HTTP/1.1 connection; reconnects when the server closed it."""

    def __init__(self, host: str, port: int, timeout: float):
        self.addr, self.timeout = (host, port), timeout
        self.sock: socket.socket | None = None

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def request(self, raw: bytes) -> tuple[int, dict, bytes]:
        if self.sock is None:
            s = socket.create_connection(self.addr, timeout=self.timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = s
        s = self.sock
        s.sendall(raw)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection before answering")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            need = int(headers["content-length"])
            parts, have = [rest], len(rest)
            while have < need:
                chunk = s.recv(max(65536, need - have))
                if not chunk:
                    raise ConnectionError("short body")
                parts.append(chunk)
                have += len(chunk)
            body = b"".join(parts)
        else:  # read to close (chunked is not used by any target here)
            parts = [rest]
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                parts.append(chunk)
            body = b"".join(parts)
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body


def request_once(host: str, port: int, method: str, path: str, body: bytes = b"", timeout: float = 30.0):
    c = Conn(host, port, timeout)
    try:
        return c.request(build_request(host, port, method, path, body))
    finally:
        c.close()


def run_open_loop(host: str, port: int, path: str, body: bytes, rate: float, duration: float, *,
                  threads: int = 32, timeout: float = 5.0, grace: float = 5.0, warmup: float = 0.5,
                  method: str = "POST") -> Result:
    """Offer `rate` requests/s for `duration` s (after `warmup` s whose results
    are dropped). Hard deadline: duration + warmup + grace seconds."""
    raw = build_request(host, port, method, path, body)
    n_warm = int(rate * warmup)
    n_total = n_warm + max(1, int(rate * duration))
    res = Result(rate=rate, duration=duration)
    slots = itertools.count()  # next() is atomic under the GIL
    lock = threading.Lock()
    t0 = time.perf_counter() + 0.05
    deadline = t0 + warmup + duration + grace
    interval = 1.0 / rate
    measured_from = t0 + n_warm * interval

    def worker():
        conn = Conn(host, port, timeout)
        lat, lag, ok, err, sent, first_err = [], [], 0, 0, 0, ""
        while True:
            i = next(slots)
            if i >= n_total:
                break
            intended = t0 + i * interval
            now = time.perf_counter()
            if now >= deadline:
                break
            if intended > now:
                time.sleep(intended - now)
            start = time.perf_counter()
            try:
                conn.sock is not None and conn.sock.settimeout(max(0.01, min(timeout, deadline - start)))
                status, _, _ = conn.request(raw)
                done = time.perf_counter()
                good = 200 <= status < 300
                if not good and not first_err:
                    first_err = f"HTTP {status}"
            except (OSError, ValueError, IndexError) as e:
                conn.close()
                done, good = time.perf_counter(), False
                if not first_err:
                    first_err = f"{type(e).__name__}: {e}"
            if i >= n_warm:
                sent += 1
                lag.append(start - intended)
                if good:
                    ok += 1
                    lat.append(done - intended)
                else:
                    err += 1
        conn.close()
        with lock:
            res.latencies.extend(lat)
            res.send_lag.extend(lag)
            res.ok += ok
            res.errors += err
            res.sent += sent
            if first_err and not res.first_error:
                res.first_error = first_err

    old = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # a thread woken by its socket gets the GIL quickly
    try:
        ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(max(0.0, deadline + timeout + 1 - time.perf_counter()))
    finally:
        sys.setswitchinterval(old)
    res.wall = max(1e-9, min(time.perf_counter(), deadline) - measured_from)
    res.unsent = max(0, (n_total - n_warm) - res.sent)
    return res


def wait_quiet(host: str, port: int, path: str, body: bytes, limit_s: float = 20.0, ok_ms: float = 50.0) -> None:
    """After an overload, wait until a single request is answered quickly again
    (the server drained its backlog), so the next measurement starts clean."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        t = time.perf_counter()
        try:
            request_once(host, port, "POST", path, body, timeout=limit_s)
        except OSError:
            pass
        if (time.perf_counter() - t) * 1e3 < ok_ms:
            return
        time.sleep(0.2)
