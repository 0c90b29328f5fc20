"""The web UI in a real headless Chromium (Debian's `chromium`, driven by
Playwright's Python package pointed at that binary: no browser download)
against a real `fstore serve` with API keys. One server and one browser for
the module; each test opens fresh tabs and fails on any console error it did
not expect.

With FSTORE_UI_SCREENSHOTS=1 the tests also write the screenshots of
docs/ui.md into docs/ui/."""
import datetime as dt
import json
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

READER, WRITER = "reader-key", "writer-key"
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "ui" if os.environ.get("FSTORE_UI_SCREENSHOTS") else None
HTTP_4XX = re.compile(r"Failed to load resource: the server responded with a status of 4\d\d")

DEFS_V1 = """
CREATE ENTITY account (account_id BIGINT) WITH (description = 'a customer account');
CREATE STREAM payments (account_id BIGINT, amount DOUBLE, ts TIMESTAMP)
    WITH (timestamp = 'ts', allowed_lateness = '1h');
CREATE FEATURE VIEW account_totals AS
SELECT account_id,
       count(*) OVER lifetime() AS n_payments,
       sum(amount) OVER lifetime() AS total
FROM payments;
CREATE FEATURE VIEW last_payment WITH (ttl = '30d') AS
SELECT account_id, amount AS last_amount
FROM payments;
CREATE REQUEST SOURCE payment_request (amount DOUBLE);
CREATE ON DEMAND FEATURE VIEW payment_context AS
SELECT amount / account_totals.total AS share_of_total
FROM payment_request, account_totals;
CREATE FEATURE SERVICE risk_v1 AS (account_totals:n_payments, last_payment:last_amount);
"""
# v2 of account_totals: a windowed feature more (the diff the view page shows)
DEFS_V2 = DEFS_V1.replace("sum(amount) OVER lifetime() AS total",
                          "sum(amount) OVER lifetime() AS total,\n       max(amount) OVER sliding('1h', '5m') AS max_1h")


def iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def call(base, path, body=None, key=READER):
    """(status, JSON) of one API call with `key`."""
    req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def base(tmp_path_factory, serve_helpers):
    from fsapp.registry.repo import Repo

    root = tmp_path_factory.mktemp("ui") / "repo"
    root.mkdir()
    (root / "keys.txt").write_text(f"{READER} read\n{WRITER} read,write\n")
    serve_helpers.apply_repo(root, DEFS_V1, "auth:\n  api_keys_file: keys.txt\n")
    (root / "defs.sql").write_text(DEFS_V2)
    Repo(root).apply()
    url, proc, log = serve_helpers.launch_serve(root, root.parent / "serve.log")
    for _ in range(100):  # on by default, and said so (the line may follow the first answer by a moment)
        log.seek(0)
        if f"web UI at {url}/ui" in log.read():
            break
        time.sleep(0.1)
    else:
        pytest.fail("fstore serve did not say where its web UI is")
    # two hours old: the lookups have values, and the freshness panel a value a new push changes
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    rows = [{"account_id": 1, "amount": 10.0, "ts": iso(old)}, {"account_id": 1, "amount": 5.5, "ts": iso(old)},
            {"account_id": 2, "amount": 3.0, "ts": iso(old)}]
    status, body = call(url, "/api/v1/push", {"stream": "payments", "rows": rows}, key=WRITER)
    assert status == 200, body
    yield url
    serve_helpers.stop_serve(proc, log)


def chromium_path() -> str:
    path = os.environ.get("FSTORE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("the web UI tests need Chromium and found none: install Debian's package with "
                    "`apt-get update && apt-get install -y --no-install-recommends chromium` (.ci/run does), "
                    "or name a Chromium binary in FSTORE_CHROMIUM")
    return path


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the web UI tests drive Chromium with Playwright: pip install -e '.[test]'")
    path = chromium_path()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path)
        yield b
        b.close()


