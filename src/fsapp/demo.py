"""`fstore demo`: the whole product on a temporary repo, in under a minute.

1. a card-fraud repo (`init_repo`: SQL DSL + Python API definitions, a
   profile table), applied to the registry;
2. a realistic transaction stream: Zipf-skewed users and merchants, events
   arriving out of order within the stream's 5-minute allowed lateness, and
   a few arriving later than that (how many the engine will count late is
   computed by its documented rule, and checked against its count);
3. `fstore serve` as a subprocess on a free loopback port (engine process +
   gunicorn workers);
4. the events pushed over HTTP with `fsapp.Client`, one user's features
   shown changing as they arrive, each with the window it reads (a sliding
   count stays 0 until the replayed events enter its last closed hour, and
   lags the newest events by up to a hop), and that count checked against
   the generated events in its window;
5. the engine killed with SIGKILL: the supervisor restarts it, it recovers
   from checkpoint + WAL, and reads as of a fixed time are unchanged;
6. a point-in-time training set (labels at several times) over HTTP;
7. serving latency percentiles measured from the client;
8. SIGTERM, and a check that no process is left behind.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

from fscore.proc import pid_alive

MIN_US = 60_000_000
HOUR_US = 60 * MIN_US
DAY_US = 24 * HOUR_US
LATENESS_US = 5 * MIN_US  # the starter repo's transactions stream: allowed_lateness = '5m'
USER_FEATURES = ["user_txn:txn_count_1h", "user_txn:amount_24h", "user_txn:distinct_merchants_1d",
                 "user_txn:last_5_amounts"]
COUNTRIES = np.array(["US", "US", "US", "US", "DE", "FR", "GB", "BR"], dtype=object)


def align(t: int, hop: int) -> int:
    return t - t % hop


def window_bounds(t: int) -> dict[str, tuple[int, int]]:
    """The event-time range [lo, hi) each shown feature of user_txn reads as
    of `t` (docs/semantics.md §2): sliding windows end at the last closed
    hop, continuous ones at t."""
    return {"txn_count_1h": (align(t, 5 * MIN_US) - HOUR_US, align(t, 5 * MIN_US)),     # sliding('1h', '5m')
            "amount_24h": (align(t - DAY_US, HOUR_US), t),                               # continuous('24h', '1h')
            "distinct_merchants_1d": (align(t, HOUR_US) - DAY_US, align(t, HOUR_US))}    # sliding('1d', '1h')


def late_by_the_rule(ts: np.ndarray, lateness: int) -> np.ndarray:
    """Which events, in arrival order, the engine counts late (docs/semantics.md
    §4): ts < W - L, W the largest ts of the stream's events before it."""
    before = np.maximum.accumulate(np.concatenate([[np.iinfo(np.int64).min], ts]))[:-1]
    return (before != np.iinfo(np.int64).min) & (ts < before - lateness)


def hhmm(us: int, seconds: bool = False) -> str:
    return time.strftime("%H:%M:%S" if seconds else "%H:%M", time.gmtime(us / 1e6))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zipf_keys(rng, n: int, universe: int, s: float) -> np.ndarray:
    """n draws from 1..universe with P(rank k) ∝ 1/k^s (a few hot keys, a long tail)."""
    p = 1.0 / np.arange(1, universe + 1) ** s
    return rng.choice(np.arange(1, universe + 1), size=n, p=p / p.sum())


