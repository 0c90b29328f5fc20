/* fstore web UI: the live page. Polls GET /api/v1/stats (the server's own
   counters, the ones /metrics exports, and what /ready says), and redraws its panels
   in place without reloading. Rates are the change of a counter between two
   polls divided by the time between them. */
"use strict";

(() => {
  const fs = window.fstore;
  const { h, api, table } = fs;
  fs.REFRESH_MS = 2000;

  const num = (x) => (x === null || x === undefined ? "—" : Number(x).toLocaleString("en-US"));
  const ms = (x) => (x === null || x === undefined ? "—" : `${x < 10 ? x.toFixed(2) : x.toFixed(1)} ms`);

  const WIDE = new Set(["panel-freshness"]); // a table of every view: give it two columns where there is room
  const panel = (id, title, ...body) => h(WIDE.has(id) ? "section.card.wide" : "section.card", { id, "aria-labelledby": `${id}-h` },
    h("h2", { id: `${id}-h` }, title), h("div.body", {}, ...body));

  const fill = (id, ...body) => {
    const el = document.querySelector(`#${id} .body`);
    if (el) fs.append(el.replaceChildren() || el, body);
  };

  const drawStatus = (ready, stats) => {
    fill("panel-status",
      ready.ok ? h("p.big.fresh-ok", {}, "Ready") : h("p.big.fresh-stale", {}, "Not ready"),
      ready.ok ? h("p.muted", {}, "The store persists writes and serves reads.")
               : h("p", { role: "alert" }, ready.reason),
      h("p.muted", {}, `Write-ahead log applied up to position ${num(stats.applied_lsn)}.`));
  };

  const drawIngest = (stats, rates) => {
    const streams = Object.entries(stats.streams);
    if (!streams.length) {
      fill("panel-ingest", h("p", {}, "No streams defined, so nothing is ingested. Define a stream and run ",
                            h("code", {}, "fstore apply"), "."));
      return;
    }
    fill("panel-ingest", table("ingest-table", ["Stream", { text: "Rows/s", cls: "num" }, { text: "Pushed", cls: "num" },
                                                 { text: "From Kafka", cls: "num" }],
      streams.map(([name, s]) => [fs.link(`#/streams/${encodeURIComponent(name)}`, name),
        { text: rates[name] === undefined ? "…" : rates[name].toFixed(1), cls: "num", attrs: { "data-rate": rates[name] ?? "" } },
        { text: num(s.pushed), cls: "num" }, { text: s.topic ? num(s.kafka) : "no topic", cls: "num" }]),
      (i) => ({ "data-stream": streams[i][0] })),
      h("p.muted", {}, `Rows per second over the last ${fs.REFRESH_MS / 1000} s; totals since the server started.`));
  };

  const drawLate = (stats) => {
    const perStream = Object.entries(stats.streams).filter(([, s]) => s.late);
    const dead = Object.entries(stats.dead_letters.by_topic);
    fill("panel-late",
      h("p", {}, h("span.big", { id: "late-total" }, num(stats.late_events)), " late event(s) ",
        h("span.muted", {}, "(beyond allowed lateness: logged offline, healed online by the next materialize)")),
      perStream.length ? h("p.muted", {}, "Pushed late: " + perStream.map(([n, s]) => `${n} ${num(s.late)}`).join(", ")) : null,
      h("p", {}, h("span.big", { id: "dead-total" }, num(stats.dead_letters.total)), " dead-lettered Kafka message(s)"),
      dead.length ? h("p.muted", {}, dead.map(([t, n]) => `${t}: ${num(n)}`).join(", ")) : null);
  };

  const drawFreshness = (stats) => {
    const views = Object.entries(stats.views);
    if (!views.length) {
      fill("panel-freshness", h("p", {}, "No feature views yet: apply definitions with ",
                                h("code", {}, "fstore apply --repo PATH"), "."));
      return;
    }
    fill("panel-freshness", table("freshness-table", ["View", "Source", { text: "Freshness", cls: "num" },
                                                       { text: "Keys", cls: "num" }],
      views.map(([name, v]) => {
        let text, cls;
        if (!v.over_stream) { text = "batch source"; cls = "num muted"; }
        else if (v.freshness_s === null) { text = "no event yet"; cls = "num muted"; }
        else { text = fs.duration(v.freshness_s); cls = v.freshness_s > 3600 ? "num fresh-stale" : "num fresh-ok"; }
        return [fs.link(`#/views/${encodeURIComponent(name)}`, `${name} v${v.version}`), v.source,
                { text, cls: `${cls} freshness`, attrs: { "data-seconds": v.freshness_s ?? "" } },
                { text: num(v.keys), cls: "num" }];
      }), (i) => ({ "data-view": views[i][0] })),
      h("p.muted", {}, "Freshness: now minus the newest event time applied from the view's stream."));
  };

  const drawLatency = (stats) => {
    const sv = stats.serving;
    fill("panel-latency",
      sv.requests ? h("dl.facts", { id: "latency" },
        h("dt", {}, "p50"), h("dd", { "data-q": "p50" }, ms(sv.p50_ms)),
        h("dt", {}, "p95"), h("dd", { "data-q": "p95" }, ms(sv.p95_ms)),
        h("dt", {}, "p99"), h("dd", { "data-q": "p99" }, ms(sv.p99_ms)))
        : h("p", {}, "No lookups served yet. Try the ", fs.link("#/lookup", "lookup form"), "."),
      h("p.muted", {}, `${num(sv.requests)} online lookup(s) since the server started, every worker; ` +
                       "percentiles interpolated within the latency histogram's buckets."));
  };

  const drawKafka = (stats) => {
    const withTopic = Object.entries(stats.streams).filter(([, s]) => s.topic);
    if (!withTopic.length) {
      fill("panel-kafka", h("p", {}, "No stream reads a Kafka topic: events arrive by push only. To ingest from " +
        "Kafka, give a stream a topic (WITH (topic = '...')) and set kafka.bootstrap_servers in fstore.yaml."));
      return;
    }
    if (stats.kafka.mode === null) {
      fill("panel-kafka", h("p", {}, `Stream(s) ${withTopic.map(([n, s]) => `${n} (topic ${s.topic})`).join(", ")} ` +
        "name a Kafka topic, but this server reads no Kafka: set kafka.bootstrap_servers in fstore.yaml and restart " +
        "fstore serve (see docs/kafka.md). Pushes work meanwhile."));
      return;
    }
    const lag = Object.entries(stats.kafka.lag);
    fill("panel-kafka", h("p", {}, h("span.big", { id: "kafka-lag-total" }, num(stats.kafka.lag_total)),
                          " message(s) behind"),
      lag.length ? table("kafka-lag-table", ["Topic/partition", { text: "Lag", cls: "num" }],
                         lag.map(([k, n]) => [k, { text: num(n), cls: "num" }]))
                 : h("p.muted", {}, "No partition assigned yet."),
      h("p.muted", {}, `Topics: ${withTopic.map(([n, s]) => `${s.topic} → ${n}`).join(", ")}`));
  };

  fs.pages.live = async () => {
    const content = [
      h("h1", {}, "Live"),
      h("div.cards", {},
        panel("panel-status", "Status", h("p.muted", {}, "…")),
        panel("panel-ingest", "Ingest", h("p.muted", {}, "…")),
        panel("panel-late", "Late and dead-lettered events", h("p.muted", {}, "…")),
        panel("panel-freshness", "Freshness per view", h("p.muted", {}, "…")),
        panel("panel-latency", "Serving latency", h("p.muted", {}, "…")),
        panel("panel-kafka", "Kafka lag", h("p.muted", {}, "…"))),
      h("p.muted", { id: "live-updated", "aria-live": "off" }, ""),
    ];
    let previous = null, timer = null, stopped = false;
    const tick = async () => {
      timer = null;
      if (stopped) return;
      try {
        const stats = await api("/api/v1/stats");
        const ready = stats.ready;
        if (stopped) return;
        const now = performance.now();
        const rates = {};
        if (previous) {
          const dt = (now - previous.at) / 1000;
          for (const [name, s] of Object.entries(stats.streams)) {
            const before = previous.stats.streams[name];
            if (before && dt > 0) rates[name] = Math.max(0, (s.pushed + s.kafka - before.pushed - before.kafka) / dt);
          }
        }
        previous = { at: now, stats };
        drawStatus(ready, stats);
        drawIngest(stats, rates);
        drawLate(stats);
        drawFreshness(stats);
        drawLatency(stats);
        drawKafka(stats);
        const stamp = document.getElementById("live-updated");
        if (stamp) {
          stamp.textContent = `Updated ${new Date().toLocaleTimeString()}; refreshes every ${fs.REFRESH_MS / 1000} s.`;
          stamp.dataset.polls = String(Number(stamp.dataset.polls || 0) + 1);
        }
      } catch (e) {
        const grid = document.querySelector("#main .cards");
        if (grid && !stopped) grid.replaceChildren(fs.failure(e, "Cannot read the server's metrics"));
        if (e instanceof fs.ApiError && (e.status === 401 || e.status === 403)) return; // polling will not fix it
      }
      if (!stopped) timer = setTimeout(tick, fs.REFRESH_MS);
    };
    fs.leaveHooks.push(() => { stopped = true; if (timer) clearTimeout(timer); });
    setTimeout(tick, 0);
    return content;
  };
})();