class Tab:
    """One browser tab on the UI with its own session (and so its own key),
    recording console errors and uncaught exceptions."""

    def __init__(self, browser, base, key, phone=False):
        self.base = base
        size = {"width": 390, "height": 844} if phone else {"width": 1280, "height": 800}
        self.context = browser.new_context(viewport=size, device_scale_factor=1, is_mobile=phone, has_touch=phone)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.errors: list[str] = []
        self.allowed: list[re.Pattern] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.goto(base + "/ui")
        self.page.wait_for_selector("main[data-route]")
        if key:
            self.page.fill("#api-key", key)
            self.page.click("#key-form button")
            self.page.wait_for_selector("#key-scopes:has-text('key scopes')")

    def open(self, route: str):
        """Goes to #route and waits until its page is drawn."""
        self.page.evaluate("r => { location.hash = r }", route)
        self.page.wait_for_selector(f'main[data-route="{route}"]')
        return self.page

    def allow(self, pattern: re.Pattern) -> None:
        self.allowed.append(pattern)

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]

    def shot(self, name: str) -> None:
        if SHOTS is not None:
            SHOTS.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def tab(browser, base):
    """tab(key=READER, phone=False): a new tab; after the test, none of them
    may have logged a console error it did not allow."""
    tabs = []

    def open_tab(key=READER, phone=False):
        t = Tab(browser, base, key, phone)
        tabs.append(t)
        return t

    yield open_tab
    try:
        for t in tabs:
            assert t.unexpected_errors() == [], "console errors in the UI"
    finally:
        for t in tabs:
            t.context.close()


PAGES = [("#/live", "live"), ("#/views", "views"), ("#/views/account_totals", "view"),
         ("#/streams", "streams"), ("#/streams/payments", "stream"), ("#/entities", "entities"),
         ("#/services", "services"), ("#/services/risk_v1", "service"), ("#/lineage/account_totals", "lineage"),
         ("#/lookup/view:account_totals", "lookup")]


def test_every_page_loads_without_console_errors_at_laptop_and_phone_width(tab):
    laptop = tab(WRITER)
    for route, name in PAGES:
        page = laptop.open(route)
        assert not page.query_selector("#main .error"), (route, page.inner_text("#main"))
        if name == "live":
            page.wait_for_selector("#freshness-table")
        if name == "view":
            page.click("#diff-form button")
            page.wait_for_selector("#diff")
        if name == "lookup":
            page.fill("#key-account_id", "1, 2, 99")
            page.click("#lookup-submit")
            page.wait_for_selector("#lookup-table")
        laptop.shot(name)
    phone = tab(READER, phone=True)
    for route, name in PAGES:
        page = phone.open(route)
        if name == "live":
            page.wait_for_selector("#freshness-table")
        # nothing wider than the screen: wide tables and the graph scroll inside their own boxes
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), route
        if name in ("live", "lookup", "lineage"):
            phone.shot(f"phone-{name}")


def test_without_a_key_the_ui_asks_for_one_and_reads_nothing(tab):
    t = tab(key=None)
    page = t.open("#/views")
    assert "API key is needed" in page.inner_text("#main")
    assert "this server needs a key" in page.inner_text("#key-scopes")


def test_the_views_list_is_the_registry_api_s(tab, base):
    status, body = call(base, "/api/v1/registry/feature_views")
    assert status == 200 and body["kind"] == "feature_view"
    page = tab().open("#/views")
    rows = page.eval_on_selector_all("#views-table tbody tr", "rows => rows.map(r => [r.dataset.name, "
                                     "r.cells[1].textContent])")
    assert rows == [[v["name"], f"v{v['version']}"] for v in body["items"]]
    assert [r[0] for r in rows] == ["account_totals", "last_payment"]


def test_a_view_page_shows_its_sql_ttl_windows_and_a_diff_between_versions(tab, base):
    _, v2 = call(base, "/api/v1/registry/feature_view/account_totals")
    _, v1 = call(base, "/api/v1/registry/feature_view/account_totals?version=1")
    page = tab().open("#/views/account_totals")
    assert page.inner_text("#view-sql") == v2["sql"]
    assert "sliding 1 h every 5 min" in page.inner_text("#features-table")
    page.select_option("#diff-from", "1")
    page.select_option("#diff-to", "2")
    page.click("#diff-form button")
    page.wait_for_selector("#diff")
    added = page.eval_on_selector_all("#diff .add", "xs => xs.map(x => x.textContent)")
    removed = page.eval_on_selector_all("#diff .del", "xs => xs.map(x => x.textContent)")
    new_lines = set(v2["sql"].splitlines()) - set(v1["sql"].splitlines())
    old_lines = set(v1["sql"].splitlines()) - set(v2["sql"].splitlines())
    assert {a[2:] for a in added} == new_lines and {r[2:] for r in removed} == old_lines
    assert any("max_1h" in a for a in added)
    page = tab().open("#/views/last_payment")
    assert page.inner_text("#view-ttl") == "30 d"