def make_events(rng, n: int, now: int, users: int = 5_000, merchants: int = 300) -> tuple[dict, dict]:
    """Transactions over the last two hours, in arrival order. Most arrive up
    to 4 minutes after their event time (out of order, within the lateness);
    0.5% arrive 8-20 minutes late. Which of those the engine counts late (not
    applied online, logged offline) is `late_by_the_rule`: a delay beyond 5
    minutes is not enough when no newer event has arrived yet."""
    ts = np.sort(rng.integers(now - 2 * HOUR_US, now - 1_000_000, n))
    delay = np.minimum(rng.exponential(40e6, n), 4 * MIN_US).astype(np.int64)
    very_late = rng.random(n) < 0.005
    delay[very_late] = rng.integers(8 * MIN_US, 20 * MIN_US, int(very_late.sum()))
    order = np.argsort(ts + delay, kind="stable")
    user = zipf_keys(rng, n, users, 0.8)[order]
    merchant_rank = zipf_keys(rng, n, merchants, 1.3)[order]
    ev = {"user_id": user.tolist(),
          "merchant_id": [f"m{m:04d}" for m in merchant_rank],
          "amount": np.round(rng.lognormal(3.2, 1.0, n), 2)[order].tolist(),
          "currency": ["USD"] * n,
          "country": COUNTRIES[rng.integers(0, len(COUNTRIES), n)].tolist(),
          "is_online": (rng.random(n) < 0.4).tolist(),
          "ts": ts[order].tolist()}
    arrival_ts = ts[order]
    late = late_by_the_rule(arrival_ts, LATENESS_US)
    stats = {"out_of_order": int((arrival_ts < np.maximum.accumulate(arrival_ts)).sum()),
             "delayed_8m": int(very_late.sum()), "late": int(late.sum()), "late_mask": late,
             "top_user_share": float(np.mean(user == 1)), "top_merchant_share": float(np.mean(merchant_rank == 1))}
    return ev, stats


def pct(xs, q) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3 if xs else float("nan")


class Server:
    """`fstore serve` as a subprocess, its log in a file we can read."""

    def __init__(self, repo: str, root: str, port: int, workers: int):
        self.log_path = os.path.join(root, "serve.log")
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fsapp.cli", "serve", "--repo", repo, "--port", str(port), "--workers",
             str(workers), "--fsync", "always", "--grpc-port", "0"], stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"

    def text(self) -> str:
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def pids(self, name: str) -> list[int]:
        return [int(p) for p in re.findall(rf"{name} pid (\d+)", self.text())]

    def wait_healthy(self, client, timeout: float = 90.0) -> None:
        from fsapp.sdk.errors import ServiceUnavailable

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fstore serve exited with code {self.proc.returncode}:\n{self.text()[-2000:]}")
            try:
                client.health()
                return
            except ServiceUnavailable:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"fstore serve did not answer within {timeout:.0f}s:\n{self.text()[-2000:]}")
                time.sleep(0.2)

    def stop(self) -> float:
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return time.monotonic() - t0


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v if x is not None) + "]"
    return str(v)