@pytest.mark.parametrize("name", ["risk_v1", "account_totals", "payments"])
def test_the_lineage_graph_is_the_lineage_api_s(tab, base, name):
    status, graph = call(base, f"/api/v1/lineage/{name}")
    assert status == 200
    page = tab().open(f"#/lineage/{name}")
    nodes = page.eval_on_selector_all("#lineage-graph g.node", "gs => gs.map(g => g.dataset.id)")
    edges = page.eval_on_selector_all("#lineage-graph path.edge", "ps => ps.map(p => [p.dataset.from, p.dataset.to])")
    assert sorted(nodes) == sorted(n["id"] for n in graph["nodes"])
    assert sorted(edges) == sorted(graph["edges"])
    assert page.get_attribute("#lineage-graph g.root", "data-id") == graph["root"]
    # every edge goes left to right: the drawing reads from sources to services
    for a, b in graph["edges"]:
        assert int(page.get_attribute(f'g.node[data-id="{a}"]', "data-column")) < \
            int(page.get_attribute(f'g.node[data-id="{b}"]', "data-column"))


def test_lineage_and_pages_are_reachable_by_keyboard(tab):
    t = tab()
    page = t.open("#/lineage/account_totals")
    # Tab from the top of a freshly loaded page reaches the nav's Lookup link; Enter follows it
    page.reload()
    page.wait_for_selector('main[data-route="#/lineage/account_totals"]')
    for _ in range(15):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.getAttribute('href')") == "#/lookup":
            break
    else:
        pytest.fail("Tab never reached the Lookup link")
    page.keyboard.press("Enter")
    page.wait_for_selector('main[data-route="#/lookup"]')
    page = t.open("#/lineage/account_totals")
    page.focus('#lineage-graph a[href="#/lineage/payments%40v1"]')
    page.keyboard.press("Enter")
    page.wait_for_selector('main[data-route="#/lineage/payments%40v1"]')
    assert page.get_attribute("#lineage-graph g.root", "data-id") == "stream:payments@v1"


def lookup_cells(page, features):
    """{(row, feature): (value, status, event time)} as the lookup table shows them."""
    cells = page.eval_on_selector_all("#lookup-table td[data-feature]", """tds => tds.map(td => [
        td.parentElement.dataset.row, td.dataset.feature, td.querySelector('.value').textContent,
        td.querySelector('.status').textContent, td.querySelector('.event-time').dataset.ts])""")
    return {(int(r), f): (json.loads(v), s, t) for r, f, v, s, t in cells}


def api_cells(answer, n_keys=1):
    names = answer["metadata"]["feature_names"]
    out = {}
    for c, f in enumerate(names[n_keys:], n_keys):
        col = answer["results"][c]
        for r, v in enumerate(col["values"]):
            out[(r, f)] = (v, col["statuses"][r], col["event_timestamps"][r] or "")
    return out


def test_the_lookup_form_shows_what_the_online_api_answers(tab, base):
    page = tab().open("#/lookup/view:account_totals")
    page.fill("#key-account_id", "1, 2, 99")
    page.click("#lookup-submit")
    page.wait_for_selector("#lookup-table")
    status, answer = call(base, "/api/v1/features/online", {"features": ["account_totals:*"],
                                                            "entities": {"account_id": [1, 2, 99]}})
    assert status == 200
    shown = lookup_cells(page, answer["metadata"]["feature_names"][1:])
    assert shown == api_cells(answer)
    assert shown[(0, "n_payments")][:2] == (2, "PRESENT") and shown[(2, "n_payments")][1] == "NOT_FOUND"
    # as_of: values as the engine served them at an earlier time (before the events: not found)
    as_of = iso(dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=3))
    page.fill("#lookup-as-of", as_of)
    page.click("#lookup-submit")
    page.wait_for_selector("#lookup-result p:has-text('key(s)')")
    _, earlier = call(base, "/api/v1/features/online", {"features": ["account_totals:*"], "as_of": as_of,
                                                        "entities": {"account_id": [1, 2, 99]}})
    assert lookup_cells(page, None) == api_cells(earlier)
    # a feature service: its pinned features, keys gathered from its views
    page = tab().open("#/lookup/service:risk_v1")
    page.fill("#key-account_id", "2")
    page.click("#lookup-submit")
    page.wait_for_selector("#lookup-table")
    _, served = call(base, "/api/v1/features/online", {"feature_service": "risk_v1", "entities": {"account_id": [2]}})
    assert lookup_cells(page, None) == api_cells(served)
    # an on-demand view: the form asks for its request column too, sent beside the keys
    page = tab().open("#/lookup/view:payment_context")
    page.fill("#key-account_id", "1, 2")
    page.fill("#key-amount", "3.1, 1.5")
    page.click("#lookup-submit")
    page.wait_for_selector("#lookup-table")
    status, computed = call(base, "/api/v1/features/online", {"features": ["payment_context:*"],
                                                              "entities": {"account_id": [1, 2], "amount": [3.1, 1.5]}})
    assert status == 200 and lookup_cells(page, None) == api_cells(computed, n_keys=2)
    assert lookup_cells(page, None)[(0, "share_of_total")][0] == pytest.approx(3.1 / 15.5)


def test_bad_lookup_input_shows_the_api_s_message(tab, base):
    t = tab()
    t.allow(HTTP_4XX)
    page = t.open("#/lookup/view:account_totals")
    page.fill("#key-account_id", "1")
    page.fill("#lookup-as-of", "next tuesday")
    page.click("#lookup-submit")
    error = page.wait_for_selector("#lookup-result .error")
    status, body = call(base, "/api/v1/features/online", {"features": ["account_totals:*"], "as_of": "next tuesday",
                                                          "entities": {"account_id": [1]}})
    assert 400 <= status < 500 and body["description"] in error.inner_text()
    page.fill("#lookup-as-of", "")
    page.fill("#key-account_id", "not-a-number")
    page.click("#lookup-submit")
    page.wait_for_selector("#lookup-result .error, #lookup-table")
    # a text key for a BIGINT entity: the API's answer, whatever it is, is what the page shows
    status, body = call(base, "/api/v1/features/online", {"features": ["account_totals:*"],
                                                          "entities": {"account_id": ["not-a-number"]}})
    if status == 200:
        assert page.query_selector("#lookup-table")
    else:
        assert body["description"] in page.inner_text("#lookup-result .error")


def freshness(page) -> float | None:
    cell = page.get_attribute('#freshness-table tr[data-view="account_totals"] td.freshness', "data-seconds")
    return float(cell) if cell else None


def test_after_a_push_the_freshness_panel_and_the_lookup_change(tab):
    watcher = tab(WRITER)
    live = watcher.open("#/live")
    live.wait_for_selector('#freshness-table tr[data-view="account_totals"]')
    before = freshness(live)
    assert before is not None and before > 3000  # the module's events are two hours old
    live.evaluate("window.__sameDocument = true")

    t = tab(WRITER)
    page = t.open("#/lookup/view:account_totals")
    page.fill("#key-account_id", "7")
    page.click("#lookup-submit")
    page.wait_for_selector("#lookup-table")
    assert lookup_cells(page, None)[(0, "n_payments")][1] == "NOT_FOUND"

    page = t.open("#/streams/payments")
    now = dt.datetime.now(dt.timezone.utc)
    page.fill("#push-rows", json.dumps([{"account_id": 7, "amount": 42.0, "ts": iso(now)}]))
    page.click("#push-submit")
    assert "Accepted 1 event(s), 0 late" in page.wait_for_selector("#push-result .success").inner_text()

    # the open live page redraws by itself: no reload (the marker survives)
    live.wait_for_function("""() => { const td = document.querySelector(
        '#freshness-table tr[data-view="account_totals"] td.freshness');
        return td && td.dataset.seconds !== '' && Number(td.dataset.seconds) < 60; }""", timeout=15_000)
    assert live.evaluate("window.__sameDocument === true")
    assert freshness(live) < 60 < before
    watcher.shot("live-after-push")

    page = t.open("#/lookup/view:account_totals")
    page.fill("#key-account_id", "7")
    page.click("#lookup-submit")
    page.wait_for_selector("#lookup-table")
    cells = lookup_cells(page, None)
    assert cells[(0, "n_payments")][:2] == (1, "PRESENT") and cells[(0, "total")][0] == 42.0