def run_demo(events: int = 20_000, keep: str | None = None, workers: int = 2, crash: bool = True, out=None,
             seed: int = 7) -> int:
    from fsapp.registry.repo import Repo
    from fsapp.registry.scaffold import init_repo, write_user_profiles
    from fsapp.sdk import Client
    from fsapp.sdk.errors import ServiceUnavailable

    say = (lambda *a: print(*a, file=out, flush=True)) if out else (lambda *a: None)
    if keep and os.path.exists(os.path.join(keep, "repo")):
        say(f"fstore demo: {keep}/repo already exists; pass a new directory to --keep")
        return 1
    root = keep or tempfile.mkdtemp(prefix="fstore-demo-")
    os.makedirs(root, exist_ok=True)
    repo_dir = os.path.join(root, "repo")
    rng = np.random.default_rng(seed)
    server = None
    failures = []
    started = time.monotonic()
    try:
        say(f"fstore demo in {root}")
        # ---- 1. the repo
        init_repo(repo_dir, project="fraud_demo")
        now = time.time_ns() // 1000
        # the starter data has 1,000 profiles; the demo's stream has 5,000 users
        write_user_profiles(os.path.join(repo_dir, "data", "user_profiles.parquet"), 5_000, now, seed=seed)
        plan, _ = Repo(repo_dir).apply()
        added = [c for c in plan.changes if c.action == "add"] if hasattr(plan, "changes") else []
        say(f"1. repo: features.sql (SQL DSL) + profiles.py (Python API) applied"
            f"{f' ({len(added)} definitions)' if added else ''}:")
        say("   views user_txn (sliding, continuous, tumbling, session, lifetime windows), merchant_txn, "
            "user_profile (plain); service fraud_v1")

        # ---- 2. the stream
        ev, st = make_events(rng, events, now)
        say(f"2. generated {events:,} card transactions over the last 2 h: top user {st['top_user_share']:.1%} "
            f"and top merchant {st['top_merchant_share']:.1%} of events (Zipf);")
        say(f"   {st['out_of_order']:,} arrive after a later event (out of order, most by under 4 min); "
            f"{st['delayed_8m']} arrive 8-20 min after their time,")
        say(f"   and {st['late']} are more than 5 min (the stream's allowed lateness) older than the newest event "
            "before them:")
        say("   the engine will count those late (docs/semantics.md §4)")

        # ---- 3. the service
        t0 = time.monotonic()
        server = Server(repo_dir, root, free_port(), workers)
        client = Client(server.url, timeout=30)
        server.wait_healthy(client)
        say(f"3. fstore serve on {server.url}: engine + {workers} gunicorn workers, up in "
            f"{time.monotonic() - t0:.1f}s")

        # ---- 4. push over HTTP, watch user 1
        batch = max(100, events // 20)
        accepted = late = 0
        t0 = time.monotonic()
        bounds = window_bounds(time.time_ns() // 1000)
        say("4. pushing over HTTP (fsync=always), reading user 1's features (at the wall clock) as events arrive.")
        say("   Each feature counts the events of its window, as of the read (times UTC):")
        say("     txn_count_1h           count, sliding 1h by 5 min    events in [{}, {}): closed 5-min hops only, "
            "so it".format(*map(hhmm, bounds["txn_count_1h"])))
        say("                            stays 0 until the stream reaches {} and leaves out the newest 0-5 min".format(
            hhmm(bounds["txn_count_1h"][0])))
        say("     amount_24h             sum, continuous 24h           events in [{} yesterday, now): up to the read"
            .format(hhmm(bounds["amount_24h"][0])))
        say("     distinct_merchants_1d  approx distinct, sliding 1d   events in [{} yesterday, {}): closed hours only"
            .format(*map(hhmm, bounds["distinct_merchants_1d"])))
        say("     last_5_amounts         the 5 latest amounts, lifetime, newest first")
        say("   events  newest event  txn_count_1h  amount_24h  distinct_merchants_1d  last_5_amounts")
        newest = np.maximum.accumulate(np.asarray(ev["ts"]))
        for i, off in enumerate(range(0, events, batch)):
            part = {k: v[off:off + batch] for k, v in ev.items()}
            res = client.push("transactions", part)
            accepted, late = accepted + res["accepted"], late + res["late"]
            if i % 4 == 3 or off + batch >= events:
                d = client.get_online_features(USER_FEATURES, entity_rows=[{"user_id": 1}]).to_dict()
                say(f"   {off + len(part['ts']):>6,}  {hhmm(int(newest[off + len(part['ts']) - 1]), True):>12}"
                    f"  {_fmt(d['txn_count_1h'][0]):>12}  {_fmt(d['amount_24h'][0]):>10}"
                    f"  {_fmt(d['distinct_merchants_1d'][0]):>21}  {_fmt(d['last_5_amounts'][0])}")
        push_s = time.monotonic() - t0
        say(f"   accepted {accepted:,}, late {late} (logged offline, not applied online; the rule predicted "
            f"{st['late']}) in {push_s:.1f}s ({events / push_s:,.0f} events/s incl. reads)")
        if accepted + late != events:
            failures.append(f"pushed {events} events but the server acknowledged {accepted + late}")
        if late != st["late"]:
            failures.append(f"the engine counted {late} late events; the lateness rule gives {st['late']}")
        # the count by its documented window, from the generated events the engine applied
        t_check = time.time_ns() // 1000
        lo, hi = window_bounds(t_check)["txn_count_1h"]
        ts, users = np.asarray(ev["ts"]), np.asarray(ev["user_id"])
        want = int(((users == 1) & ~st["late_mask"] & (ts >= lo) & (ts < hi)).sum())
        got = client.get_online_features(USER_FEATURES[:1], entity_rows=[{"user_id": 1}], as_of=t_check).to_dict()
        say(f"   check: user 1's txn_count_1h as of {hhmm(t_check, True)} is {got['txn_count_1h'][0]}, and {want} of "
            f"its on-time events fall in [{hhmm(lo)}, {hhmm(hi)})")
        if got["txn_count_1h"][0] != want:
            failures.append(f"txn_count_1h read {got['txn_count_1h'][0]}, its window holds {want} events")
        res = client.materialize(None, "now", views=["user_profile"])
        if "user_profile" in res["views"]:
            say(f"   materialize user_profile from data/user_profiles.parquet: {res['views']['user_profile']:,} "
                "keys online")
        else:
            failures.append("materialize skipped user_profile: "
                            + (res.get("skipped") or {}).get("user_profile", "no reason given"))

        # ---- 5. crash and recovery
        if crash:
            t_fixed = time.time_ns() // 1000
            keys = {"user_id": list(range(1, 51))}
            before = client.get_online_features(USER_FEATURES[1:], entity_rows=keys, as_of=t_fixed).to_dict()
            engine_pid = server.pids("engine")[-1]
            os.kill(engine_pid, signal.SIGKILL)
            t0 = time.monotonic()
            while True:  # the supervisor restarts the engine; it replays the WAL since the last checkpoint
                try:
                    after = client.get_online_features(USER_FEATURES[1:], entity_rows=keys, as_of=t_fixed).to_dict()
                    break
                except ServiceUnavailable:
                    if time.monotonic() - t0 > 60:
                        raise RuntimeError("the engine did not come back within 60 s:\n" + server.text()[-2000:])
                    time.sleep(0.2)
            changed = sum(a != b for a, b in zip(before["amount_24h"], after["amount_24h"]))
            changed += sum(a != b for a, b in zip(before["last_5_amounts"], after["last_5_amounts"]))
            say(f"5. killed the engine (pid {engine_pid}) with SIGKILL; restarted and recovered (checkpoint + WAL) "
                f"in {time.monotonic() - t0:.1f}s;")
            say(f"   50 users' features as of the same instant, before vs after: {changed} differ; "
                f"acknowledged events lost: {0 if not changed else 'SOME'}")
            if changed:
                failures.append("features changed across the engine restart")

        # ---- 6. training set
        idx = np.flatnonzero(np.array(ev["user_id"]) == 1)
        pick = np.sort(rng.choice(idx, size=min(5, len(idx)), replace=False))
        others = rng.choice(len(ev["ts"]), size=195, replace=False)
        rows = np.concatenate([pick, others])
        amounts = np.array(ev["amount"])[rows]
        labels = {"user_id": [ev["user_id"][i] for i in rows], "merchant_id": [ev["merchant_id"][i] for i in rows],
                  "event_timestamp": [ev["ts"][i] for i in rows],  # each label as of its transaction's time
                  "amount": amounts.tolist(),
                  "is_fraud": ((amounts > 150) & (rng.random(len(rows)) < 0.3)).astype(int).tolist()}
        t0 = time.monotonic()
        # Arrow all the way: `pip install .` brings no pandas (TrainingSet.to_df() would need it)
        train = client.get_historical_features(labels, feature_service="fraud_v1", full_feature_names=True).to_arrow()
        say(f"6. point-in-time training set over HTTP (Arrow): {train.num_rows} labelled transactions x "
            f"{train.num_columns} columns in {time.monotonic() - t0:.2f}s; user 1 at five times (features use only "
            "events strictly before each label):")
        # an on-demand feature: the same definition online and here, on each label's own amount
        ctx = client.get_historical_features(labels, features=["txn_context:share_of_24h_spend"]).to_arrow()
        cols = ["event_timestamp", "is_fraud", "user_txn__txn_count_1h", "user_txn__amount_24h",
                "merchant_txn__merchant_txn_count_1h", "user_profile__age"]
        head = train.slice(0, 5).select(cols).to_pydict()
        head["amount"] = labels["amount"][:5]
        head["share"] = ctx.column("share_of_24h_spend").to_pylist()[:5]
        cols += ["amount", "share"]
        grid = [["time", "label", "txn_count_1h", "amount_24h", "merchant_txn_count_1h", "age", "amount",
                 "share_of_24h_spend (on-demand)"]]
        grid += [[t.strftime("%H:%M:%S")] + [_fmt(head[c][i]) if c != "share" or head[c][i] is None
                                             else f"{head[c][i]:.5f}" for c in cols[1:]]
                 for i, t in enumerate(head["event_timestamp"])]
        widths = [max(len(row[j]) for row in grid) for j in range(len(cols))]
        for row in grid:
            say("   " + "  ".join(cell.rjust(w) for cell, w in zip(row, widths)))
        now_ctx = client.get_online_features(["txn_context:share_of_24h_spend", "user_txn:amount_24h"],
                                             entity_rows=[{"user_id": 1, "amount": 60.0}]).to_dict()
        share = now_ctx["share_of_24h_spend"][0]
        say(f"   online, user 1 scoring a 60.00 transaction now: share_of_24h_spend = "
            f"{'null' if share is None else f'{share:.5f}'} (60.00 / amount_24h {_fmt(now_ctx['amount_24h'][0])}), "
            "computed at read time from the request")
        if now_ctx["amount_24h"][0] and not math.isclose(now_ctx["share_of_24h_spend"][0],
                                                        60.0 / now_ctx["amount_24h"][0], rel_tol=1e-12):
            failures.append("the on-demand feature online is not amount / amount_24h")

        # ---- 7. latency from the client
        hot = zipf_keys(rng, 400, 5_000, 0.8).tolist()
        single = []
        for u in hot:
            t = time.perf_counter()
            client.get_online_features(feature_service="fraud_v1", entity_rows=[{"user_id": u, "merchant_id": "m0001"}],
                                       full_feature_names=True)
            single.append(time.perf_counter() - t)
        batch_lat = []
        for _ in range(50):
            users = rng.integers(1, 5_001, 100).tolist()
            t = time.perf_counter()
            client.get_online_features(feature_service="fraud_v1", full_feature_names=True,
                                       entity_rows={"user_id": users, "merchant_id": ["m0001"] * 100})
            batch_lat.append(time.perf_counter() - t)
        say(f"7. serving latency from the client (HTTP on loopback, fraud_v1 = {train.num_columns - 5} features "
            "from 3 views):")
        say(f"   1 entity    p50 {pct(single, .5):5.2f} ms  p90 {pct(single, .9):5.2f} ms  p99 {pct(single, .99):5.2f} ms"
            f"  ({len(single)} requests)")
        say(f"   100 entities p50 {pct(batch_lat, .5):5.2f} ms  p90 {pct(batch_lat, .9):5.2f} ms  "
            f"p99 {pct(batch_lat, .99):5.2f} ms  ({len(batch_lat)} requests)")

        # ---- 8. shutdown
        client.close()
        pids = server.pids("engine") + server.pids("gunicorn")
        stop_s = server.stop()
        server = None
        deadline = time.monotonic() + 10
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [p for p in pids if pid_alive(p)]
        say(f"8. SIGTERM: stopped in {stop_s:.1f}s (final checkpoint written); processes left: {len(left)}")
        if left:
            failures.append(f"processes still running: {left}")
        for f in failures:
            say(f"FAILED: {f}")
        say(("demo passed" if not failures else "demo FAILED") + f" in {time.monotonic() - started:.0f}s; "
            + (f"repo kept in {repo_dir} (try: fstore serve --repo {repo_dir})" if keep else "temp dir removed")
            + "; next: README.md's tour")
        return 0 if not failures else 1
    except KeyboardInterrupt:
        say("interrupted; shutting down")
        return 130
    except Exception as e:
        # the server's side of it is in its log, which the temp dir takes away: show it first
        if server is not None:
            tail = server.text().splitlines()[-40:]
            say(f"demo FAILED: {type(e).__name__}: {e}\n--- last lines of the server log ---\n" + "\n".join(tail))
        raise
    finally:
        if server is not None:
            server.stop()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