def test_a_read_key_cannot_push_from_the_ui(tab, base):
    reader = tab(READER).open("#/streams/payments")
    assert reader.query_selector("#push-form") is None
    assert "write scope" in reader.inner_text("#push-locked")
    # a tab whose key lost the write scope meanwhile (e.g. changed in another window): the server refuses,
    # the page shows its 403 message, and nothing is written
    t = tab(WRITER)
    t.allow(HTTP_4XX)
    page = t.open("#/streams/payments")
    page.evaluate("k => sessionStorage.setItem('fstore.apiKey', k)", READER)
    page.fill("#push-rows", json.dumps([{"account_id": 8, "amount": 1.0, "ts": iso(dt.datetime.now(dt.timezone.utc))}]))
    page.click("#push-submit")
    error = page.wait_for_selector("#push-result .error")
    status, body = call(base, "/api/v1/push", {"stream": "payments", "rows": [{"account_id": 8, "amount": 1.0,
                                                                               "ts": 0}]}, key=READER)
    assert status == 403 and body["description"] in error.inner_text()
    _, answer = call(base, "/api/v1/features/online", {"features": ["account_totals:n_payments"],
                                                       "entities": {"account_id": [8]}})
    assert answer["results"][1]["statuses"] == ["NOT_FOUND"]


class NotReady:
    """An engine's backend whose /ready says why it is not (as after a failed checkpoint)."""

    REASON = "the last checkpoint failed (No space left on device); free disk space in /data"

    def __init__(self, backend):
        self.backend = backend

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def ready(self):
        return False, self.REASON


class KafkaLagging(NotReady):
    """A backend that reads Kafka (as a consumer group would report it), two
    partitions behind and with dead letters: the live page's Kafka panels."""

    STREAM = {"kind": "stream", "name": "clicks", "version": 1, "definition": {"topic": "clicks-topic"}}
    METRICS = ('fstore_kafka_dead_letters_total{kind="decode",topic="clicks-topic"} 3.0\n'
               'fstore_kafka_lag_messages{partition="0",topic="clicks-topic"} 5.0\n'
               'fstore_kafka_lag_messages{partition="1",topic="clicks-topic"} 7.0\n')

    def ready(self):
        return self.backend.ready()

    def registry_list(self, kind):
        return [self.STREAM] if kind == "stream" else self.backend.registry_list(kind)

    def cluster(self):
        return {**self.backend.cluster(), "mode": "group"}

    def metrics_text(self):
        return self.backend.metrics_text() + self.METRICS


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """in_process(wrapper): the app over an engine with an empty registry and
    its backend wrapped, served in this process (wsgiref); returns its URL."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from fsapp.api import EngineBackend, create_app
    from fsapp.engine import Engine
    from fsapp.registry.store import RegistryStore

    root = tmp_path_factory.mktemp("ui-empty")
    RegistryStore(root / "registry.db", create=True).close()
    engine = Engine(str(root / "engine"), str(root / "registry.db"), fsync="never")
    servers = []

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    def serve(wrapper):
        server = make_server("127.0.0.1", 0, create_app(wrapper(EngineBackend(engine))), handler_class=Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()
    engine.close()


def test_empty_states_say_what_to_do_and_not_ready_says_why(browser, in_process):
    t = Tab(browser, in_process(NotReady), key=None)
    try:
        assert "open server" in t.page.inner_text("#key-scopes")
        for route in ("#/views", "#/streams", "#/entities", "#/services", "#/lineage", "#/lookup"):
            text = t.open(route).inner_text("#main")
            assert "fstore apply --repo PATH" in text, route
        page = t.open("#/live")
        page.wait_for_selector("#panel-status p[role=alert]")
        assert NotReady.REASON in page.inner_text("#panel-status")
        assert "No feature views yet" in page.inner_text("#panel-freshness")
        assert "No streams defined" in page.inner_text("#panel-ingest")
        t.shot("empty-not-ready")
        assert t.unexpected_errors() == []
    finally:
        t.context.close()


def test_kafka_panels_show_lag_per_partition_and_dead_letters(browser, in_process):
    t = Tab(browser, in_process(KafkaLagging), key=None)
    try:
        page = t.open("#/live")
        page.wait_for_selector("#kafka-lag-table")
        assert page.inner_text("#kafka-lag-total") == "12"
        rows = page.eval_on_selector_all("#kafka-lag-table tbody tr", "rs => rs.map(r => r.innerText.split('\\t'))")
        assert rows == [["clicks-topic/0", "5"], ["clicks-topic/1", "7"]]
        assert page.inner_text("#dead-total") == "3" and "clicks-topic: 3" in page.inner_text("#panel-late")
        assert "clicks-topic → clicks" in page.inner_text("#panel-kafka")
        assert t.unexpected_errors() == []
    finally:
        t.context.close()


def test_without_chromium_the_ui_tests_fail_saying_how_to_install_it(monkeypatch):
    monkeypatch.delenv("FSTORE_CHROMIUM", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y --no-install-recommends chromium"):
        chromium_path()
