// The trioqueue dashboard: one script, no framework, no build step (docs/dashboard.md).
//
// Data flow: the /events websocket pushes job events and a metrics snapshot every second
// (the first connect also gets the last ~120 counter samples, for the chart).  Messages
// are queued and applied in one requestAnimationFrame, at most 2 a second; the lists are
// (re)loaded over HTTP on every (re)connect and after a `lagged`.  User data reaches the
// DOM only through textContent (the page's CSP forbids inline code; this script never
// builds HTML).
"use strict";

(() => {
  const TOKEN_KEY = "trioqueue.token";
  const BASE_TYPES = ["enqueued", "scheduled", "started", "completed", "retrying", "failed",
    "cancelled", "requeued", "metrics"];
  const OPTIONAL_TYPES = ["progress", "recovered"]; // newer servers; dropped if refused
  const FEED_ROWS = 100;
  const JOBS_PAGE = 50;
  const DEAD_LIMIT = 200;
  const INBOX_CAP = 2000;
  const RECENT_CAP = 4000;
  const CHART_POINTS = 120;
  const STALE_MS = 5000;
  const RELOAD_GAP_MS = 1000;
  const LIVE_GAP_MS = 500; // pushed data is drawn at most twice a second
  // Job events a second the server sends this page at most (/events?max_rate=); over it,
  // it drops the rest and says how many in a `lagged` event, and the page reloads what
  // it shows (at most once a second).  Nobody reads a faster feed, and each message costs
  // the server CPU: 100 a second (and as many `lagged`) took about 6 % of a core at
  // 1,000 jobs/s, 20 a second under 2 % (docs/dashboard.md); every event would cost it
  // a third of its POST rate.
  const MAX_RATE = 20;
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);
  const CANCELLABLE = new Set(["queued", "scheduled", "processing"]);
  const RETRYABLE = new Set(["failed", "cancelled"]);
  const PRIORITIES = ["high", "medium", "low"];
  const TASKS_GAP_MS = 1000; // GET /tasks again at most this often (a next run passed)

  const $ = (id) => document.getElementById(id);

  const S = {
    token: null,
    ws: null,
    attempt: 0,
    retryTimer: 0,
    retryAt: 0,
    conn: "connecting",
    reason: "",
    optionalTypes: true,
    lastMessage: 0,
    missed: 0,
    thinnedAt: 0, // when the server last skipped events (a `lagged`)
    dropped: 0, // queued messages dropped since the last reload (inbox full)
    inbox: [],
    frame: 0,
    liveTimer: 0, // a frame for pushed data, after LIVE_GAP_MS
    lastFrame: -Infinity,
    recent: [], // job events since the last reloads, replayed after a reload lands
    recentBase: 0, // how many were trimmed from the front of `recent`
    metrics: null,
    metricsDirty: false,
    series: [],
    base: null,
    chartDirty: false,
    feedNew: [],
    feedPaused: false,
    feedSkipped: 0,
    // While the pointer is over a list, new rows are held back (and counted) so that the
    // row under it stays put; they go in when the pointer leaves.
    hold: { feed: false, jobs: false },
    jobsHeld: [],
    jobs: new Map(),
    jobsOrder: [],
    jobsNext: null,
    jobsPages: [],
    jobsDirty: false,
    jobsLoaded: false,
    bulkRetry: null, // has the server POST /jobs/retry? (asked once)
    taskFilter: "unknown", // "yes" once a list answer has `next` (the newer API)
    stale: { jobs: false, running: false }, // reload when the tab is shown
    runningLoaded: false,
    dead: new Map(),
    deadFull: false,
    deadDirty: false,
    running: new Map(),
    runningDirty: false,
    detail: { id: null, job: null, fetching: false, again: false, timer: 0, dirty: false,
      progress: null, opener: null },
    tab: "overview",
    reload: { inFlight: false, again: false, last: 0, timer: 0 },
    // Periodic tasks from GET /tasks (loaded on every connect, and again once a next run
    // has passed); `last` maps a task to its newest job, kept current by events.
    periodic: { tasks: [], names: new Set(), last: new Map(), loaded: false, inFlight: false,
      at: 0, timer: 0, dirty: false, note: "" },
    clicks: 0,
  };

  // ------------------------------------------------------------------ small helpers

  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  };
  const setText = (node, text) => {
    const t = text === undefined || text === null ? "" : String(text);
    if (node.textContent !== t) node.textContent = t;
  };
  const num = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : "–");
  // A duration (timeouts, percentiles, the uptime): three significant digits under a
  // minute ("250 µs", "1.25 ms", "500 ms", "1.5 s", "42.3 s"), then whole units, the two
  // largest ("1 min 30 s", "59 min 59 s", "2 h 5 min", "3 d 4 h").
  const DURATION_UNITS = [[86400, "d"], [3600, "h"], [60, "min"], [1, "s"]];
  const secs = (s) => {
    if (typeof s !== "number" || !isFinite(s)) return "–";
    if (s < 0) return `-${secs(-s)}`;
    if (s === 0) return "0 s";
    const sig = (v) => Number(v.toPrecision(3)); // 999.96 -> 1000: the next unit's
    if (Math.round(s * 1e6) < 1000) return `${Math.round(s * 1e6)} µs`;
    if (sig(s * 1e3) < 1000) return `${sig(s * 1e3)} ms`;
    if (sig(s) < 60) return `${sig(s)} s`;
    const whole = Math.round(s);
    const i = DURATION_UNITS.findIndex(([size]) => whole >= size); // 0 to 2: at least a minute
    const [big, bigUnit] = DURATION_UNITS[i];
    const [small, smallUnit] = DURATION_UNITS[i + 1];
    const n = Math.round(whole / small); // in the smaller unit, rounded (59.6 min -> 1 h)
    const a = Math.floor(n / (big / small));
    const b = n % (big / small);
    return b ? `${num(a)} ${bigUnit} ${b} ${smallUnit}` : `${num(a)} ${bigUnit}`;
  };
  // An exact period ("every 90 s", "every 2 h"): one unit that divides it, else secs().
  const span = (s) => {
    if (typeof s !== "number" || !isFinite(s)) return "–";
    for (const [size, unit] of DURATION_UNITS) {
      if (s >= size && Math.abs(s / size - Math.round(s / size)) < 1e-9) return `${num(Math.round(s / size))} ${unit}`;
    }
    return secs(s);
  };
  // A time to come, roughly: "42 s", "17 min", "5 h", "2,354 d".
  const until = (s) => {
    if (s < 120) return `${Math.ceil(s)} s`;
    if (s < 7200) return `${Math.floor(s / 60)} min`;
    if (s < 172800) return `${Math.floor(s / 3600)} h`;
    return `${num(Math.floor(s / 86400))} d`;
  };
  const rate = (r) => (typeof r === "number" && isFinite(r)
    ? `${r >= 100 ? Math.round(r).toLocaleString("en-US") : r.toFixed(1)}/s` : "–");
  const ms = (iso) => (typeof iso === "string" ? Date.parse(iso) : NaN);
  const pad = (n, w) => String(n).padStart(w, "0");
  const clock = (t, withMs) => {
    if (!isFinite(t)) return "–";
    const d = new Date(t);
    const base = `${pad(d.getHours(), 2)}:${pad(d.getMinutes(), 2)}:${pad(d.getSeconds(), 2)}`;
    return withMs ? `${base}.${pad(d.getMilliseconds(), 3)}` : base;
  };
  const when = (t) => {
    if (!isFinite(t)) return "–";
    const d = new Date(t);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1, 2)}-${pad(d.getDate(), 2)} ${clock(t, true)}`;
  };
  const ago = (t) => {
    const s = Math.max(0, (Date.now() - t) / 1000);
    return s < 60 ? `${s.toFixed(s < 10 ? 1 : 0)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  };
  const firstLine = (text) => {
    if (typeof text !== "string") return "";
    const line = text.split("\n", 1)[0];
    return line.length > 200 ? `${line.slice(0, 200)}…` : line;
  };
  const pretty = (value) => {
    if (value === undefined) return "";
    try {
      return JSON.stringify(value, null, 2);
    } catch (e) {
      return String(value);
    }
  };
  const jobLink = (id) => {
    const b = el("button", "link", id);
    b.type = "button";
    b.dataset.job = id;
    b.title = id; // a long id is cut short with an ellipsis (dashboard.css)
    return b;
  };
  // A cell whose text may be long (a task name, a node id): cut short with an ellipsis
  // (dashboard.css), the whole text in its tooltip.
  const clipText = (node, text) => {
    const t = text === undefined || text === null ? "" : String(text);
    setText(node, t);
    if (node.title !== t) node.title = t;
    return node;
  };
  const clipCell = (text, cls) => clipText(el("td", cls ? `clip ${cls}` : "clip"), text);
  const storage = {
    get() {
      try {
        return window.sessionStorage.getItem(TOKEN_KEY);
      } catch (e) {
        return S.token;
      }
    },
    set(value) {
      try {
        window.sessionStorage.setItem(TOKEN_KEY, value);
      } catch (e) { /* storage disabled: the token lives in memory only */ }
    },
  };

  // ------------------------------------------------------------------ HTTP

  // A request the server does not answer within this many ms fails (TimeoutError) rather
  // than leave "retrying…" up for good; 0 for none (a bulk retry of many jobs takes long).
  const API_TIMEOUT_MS = 30000;
  async function api(method, path, body, timeoutMs = API_TIMEOUT_MS) {
    const headers = { Accept: "application/json" };
    if (S.token) headers.Authorization = `Bearer ${S.token}`;
    const init = { method, headers, cache: "no-store", credentials: "same-origin" };
    if (timeoutMs) init.signal = AbortSignal.timeout(timeoutMs);
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (response.status === 401) needToken(S.token ? "The server refused this token." : "This server needs a token.");
    return { status: response.status, ok: response.ok, data };
  }
  const errorText = (r) => (r.data && typeof r.data.error === "string" ? r.data.error : `HTTP ${r.status}`);
  const unreached = (e) => (e && e.name === "TimeoutError"
    ? `The server did not answer within ${API_TIMEOUT_MS / 1000} s (it may still do it).`
    : "Could not reach the server.");

  // ------------------------------------------------------------------ token

  // `#token=...` (maybe beside other `name=value&...` parts, kept as they are).  Only
  // percent-decoded: URLSearchParams decodes as a form does, a `+` into a space, and a
  // base64 token pasted as it is (`#token=Zm9v+YmFy/cXV4=`) was refused.
  function takeToken() {
    const hash = window.location.hash;
    if (hash.length > 1) {
      const parts = hash.slice(1).split("&");
      const given = parts.filter((p) => p.startsWith("token="));
      if (given.length) {
        const raw = given[0].slice("token=".length);
        let token = raw;
        try {
          token = decodeURIComponent(raw);
        } catch (e) { /* a lone "%": the token as it is */ }
        S.token = token;
        storage.set(token);
        const rest = parts.filter((p) => p && !p.startsWith("token=")).join("&");
        const url = window.location.pathname + window.location.search + (rest ? `#${rest}` : "");
        window.history.replaceState(null, "", url);
      }
    }
    const stored = storage.get();
    if (stored) S.token = stored;
  }

  function needToken(reason) {
    setText($("auth-reason"), reason);
    $("auth").hidden = false;
  }

  function useToken() {
    const value = $("auth-token").value.trim();
    if (!value) return;
    S.token = value;
    storage.set(value);
    $("auth-token").value = "";
    $("auth").hidden = true;
    S.attempt = 0;
    if (S.ws) {
      const old = S.ws;
      S.ws = null;
      old.close();
    }
    connect();
  }

  // ------------------------------------------------------------------ connection

  function setConn(conn, reason) {
    S.conn = conn;
    if (reason !== undefined) S.reason = reason;
    document.body.dataset.conn = conn;
    renderConn();
  }

  function connect() {
    window.clearTimeout(S.retryTimer);
    S.retryTimer = 0;
    const types = S.optionalTypes ? BASE_TYPES.concat(OPTIONAL_TYPES) : BASE_TYPES;
    const url = new URL("events", window.location.href);
    url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
    url.hash = "";
    const query = new URLSearchParams({ types: types.join(","), history: "true",
      max_rate: String(MAX_RATE) });
    if (S.token) query.set("token", S.token);
    url.search = query.toString();
    if (S.conn !== "live") setConn(S.attempt ? "reconnecting" : "connecting");
    let ws;
    try {
      ws = new WebSocket(url.href);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    S.ws = ws;
    let first = true;
    ws.onmessage = (message) => {
      if (ws !== S.ws) return;
      if (first) {
        first = false;
        S.attempt = 0;
        $("auth").hidden = true;
        setConn("live", "");
        requestReload(true);
        loadTasks(true);
      }
      receive(message.data);
    };
    ws.onclose = (event) => {
      if (ws !== S.ws) return;
      S.ws = null;
      closed(event.code, event.reason || "");
    };
  }

  function closed(code, reason) {
    if (code === 1008) {
      if (S.optionalTypes && reason.startsWith("types:")) {
        S.optionalTypes = false; // an older server: ask only for the types it has
        connect();
        return;
      }
      setConn("refused", reason || "refused by the server");
      if (/token/i.test(reason)) {
        needToken(S.token ? "The server refused this token." : "This server needs a token.");
      }
      return; // no retries: a new token (or a reload) starts again
    }
    scheduleReconnect();
  }

  function scheduleReconnect() {
    const delay = Math.min(30, 0.5 * 2 ** S.attempt) * (0.5 + Math.random() * 0.5);
    S.attempt += 1;
    S.retryAt = Date.now() + delay * 1000;
    setConn("reconnecting");
    S.retryTimer = window.setTimeout(connect, delay * 1000);
  }

  function renderConn() {
    const badge = $("badge");
    const banner = $("banner");
    const c = S.conn;
    let text = "connecting…";
    let message = "";
    if (c === "live") {
      text = "live";
    } else if (c === "stale") {
      text = "stale";
      message = `No message from the server for ${ago(S.lastMessage)}; the numbers below may be out of date.`;
    } else if (c === "reconnecting") {
      const left = Math.max(0, Math.ceil((S.retryAt - Date.now()) / 1000));
      text = S.retryTimer ? `offline · retry in ${left} s` : "reconnecting…";
      message = `The server is not answering${S.lastMessage ? ` (last message ${ago(S.lastMessage)} ago)` : ""}. `
        + `Reconnecting by itself${S.retryTimer ? ` in ${left} s` : ""} (attempt ${S.attempt}).`;
    } else if (c === "refused") {
      text = "refused";
      message = `The server refused the connection: ${S.reason}`;
    }
    setText(badge, text);
    badge.dataset.state = c;
    setText(banner, message);
    banner.hidden = !message;
    let fresh = "";
    if (S.lastMessage) fresh = `updated ${ago(S.lastMessage)} ago`;
    if (S.missed) fresh += `${fresh ? " · " : ""}${num(S.missed)} events missed by this page`;
    if (Date.now() - S.thinnedAt < 3000) {
      fresh += `${fresh ? " · " : ""}over ${MAX_RATE} events/s: lists refresh every second`;
    }
    setText($("freshness"), fresh);
  }

  function tick() {
    if (S.conn === "live" && S.lastMessage && Date.now() - S.lastMessage > STALE_MS) setConn("stale");
    renderConn();
    if (S.tab === "workers") S.runningDirty = true;
    if (S.tab === "periodic") {
      S.periodic.dirty = true; // the "in N s" column
      if (nextRunPassed()) refreshTasks();
    }
    scheduleLive();
  }

  // ------------------------------------------------------------------ messages

  function receive(text) {
    S.lastMessage = Date.now();
    if (S.conn === "stale") setConn("live");
    let ev;
    try {
      ev = JSON.parse(text);
    } catch (e) {
      return;
    }
    if (!ev || typeof ev !== "object") return;
    const type = ev.type;
    if (type === "metrics") {
      if (ev.metrics && typeof ev.metrics === "object") {
        S.metrics = ev.metrics;
        addSample(ev.at, ev.metrics);
        S.metricsDirty = true;
        scheduleLive();
      }
      return;
    }
    if (type === "history") {
      resetSeries(Array.isArray(ev.samples) ? ev.samples : []);
      scheduleLive();
      return;
    }
    if (type === "lagged") { // events over MAX_RATE (or over the server's buffer) skipped
      S.thinnedAt = Date.now();
      requestReload(false);
      return;
    }
    if (typeof ev.job_id !== "string") return;
    if (S.inbox.length >= INBOX_CAP) { // frames are not running (a hidden tab): drop, reload later
      S.dropped += 1;
      S.missed += 1;
      return;
    }
    S.inbox.push(ev);
    scheduleLive();
  }

  // What the user does is drawn in the next frame (schedule); what the server pushes,
  // at most every LIVE_GAP_MS (scheduleLive): each frame repaints much of the page, and
  // at 20 events a second one frame per message cost Chromium about half a core (at
  // saturation: 0.3; one every 250 ms, 0.12; every 500 ms, 0.09; every 1,000 ms, 0.09).
  function schedule() {
    if (!S.frame) S.frame = window.requestAnimationFrame(frame);
  }

  function scheduleLive() {
    if (S.frame || S.liveTimer) return;
    const wait = S.lastFrame + LIVE_GAP_MS - performance.now();
    if (wait <= 0) {
      schedule();
      return;
    }
    S.liveTimer = window.setTimeout(() => {
      S.liveTimer = 0;
      schedule();
    }, wait);
  }

  function frame() {
    S.frame = 0;
    S.lastFrame = performance.now();
    if (S.liveTimer) {
      window.clearTimeout(S.liveTimer);
      S.liveTimer = 0;
    }
    const batch = S.inbox;
    S.inbox = [];
    for (const ev of batch) {
      remember(ev);
      applyLists(ev);
      if (S.feedPaused) S.feedSkipped += 1;
      else S.feedNew.push(ev);
    }
    if (S.feedNew.length > FEED_ROWS) S.feedNew = S.feedNew.slice(-FEED_ROWS);
    if (S.dropped) requestReload(false);
    render();
  }

  function remember(ev) {
    S.recent.push(ev);
    if (S.recent.length > RECENT_CAP * 2) {
      const cut = S.recent.length - RECENT_CAP;
      S.recent = S.recent.slice(cut);
      S.recentBase += cut;
    }
  }
  const recentMark = () => S.recentBase + S.recent.length;
  function replaySince(mark, apply) {
    for (let i = Math.max(0, mark - S.recentBase); i < S.recent.length; i += 1) apply(S.recent[i]);
  }

  // ------------------------------------------------------------------ the lists' model

  function jobRecord(job) {
    const created = ms(job.created_at);
    const started = ms(job.started_at);
    const finished = ms(job.finished_at);
    const t = Math.max(created || 0, started || 0, finished || 0);
    return { id: job.id, task: job.task, priority: job.priority, status: job.status,
      attempts: job.attempts, created, finished, error: job.error, t, row: null };
  }

  // An event changes a record only if it is not older than what the record shows (a
  // reload's answer and the events that crossed it overlap).
  function update(rec, ev) {
    const at = Number(ev.at) * 1000;
    if (!isFinite(at) || at + 2 < rec.t) return false;
    rec.t = at;
    if (typeof ev.status === "string") rec.status = ev.status;
    if (typeof ev.attempt === "number") rec.attempts = ev.attempt;
    if (TERMINAL.has(rec.status)) rec.finished = at;
    else rec.finished = NaN;
    if (ev.type === "failed" || ev.type === "retrying") rec.error = ev.error;
    rec.dirty = true;
    return true;
  }

  function applyJobs(ev) {
    const rec = S.jobs.get(ev.job_id);
    if (rec) {
      if (update(rec, ev)) S.jobsDirty = true;
      const filtered = $("jobs-status").value;
      if (filtered && rec.status !== filtered) dropJob(ev.job_id); // it left the status shown
      return;
    }
    if (S.jobsPages.length || !S.jobsLoaded) return; // only the first page grows
    const status = $("jobs-status").value;
    const task = S.taskFilter === "yes" ? $("jobs-task").value.trim() : "";
    if (task && ev.task !== task) return;
    const fresh = status ? ev.status === status : (ev.type === "enqueued" || ev.type === "scheduled");
    if (!fresh) return;
    const at = Number(ev.at) * 1000;
    const created = ev.type === "enqueued" || ev.type === "scheduled" ? at : NaN;
    const added = { id: ev.job_id, task: ev.task, priority: ev.priority, status: ev.status,
      attempts: ev.attempt, created, finished: TERMINAL.has(ev.status) ? at : NaN,
      error: ev.error, t: at, row: null, dirty: true };
    S.jobs.set(added.id, added);
    if (S.hold.jobs) {
      S.jobsHeld.push(added.id);
      if (S.jobsHeld.length > JOBS_PAGE) {
        for (const id of S.jobsHeld.splice(0, S.jobsHeld.length - JOBS_PAGE)) S.jobs.delete(id);
      }
    } else {
      S.jobsOrder.unshift(added.id);
      trimJobs();
    }
    S.jobsDirty = true;
  }

  // The list keeps a page of jobs, the newest: the oldest beyond it go, with their rows,
  // as new ones come (whether or not the Jobs tab is shown).  While the pointer holds the
  // list, the rows under it stay and up to a page more waits in `jobsHeld`.
  function trimJobs() {
    if (S.jobsOrder.length <= JOBS_PAGE) return;
    for (const id of S.jobsOrder.splice(JOBS_PAGE)) {
      const rec = S.jobs.get(id);
      if (rec && rec.row) rec.row.remove();
      S.jobs.delete(id);
    }
  }

  function applyDead(ev) {
    const rec = S.dead.get(ev.job_id);
    if (ev.type === "failed") {
      if (rec) {
        update(rec, ev);
      } else {
        const at = Number(ev.at) * 1000;
        S.dead.set(ev.job_id, { id: ev.job_id, task: ev.task, priority: ev.priority,
          status: "failed", attempts: ev.attempt, created: NaN, finished: at, error: ev.error,
          t: at, row: null, dirty: true, fresh: true });
        trimDead();
      }
      S.deadDirty = true;
    } else if (rec && ev.status !== "failed") {
      const at = Number(ev.at) * 1000;
      if (at + 2 >= rec.t) { // retried (or cancelled) since it failed
        if (rec.row) rec.row.remove();
        S.dead.delete(ev.job_id);
        S.deadDirty = true;
      }
    }
  }

  // At most DEAD_LIMIT dead letters, the newest (as a reload lists them): over it the one
  // that failed first goes, and the list is then "full" (the count says "200+"), as when
  // a reload brings DEAD_LIMIT of them.
  function trimDead() {
    while (S.dead.size > DEAD_LIMIT) {
      let oldest = null;
      for (const rec of S.dead.values()) {
        if (!oldest || (rec.finished || 0) < (oldest.finished || 0)) oldest = rec;
      }
      if (oldest.row) oldest.row.remove();
      S.dead.delete(oldest.id);
      S.deadFull = true;
    }
  }

  // A worker is its node's (the event's `node`, on Redis only) and its number there: on
  // Redis every node has a worker 0.
  function applyRunning(ev) {
    const at = Number(ev.at) * 1000;
    const node = typeof ev.node === "string" && ev.node ? ev.node : null;
    if (ev.type === "started") {
      if (typeof ev.worker === "number") {
        for (const [id, r] of S.running) {
          if (r.worker === ev.worker && r.node === node && id !== ev.job_id) S.running.delete(id);
        }
      }
      S.running.set(ev.job_id, { id: ev.job_id, worker: ev.worker, node, task: ev.task,
        priority: ev.priority, attempt: ev.attempt, since: at });
      S.runningDirty = true;
    } else if (ev.type === "progress" && S.running.has(ev.job_id)) {
      // A job that was running when the page loaded: its progress says where.
      const r = S.running.get(ev.job_id);
      if (r.node === null && node !== null) r.node = node;
      if (typeof r.worker !== "number" && typeof ev.worker === "number") r.worker = ev.worker;
      S.runningDirty = true;
    } else if (S.running.has(ev.job_id) && ev.status !== "processing") {
      const r = S.running.get(ev.job_id);
      if (at + 2 >= r.since) {
        S.running.delete(ev.job_id);
        S.runningDirty = true;
      }
    }
  }

  function applyDetail(ev) {
    const d = S.detail;
    if (d.id !== ev.job_id) return;
    if (ev.type === "progress") {
      d.progress = { fraction: ev.fraction, note: ev.note };
      d.dirty = true;
    }
    if (!d.timer) d.timer = window.setTimeout(() => { d.timer = 0; loadDetail(); }, 150);
  }

  function applyLists(ev) {
    applyJobs(ev);
    applyDead(ev);
    applyRunning(ev);
    applyDetail(ev);
    applyPeriodic(ev);
  }

  // ------------------------------------------------------------------ periodic tasks

  function nextRunPassed() {
    const P = S.periodic;
    return P.loaded && P.tasks.some((t) => isFinite(t.next) && t.next <= Date.now());
  }

  // GET /tasks again (a next run passed, or a run was enqueued), at most once a second.
  function refreshTasks() {
    const P = S.periodic;
    if (P.timer || P.inFlight) return;
    P.timer = window.setTimeout(() => {
      P.timer = 0;
      loadTasks(false);
    }, Math.max(0, P.at + TASKS_GAP_MS - Date.now()));
  }

  // `fresh`: on a (re)connect, when the jobs known as last runs may be gone (a restart).
  async function loadTasks(fresh) {
    const P = S.periodic;
    if (P.inFlight) return;
    P.inFlight = true;
    P.at = Date.now();
    try {
      const r = await api("GET", "tasks");
      if (!r.ok || !r.data || !Array.isArray(r.data.tasks)) {
        P.note = `Could not load the tasks: ${errorText(r)}`;
        return;
      }
      P.tasks = r.data.tasks
        .filter((t) => t && typeof t.name === "string"
          && (typeof t.schedule === "string" || typeof t.every === "number"))
        .map((t) => ({ name: t.name, schedule: t.schedule, tz: t.tz, every: t.every,
          priority: t.priority, next: ms(t.next_run) }));
      P.names = new Set(P.tasks.map((t) => t.name));
      P.loaded = true;
      P.note = "";
      if (fresh) P.last = new Map();
      // Each task's newest job (its last run), on the first load and on a reconnect.
      const missing = P.tasks.filter((t) => !P.last.has(t.name));
      if (missing.length) await Promise.all(missing.map((t) => loadLastRun(t.name)));
    } catch (e) {
      P.note = "Could not reach the server.";
    } finally {
      P.inFlight = false;
      P.dirty = true;
      schedule();
    }
  }

  // `again`: replace what events made of it (a reload after events were skipped).
  async function loadLastRun(name, again) {
    const mark = recentMark();
    const r = await api("GET", `jobs?${new URLSearchParams({ task: name, limit: "1" })}`);
    if (!r.ok || !r.data || !Array.isArray(r.data.jobs)) return;
    const job = r.data.jobs[0];
    if (job && typeof job.id === "string" && job.task === name
      && (again || !S.periodic.last.has(name))) {
      S.periodic.last.set(name, jobRecord(job));
    }
    replaySince(mark, applyPeriodic);
  }

  function applyPeriodic(ev) {
    const P = S.periodic;
    if (!P.names.has(ev.task)) return;
    const rec = P.last.get(ev.task);
    if (rec && rec.id === ev.job_id) {
      if (update(rec, ev)) P.dirty = true;
    } else if (ev.type === "enqueued" || ev.type === "scheduled") {
      const at = Number(ev.at) * 1000;
      if (rec && !(at >= rec.t)) return;
      P.last.set(ev.task, { id: ev.job_id, task: ev.task, priority: ev.priority,
        status: ev.status, attempts: ev.attempt, created: at, finished: NaN, error: ev.error,
        t: at, row: null });
      P.dirty = true;
      // A periodic run ("<task>@<due>") was enqueued: the server's next run has moved.
      if (S.tab === "periodic" && ev.job_id.startsWith(`${ev.task}@`)) refreshTasks();
    }
  }

  // ------------------------------------------------------------------ reloads over HTTP

  function requestReload(now) {
    const r = S.reload;
    if (r.inFlight) {
      r.again = true;
      return;
    }
    if (r.timer) return;
    const wait = now ? 0 : Math.max(0, r.last + RELOAD_GAP_MS - Date.now());
    r.timer = window.setTimeout(() => {
      r.timer = 0;
      reloadLists();
    }, wait);
  }

  async function reloadLists() {
    const r = S.reload;
    r.inFlight = true;
    r.last = Date.now();
    S.dropped = 0;
    // The lists of hidden tabs are reloaded when they are shown.
    const jobs = S.tab === "jobs" || !S.jobsLoaded;
    const running = S.tab === "workers" || !S.runningLoaded;
    S.stale.jobs = !jobs;
    S.stale.running = !running;
    try {
      const lastRuns = S.tab === "periodic" ? S.periodic.tasks.map((t) => loadLastRun(t.name, true)) : [];
      await Promise.all([jobs ? loadJobs() : null, loadDead(), running ? loadRunning() : null,
        S.detail.id ? loadDetail() : null, ...lastRuns]);
    } catch (e) {
      // the connection's own handlers say when the server is gone
    } finally {
      r.inFlight = false;
      if (r.again) {
        r.again = false;
        requestReload(false);
      }
    }
  }

  function showTaskFilter(supported) {
    S.taskFilter = supported ? "yes" : "no";
    $("jobs-task-label").hidden = !supported;
  }

  async function loadJobs() {
    const status = $("jobs-status").value;
    const task = S.taskFilter === "yes" ? $("jobs-task").value.trim() : "";
    const before = S.jobsPages.length ? S.jobsPages[S.jobsPages.length - 1] : null;
    const query = new URLSearchParams({ limit: String(JOBS_PAGE) });
    if (status) query.set("status", status);
    if (task) query.set("task", task);
    if (before) query.set("before", before);
    const mark = recentMark();
    const r = await api("GET", `jobs?${query}`);
    if (r.status === 400 && task) { // this server cannot filter by task: hide the filter
      showTaskFilter(false);
      setText($("jobs-note"), "This server cannot filter by task.");
      return loadJobs();
    }
    if (!r.ok || !r.data || !Array.isArray(r.data.jobs)) {
      setText($("jobs-note"), `Could not load the jobs: ${errorText(r)}`);
      return undefined;
    }
    const paged = Object.prototype.hasOwnProperty.call(r.data, "next");
    if (S.taskFilter === "unknown" || (S.taskFilter === "yes") !== paged) showTaskFilter(paged);
    S.jobsNext = paged ? r.data.next : null;
    for (const rec of S.jobs.values()) if (rec.row) rec.row.remove();
    S.jobs = new Map();
    S.jobsOrder = [];
    S.jobsHeld = [];
    for (const job of r.data.jobs) {
      if (!job || typeof job.id !== "string") continue;
      if (task && job.task !== task) continue; // a server that ignored task= must not mislead
      const rec = jobRecord(job);
      rec.dirty = true;
      S.jobs.set(rec.id, rec);
      S.jobsOrder.push(rec.id);
    }
    S.jobsLoaded = true;
    replaySince(mark, applyJobs);
    S.jobsDirty = true;
    setText($("jobs-note"), "");
    schedule();
    return undefined;
  }

  async function loadDead() {
    const mark = recentMark();
    const r = await api("GET", `jobs?status=failed&limit=${DEAD_LIMIT}`);
    if (!r.ok || !r.data || !Array.isArray(r.data.jobs)) {
      setText($("dead-note"), `Could not load the failed jobs: ${errorText(r)}`);
      return;
    }
    for (const rec of S.dead.values()) if (rec.row) rec.row.remove();
    S.dead = new Map();
    for (const job of r.data.jobs) {
      if (!job || typeof job.id !== "string") continue;
      const rec = jobRecord(job);
      rec.dirty = true;
      S.dead.set(rec.id, rec);
    }
    S.deadFull = r.data.jobs.length >= DEAD_LIMIT;
    replaySince(mark, applyDead);
    S.deadDirty = true;
    schedule();
  }

  async function loadRunning() {
    const mark = recentMark();
    const r = await api("GET", "jobs?status=processing&limit=1000");
    if (!r.ok || !r.data || !Array.isArray(r.data.jobs)) return;
    const old = S.running;
    S.running = new Map();
    for (const job of r.data.jobs) {
      if (!job || typeof job.id !== "string") continue;
      const known = old.get(job.id);
      S.running.set(job.id, { id: job.id, worker: known ? known.worker : null,
        node: known ? known.node : null, task: job.task, priority: job.priority,
        attempt: job.attempts, since: ms(job.started_at) });
    }
    replaySince(mark, applyRunning);
    S.runningLoaded = true;
    S.runningDirty = true;
    schedule();
  }

  // ------------------------------------------------------------------ job detail

  function openDetail(id, known, clickEvent) {
    const d = S.detail;
    const panel = $("detail");
    // Focus moves into the panel (its Close button), and back to what opened it (the
    // job's link, the Find field) when it closes.
    const active = document.activeElement;
    if (active && active !== document.body && !panel.contains(active)) d.opener = active;
    d.id = id;
    d.job = known || null;
    d.progress = null;
    d.dirty = true;
    setText($("d-action-note"), "");
    renderDetail(true); // at once, in this frame: the click is answered before the fetch
    panel.hidden = false;
    $("d-close").focus({ preventScroll: true });
    if (clickEvent) measureClick(clickEvent);
    loadDetail();
  }

  // How long a click took to show its answer: from the input event to just after the
  // next frame was produced.  Written to <body data-click-ms> (read by the browser tests).
  function measureClick(event) {
    const t0 = event.timeStamp;
    window.requestAnimationFrame(() => {
      const channel = new MessageChannel();
      channel.port1.onmessage = () => {
        S.clicks += 1;
        document.body.dataset.clickMs = (performance.now() - t0).toFixed(1);
        document.body.dataset.clicks = String(S.clicks);
      };
      channel.port2.postMessage(null);
    });
  }

  async function loadDetail() {
    const d = S.detail;
    const id = d.id;
    if (!id) return;
    if (d.fetching) {
      d.again = true;
      return;
    }
    d.fetching = true;
    try {
      const r = await api("GET", `jobs/${encodeURIComponent(id)}`);
      if (d.id !== id) return;
      if (r.ok && r.data && r.data.id === id) {
        d.job = r.data;
        if (r.data.progress !== undefined) d.progress = r.data.progress;
      } else if (r.status === 404) {
        d.job = { id, status: "not found" };
        setText($("d-action-note"), `No job with id ${id}.`);
      } else {
        setText($("d-action-note"), `Could not load the job: ${errorText(r)}`);
      }
      d.dirty = true;
      schedule();
    } catch (e) {
      if (d.id === id) setText($("d-action-note"), "Could not reach the server.");
    } finally {
      d.fetching = false;
      if (d.again) {
        d.again = false;
        loadDetail();
      }
    }
  }

  function closeDetail() {
    const d = S.detail;
    const id = d.id;
    const panel = $("detail");
    const active = document.activeElement;
    const focusInside = !active || active === document.body || panel.contains(active);
    d.id = null;
    d.job = null;
    panel.hidden = true;
    let back = d.opener;
    d.opener = null;
    if (!focusInside) return; // the user has moved on: leave the focus where it is
    if (!back || !back.isConnected) { // its row was redrawn or dropped: the job's link shown now
      back = Array.from(document.querySelectorAll("button[data-job]"))
        .find((b) => b.dataset.job === id && b.offsetParent !== null) || null;
    }
    if (back) back.focus({ preventScroll: true });
  }

  // The panel starts below the header, whose height changes as it wraps (a narrow
  // window), so that the tabs stay in reach while it is open.  Set through the CSSOM,
  // which the CSP allows (it refuses style attributes in the markup).
  function placeDetail() {
    const h = Math.ceil($("top").getBoundingClientRect().height);
    const top = `${h}px`;
    if ($("detail").style.top !== top) $("detail").style.top = top;
  }

  async function jobAction(action) {
    const id = S.detail.id;
    if (!id) return;
    const note = $("d-action-note");
    setText(note, action === "retry" ? "retrying…" : "cancelling…");
    try {
      const r = await api("POST", `jobs/${encodeURIComponent(id)}/${action}`, {});
      if (S.detail.id !== id) return;
      if (r.ok) {
        setText(note, action === "retry" ? "Retried: queued again." : "Cancelled.");
        if (r.data && r.data.id === id) {
          S.detail.job = r.data;
          S.detail.dirty = true;
          schedule();
        }
      } else {
        setText(note, `${action === "retry" ? "Retry" : "Cancel"} refused: ${errorText(r)}`);
      }
      loadDetail();
    } catch (e) {
      setText(note, unreached(e));
    }
  }

  async function findJob() {
    const id = $("find-id").value.trim();
    const note = $("find-note");
    if (!id) return;
    setText(note, "looking…");
    try {
      const r = await api("GET", `jobs/${encodeURIComponent(id)}`);
      if (r.ok && r.data) {
        setText(note, "");
        openDetail(id, r.data, null);
      } else {
        setText(note, r.status === 404 ? `No job with id ${id}.` : errorText(r));
      }
    } catch (e) {
      setText(note, unreached(e));
    }
  }

  // ------------------------------------------------------------------ dead letters

  async function retryOne(id, button) {
    button.disabled = true;
    try {
      const r = await api("POST", `jobs/${encodeURIComponent(id)}/retry`, {});
      if (r.ok) {
        const rec = S.dead.get(id);
        if (rec && rec.row) rec.row.remove();
        S.dead.delete(id);
        S.deadDirty = true;
        setText($("dead-note"), `Retried ${id}.`);
      } else {
        setText($("dead-note"), `Retry of ${id} refused: ${errorText(r)}`);
        button.disabled = false;
      }
      schedule();
    } catch (e) {
      setText($("dead-note"), unreached(e));
      button.disabled = false;
    }
  }

  // Whether the server has POST /jobs/retry, from its OpenAPI document (asking the
  // endpoint itself would log a 405 in the console of a server without it).
  async function hasBulkRetry() {
    if (S.bulkRetry === null) {
      const r = await api("GET", "openapi.json");
      const paths = r.ok && r.data && r.data.paths ? r.data.paths : {};
      S.bulkRetry = Boolean(paths["/jobs/retry"] && paths["/jobs/retry"].post);
    }
    return S.bulkRetry;
  }

  function askRetryAll() {
    const n = S.dead.size;
    if (!n) {
      setText($("dead-note"), "No failed jobs to retry.");
      return;
    }
    setText($("dead-confirm-text"), `Retry ${S.deadFull ? "every failed job" : `all ${n} failed jobs`}?`);
    $("dead-confirm").hidden = false;
    $("dead-retry-all").hidden = true;
  }

  function hideConfirm() {
    $("dead-confirm").hidden = true;
    $("dead-retry-all").hidden = false;
  }

  async function retryAll() {
    hideConfirm();
    const note = $("dead-note");
    setText(note, "retrying…");
    try {
      if (await hasBulkRetry()) {
        const bulk = await api("POST", "jobs/retry", { status: "failed" }, 0);
        if (bulk.ok && bulk.data && typeof bulk.data.retried === "number") {
          setText(note, `Retried ${num(bulk.data.retried)} jobs.`);
        } else {
          setText(note, `Retry all refused: ${errorText(bulk)}`);
        }
        requestReload(true);
        return;
      }
      // No bulk endpoint on this server: retry each listed job, four at a time.
      const ids = Array.from(S.dead.keys());
      let next = 0;
      let done = 0;
      let refused = 0;
      let stop = "";
      const one = async () => {
        while (next < ids.length && !stop) {
          const id = ids[next];
          next += 1;
          const r = await api("POST", `jobs/${encodeURIComponent(id)}/retry`, {});
          if (r.ok) done += 1;
          else if (r.status === 429 || r.status === 503 || r.status === 401) stop = errorText(r);
          else refused += 1;
          setText(note, `Retried ${done} of ${ids.length}…`);
        }
      };
      await Promise.all([one(), one(), one(), one()]);
      setText(note, `Retried ${done} of ${ids.length}${refused ? `; ${refused} refused (no longer failed?)` : ""}${stop ? `; stopped: ${stop}` : ""}.`);
      requestReload(true);
    } catch (e) {
      setText(note, unreached(e));
    }
  }

  // ------------------------------------------------------------------ the chart

  function addSample(at, m) {
    const t = Number(at);
    const sample = { at: t, completed: Number(m.completed), failed: Number(m.failed),
      enqueued: Number(m.enqueued) };
    if (!isFinite(t) || !isFinite(sample.completed)) return;
    const base = S.base;
    if (base && sample.completed < base.completed) S.series = []; // the server restarted
    if (!base || sample.completed < base.completed) {
      S.base = sample;
      S.chartDirty = true;
      return;
    }
    const dt = t - base.at;
    if (dt < 0.5) return; // too close to the previous sample for a rate
    S.series.push({
      at: t,
      done: (sample.completed - base.completed) / dt,
      failed: Math.max(0, (sample.failed - base.failed) / dt),
      in: Math.max(0, (sample.enqueued - base.enqueued) / dt),
    });
    if (S.series.length > CHART_POINTS) S.series.splice(0, S.series.length - CHART_POINTS);
    S.base = sample;
    S.chartDirty = true;
  }

  function resetSeries(samples) {
    S.series = [];
    S.base = null;
    for (const s of samples) if (s && typeof s === "object") addSample(s.at, s);
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const f of [1, 2, 5, 10]) if (v <= f * p) return f * p;
    return 10 * p;
  }

  function renderChart() {
    const pts = S.series;
    let max = 0;
    for (const p of pts) max = Math.max(max, p.done, p.failed);
    const top = niceMax(max);
    const step = 120 / (CHART_POINTS - 1);
    const line = (key) => pts.map((p, i) => {
      const x = 120 - (pts.length - 1 - i) * step;
      const y = 39 - (p[key] / top) * 37;
      return `${x.toFixed(2)},${y.toFixed(2)}`;
    }).join(" ");
    $("chart-done").setAttribute("points", line("done"));
    $("chart-failed").setAttribute("points", line("failed"));
    $("chart").dataset.points = String(pts.length);
    setText($("chart-max"), `${num(top)}/s`);
    const last = pts[pts.length - 1];
    let peak = 0;
    for (const p of pts) peak = Math.max(peak, p.done);
    setText($("chart-caption"), last ? `now ${rate(last.done)} · peak ${rate(peak)} · last ${pts.length} s` : "waiting for samples");
  }

  // ------------------------------------------------------------------ rendering

  function render() {
    if (S.metricsDirty) {
      S.metricsDirty = false;
      renderMetrics();
      S.runningDirty = true; // the Workers panel's busy of total (and each node's)
    }
    if (S.chartDirty) {
      S.chartDirty = false;
      renderChart();
    }
    if (S.tab === "overview") renderFeed();
    if (S.jobsDirty && S.tab === "jobs") renderJobs();
    if (S.deadDirty) renderDead();
    if (S.runningDirty && S.tab === "workers") renderWorkers();
    if (S.periodic.dirty) renderPeriodic();
    if (S.detail.dirty && S.detail.id) renderDetail(false);
    // How many jobs and dead letters the page holds, drawn or not (read by the browser
    // tests: both lists are capped where records are added).
    keep($("jobs"), S.jobs.size);
    keep($("dead"), S.dead.size);
  }

  function keep(table, n) {
    const v = String(n);
    if (table.dataset.kept !== v) table.dataset.kept = v;
  }

  function renderMetrics() {
    const m = S.metrics;
    if (!m) return;
    const queued = m.queued && typeof m.queued === "object" ? m.queued : {};
    let total = 0;
    for (const p of PRIORITIES) total += Number(queued[p]) || 0;
    setText($("m-queued"), num(total));
    setText($("m-queued-split"), PRIORITIES.map((p) => `${p} ${num(queued[p])}`).join(" · "));
    setText($("m-scheduled"), num(m.scheduled));
    setText($("m-processing"), num(m.processing));
    setText($("m-busy"), `${num(m.busy_workers)} of ${num(m.workers)} workers busy`);
    setText($("m-completed"), num(m.completed));
    setText($("m-failed"), num(m.failed));
    setText($("m-enqueued"), num(m.enqueued));
    setText($("m-retried"), num(m.retried));
    setText($("m-cancelled"), `cancelled ${num(m.cancelled)}`);
    setText($("m-rejected"), num(m.rejected));
    const last = S.series[S.series.length - 1];
    setText($("m-rate-done"), last ? `${rate(last.done)} now` : "");
    setText($("m-rate-failed"), last ? `${rate(last.failed)} now` : "");
    setText($("m-rate-in"), last ? `${rate(last.in)} now` : "");
    const body = $("latency-body");
    const byPriority = m.by_priority && typeof m.by_priority === "object" ? m.by_priority : null;
    const rows = [["all", total, m]];
    for (const p of PRIORITIES) rows.push([p, queued[p], byPriority ? byPriority[p] || {} : {}]);
    while (body.rows.length < rows.length) {
      const tr = body.insertRow();
      for (let i = 0; i < 6; i += 1) tr.insertCell();
    }
    rows.forEach(([name, q, src], i) => {
      const cells = body.rows[i].cells;
      body.rows[i].dataset.priority = name;
      setText(cells[0], name);
      setText(cells[1], num(q));
      setText(cells[2], secs(src.wait_p50));
      setText(cells[3], secs(src.wait_p99));
      setText(cells[4], secs(src.run_p50));
      setText(cells[5], secs(src.run_p99));
    });
    const uptime = Number(m.uptime);
    setText($("uptime"), isFinite(uptime) ? `Server up ${secs(uptime)}; percentiles over the last 4,096 jobs.` : "");
    setText($("dead-count"), S.deadFull ? `${S.dead.size}+` : String(S.dead.size));
    S.runningDirty = true;
  }

  function renderFeed() {
    const body = $("feed-body");
    const fresh = S.feedNew;
    if (fresh.length && !S.hold.feed) {
      S.feedNew = [];
      const frag = document.createDocumentFragment();
      for (let i = fresh.length - 1; i >= 0; i -= 1) frag.appendChild(feedRow(fresh[i]));
      body.insertBefore(frag, body.firstChild);
      while (body.rows.length > FEED_ROWS) body.lastChild.remove();
    }
    let note = `last ${FEED_ROWS} events`;
    if (S.feedPaused) note = `paused · ${num(S.feedSkipped)} events not shown`;
    else if (S.hold.feed && fresh.length) note = "new events held while the pointer is over the list";
    setText($("feed-note"), note);
  }

  function feedRow(ev) {
    const tr = el("tr", `ev-${ev.type}`);
    tr.appendChild(el("td", "time", clock(Number(ev.at) * 1000, true)));
    tr.appendChild(el("td", "type", ev.type));
    const idCell = el("td", "id");
    idCell.appendChild(jobLink(ev.job_id));
    tr.appendChild(idCell);
    tr.appendChild(clipCell(ev.task));
    tr.appendChild(el("td", "", ev.priority));
    tr.appendChild(el("td", "num", ev.worker === null || ev.worker === undefined ? "" : ev.worker));
    tr.appendChild(el("td", "num", ev.attempt));
    // The last column: a failure's error, or a progress report (not an error: not red).
    let last;
    if (ev.type === "progress") {
      const note = typeof ev.note === "string" && ev.note ? ev.note : "";
      const done = typeof ev.fraction === "number" ? `${Math.round(ev.fraction * 100)} %` : "";
      last = el("td", "progress", [done, firstLine(note)].filter(Boolean).join(" "));
      if (note) last.title = note;
    } else {
      last = el("td", "error", firstLine(ev.error));
      if (typeof ev.error === "string") last.title = ev.error;
    }
    tr.appendChild(last);
    return tr;
  }

  function jobRow(rec) {
    const tr = el("tr");
    const idCell = el("td", "id");
    idCell.appendChild(jobLink(rec.id));
    tr.appendChild(idCell);
    tr.appendChild(el("td", "clip")); // the task
    for (let i = 0; i < 5; i += 1) tr.appendChild(el("td"));
    tr.dataset.id = rec.id;
    rec.row = tr;
    return tr;
  }

  function fillJobRow(rec) {
    const c = rec.row.cells;
    clipText(c[1], rec.task);
    setText(c[2], rec.priority);
    setText(c[3], rec.status);
    c[3].className = `status s-${rec.status}`;
    setText(c[4], rec.attempts);
    setText(c[5], clock(rec.created));
    setText(c[6], clock(rec.finished));
    rec.dirty = false;
  }

  // A row leaves the list (its job left the status the list is filtered by).
  function dropJob(id) {
    const rec = S.jobs.get(id);
    if (rec && rec.row) rec.row.remove();
    S.jobs.delete(id);
    for (const list of [S.jobsOrder, S.jobsHeld]) {
      const i = list.indexOf(id);
      if (i >= 0) list.splice(i, 1);
    }
    S.jobsDirty = true;
  }

  function renderJobs() {
    S.jobsDirty = false;
    const body = $("jobs-body");
    trimJobs(); // newest first, capped at a page (applyJobs keeps it so)
    // Walk from the bottom up, each row placed just above the one after it: rows already
    // in place are not moved, so a new job costs one insertion.
    let anchor = null;
    for (let i = S.jobsOrder.length - 1; i >= 0; i -= 1) {
      const rec = S.jobs.get(S.jobsOrder[i]);
      if (!rec) continue;
      if (!rec.row) jobRow(rec);
      if (rec.row.parentNode !== body || rec.row.nextSibling !== anchor) body.insertBefore(rec.row, anchor);
      if (rec.dirty) fillJobRow(rec);
      anchor = rec.row;
    }
    $("jobs-newest").disabled = S.jobsPages.length === 0;
    setText($("jobs-held"), S.jobsHeld.length ? `${S.jobsHeld.length} new jobs held while the pointer is over the list` : "");
    $("jobs-older").hidden = !S.jobsNext;
    if (!S.jobsOrder.length) setText($("jobs-note"), "No jobs.");
    else if ($("jobs-note").textContent === "No jobs.") setText($("jobs-note"), "");
  }

  function renderDead() {
    S.deadDirty = false;
    const body = $("dead-body");
    const ordered = Array.from(S.dead.values()).sort((a, b) => (b.finished || 0) - (a.finished || 0));
    let anchor = null;
    for (let i = ordered.length - 1; i >= 0; i -= 1) {
      const rec = ordered[i];
      if (!rec.row) {
        const tr = el("tr");
        const idCell = el("td", "id");
        idCell.appendChild(jobLink(rec.id));
        tr.appendChild(idCell);
        tr.appendChild(el("td", "clip")); // the task
        for (let k = 0; k < 3; k += 1) tr.appendChild(el("td"));
        const actions = el("td");
        const retry = el("button", "small", "Retry");
        retry.type = "button";
        retry.dataset.retry = rec.id;
        actions.appendChild(retry);
        tr.appendChild(actions);
        tr.dataset.id = rec.id;
        rec.row = tr;
        rec.dirty = true;
      }
      if (rec.dirty) {
        const c = rec.row.cells;
        clipText(c[1], rec.task);
        setText(c[2], rec.attempts);
        setText(c[3], when(rec.finished));
        setText(c[4], firstLine(rec.error));
        if (typeof rec.error === "string") c[4].title = rec.error;
        c[4].className = "error";
        rec.dirty = false;
      }
      if (rec.row.nextSibling !== anchor || rec.row.parentNode !== body) body.insertBefore(rec.row, anchor);
      anchor = rec.row;
    }
    setText($("dead-count"), S.deadFull ? `${S.dead.size}+` : String(S.dead.size));
    if (!$("dead-note").textContent || $("dead-note").textContent.startsWith("Showing")) {
      const n = S.dead.size;
      setText($("dead-note"), `Showing ${n}${S.deadFull ? " (the newest)" : ""} failed job${n === 1 ? "" : "s"}.`);
    }
  }

  function renderWorkers() {
    S.runningDirty = false;
    const m = S.metrics || {};
    // On Redis the metrics name this node and give each live node's workers (`nodes`):
    // the boxes are grouped by node.  A queue of one process has no `nodes`.
    const nodes = m.nodes && typeof m.nodes === "object" ? m.nodes : null;
    let summary = `${num(m.busy_workers)} busy of ${num(Number(m.workers) || 0)}`;
    if (nodes) {
      const n = Object.values(nodes).filter((v) => v && Number(v.workers) > 0).length;
      summary += ` · ${n} node${n === 1 ? "" : "s"} with workers`;
    }
    setText($("workers-summary"), summary);
    if (nodes) renderNodeSlots(m, nodes);
    else renderSlots(m);
    renderRunning(nodes ? (typeof m.node === "string" ? m.node : "") : null);
  }

  // `count` boxes in `box` (added or removed at the end).
  function fitSlots(box, count) {
    while (box.childNodes.length < count) box.appendChild(el("span", "slot"));
    while (box.childNodes.length > count) box.lastChild.remove();
  }

  function setSlot(slot, label, title, job, worker) {
    setText(slot, label);
    slot.className = job ? "slot busy" : "slot";
    slot.title = title;
    if (job) slot.dataset.job = job.id;
    else delete slot.dataset.job;
    if (worker === null) delete slot.dataset.worker;
    else slot.dataset.worker = String(worker);
  }

  // One process's workers, numbered.
  function renderSlots(m) {
    const total = Number(m.workers) || 0;
    const slots = $("slots");
    if (slots.classList.contains("grouped")) {
      slots.classList.remove("grouped");
      slots.replaceChildren();
    }
    numberedSlots(slots, total, S.running.values(), Number(m.busy_workers) || 0, 0);
  }

  // Boxes 0 to total - 1, each job whose worker number the page knows in its box.  Of the
  // `reported` busy workers (the metrics'), those beyond the boxes filled whose job the
  // page cannot place (a job that started before the page loaded: `jobs` without a
  // worker number, and up to `unknown` more whose node it does not know either) make the
  // other boxes say "?", not "idle": which of them are busy is not known.  Returns how
  // many are busy, and how many of the `unknown` that took.
  function numberedSlots(box, total, jobs, reported, unknown) {
    const byWorker = new Map();
    let floating = 0;
    for (const r of jobs) {
      if (typeof r.worker === "number" && r.worker >= 0 && r.worker < total) byWorker.set(r.worker, r);
      else floating += 1;
    }
    fitSlots(box, total);
    const unseen = Math.min(Math.max(0, reported - byWorker.size), floating + unknown);
    for (let i = 0; i < total; i += 1) {
      const r = byWorker.get(i);
      const slot = box.childNodes[i];
      if (r) setSlot(slot, `${i}: ${r.task}`, `${r.id} (${r.task})`, r, i);
      else if (unseen) {
        setSlot(slot, `${i}: ?`, `${unseen} busy worker(s) whose job this page has not seen start`, null, i);
      } else setSlot(slot, `${i}: idle`, "idle", null, i);
    }
    return { busy: byWorker.size + unseen, took: Math.max(0, unseen - floating) };
  }

  // Redis: a group of boxes per live node (and per node still running a job this page saw
  // start).  This server's own workers are numbered, as their events say; another
  // node's events carry no worker number (the claim that writes its `started` comes
  // before a worker takes the job), so its boxes are its busy workers with their jobs,
  // then its idle ones.
  function renderNodeSlots(m, nodes) {
    const here = typeof m.node === "string" ? m.node : "";
    const slots = $("slots");
    if (!slots.classList.contains("grouped")) {
      slots.classList.add("grouped");
      slots.replaceChildren();
    }
    const byNode = new Map();
    let unplaced = 0; // running jobs whose node this page has not seen (loaded, not started)
    for (const r of S.running.values()) {
      if (r.node === null || r.node === undefined) {
        unplaced += 1;
        continue;
      }
      if (!byNode.has(r.node)) byNode.set(r.node, []);
      byNode.get(r.node).push(r);
    }
    const ids = Object.keys(nodes).filter((id) => {
      const v = nodes[id];
      return v && typeof v === "object" && (Number(v.workers) > 0 || byNode.has(id));
    });
    for (const id of byNode.keys()) if (!Object.prototype.hasOwnProperty.call(nodes, id)) ids.push(id);
    ids.sort((a, b) => Number(b === here) - Number(a === here) || (a < b ? -1 : a > b ? 1 : 0));
    const groups = new Map();
    for (const g of Array.from(slots.children)) {
      if (ids.includes(g.dataset.node)) groups.set(g.dataset.node, g);
      else g.remove();
    }
    ids.forEach((id, index) => {
      let g = groups.get(id);
      if (!g) {
        g = el("div", "node-group");
        g.dataset.node = id;
        g.appendChild(el("div", "node-head"));
        g.appendChild(el("div", "slots"));
      }
      const at = slots.children[index] || null;
      if (at !== g) slots.insertBefore(g, at);
      const info = Object.prototype.hasOwnProperty.call(nodes, id) ? nodes[id] : null;
      const total = info ? Math.max(0, Number(info.workers) || 0) : 0;
      const reported = info ? Math.max(0, Number(info.busy_workers) || 0) : 0;
      const jobs = (byNode.get(id) || []).sort((a, b) => (a.since || 0) - (b.since || 0));
      const box = g.lastChild;
      let busy;
      if (id === here) {
        const shown = numberedSlots(box, total, jobs, reported, unplaced);
        unplaced -= shown.took;
        busy = shown.busy;
      } else {
        // Busy workers whose job this page has not seen start: at most the running jobs
        // whose node it does not know (the rest is a heartbeat not yet sent).
        const unseen = Math.min(unplaced, Math.max(0, reported - jobs.length));
        unplaced -= unseen;
        fitSlots(box, Math.max(total, jobs.length + unseen));
        let i = 0;
        for (const r of jobs) setSlot(box.childNodes[i++], r.task, `${r.id} (${r.task})`, r, null);
        for (let k = 0; k < unseen; k += 1) {
          setSlot(box.childNodes[i++], "?", "a busy worker whose job this page has not seen start", null, null);
        }
        while (i < box.childNodes.length) setSlot(box.childNodes[i++], "idle", "idle", null, null);
        busy = jobs.length + unseen;
      }
      const where = id === here ? " (this server)" : "";
      setText(g.firstChild, info
        ? `node ${id}${where} · ${busy} busy of ${total}`
        : `node ${id}${where} · ${jobs.length} running · no heartbeat within a lease`);
    });
  }

  // `here`: null for a queue of one process (no node column), else this server's node.
  function renderRunning(here) {
    const grouped = here !== null;
    $("running-node").hidden = !grouped;
    $("running-nodes-note").hidden = !grouped;
    const body = $("running-body");
    const rows = Array.from(S.running.values()).sort((a, b) => {
      if (grouped) {
        const na = a.node === here ? "" : a.node || "~";
        const nb = b.node === here ? "" : b.node || "~";
        if (na !== nb) return na < nb ? -1 : 1;
      }
      const wa = typeof a.worker === "number" ? a.worker : 1e9;
      const wb = typeof b.worker === "number" ? b.worker : 1e9;
      return wa - wb || (a.since || 0) - (b.since || 0);
    });
    const frag = document.createDocumentFragment();
    for (const r of rows.slice(0, 200)) {
      const tr = el("tr");
      const known = typeof r.node === "string";
      if (grouped) tr.appendChild(clipCell(known ? r.node : "?", "id"));
      let worker = typeof r.worker === "number" ? r.worker : "?";
      if (grouped && known && r.node !== here && worker === "?") worker = "–";
      tr.appendChild(el("td", "num", worker));
      const idCell = el("td", "id");
      idCell.appendChild(jobLink(r.id));
      tr.appendChild(idCell);
      tr.appendChild(clipCell(r.task));
      tr.appendChild(el("td", "", r.priority));
      tr.appendChild(el("td", "num", r.attempt));
      tr.appendChild(el("td", "num", isFinite(r.since) ? ago(r.since) : "–"));
      frag.appendChild(tr);
    }
    body.replaceChildren(frag);
  }

  function renderPeriodic() {
    const P = S.periodic;
    P.dirty = false;
    setText($("periodic-count"), String(P.tasks.length));
    if (S.tab !== "periodic") return;
    const body = $("periodic-body");
    while (body.rows.length < P.tasks.length) {
      const tr = body.insertRow();
      for (let i = 0; i < 7; i += 1) tr.insertCell();
      tr.cells[0].className = "clip";
      tr.cells[1].className = "clip wide"; // a cron schedule and its time zone
      tr.cells[5].className = "id";
    }
    while (body.rows.length > P.tasks.length) body.lastChild.remove();
    const now = Date.now();
    P.tasks.forEach((t, i) => {
      const tr = body.rows[i];
      const c = tr.cells;
      tr.dataset.task = t.name;
      clipText(c[0], t.name);
      clipText(c[1], typeof t.schedule === "string"
        ? `cron ${t.schedule} (${typeof t.tz === "string" ? t.tz : "UTC"})`
        : `every ${span(t.every)}`);
      setText(c[2], t.priority);
      setText(c[3], isFinite(t.next) ? when(t.next) : "–");
      let left = "–";
      if (isFinite(t.next)) left = t.next > now ? `in ${until((t.next - now) / 1000)}` : "due";
      setText(c[4], left);
      const last = P.last.get(t.name);
      const id = last ? last.id : "";
      if ((c[5].firstChild ? c[5].firstChild.dataset.job : "") !== id) {
        c[5].replaceChildren(...(last ? [jobLink(id)] : []));
      }
      setText(c[6], last ? last.status : "never run");
      c[6].className = last ? `status s-${last.status}` : "muted";
    });
    let note = P.note;
    if (!note && P.loaded) note = P.tasks.length ? "" : "This server has no periodic tasks.";
    setText($("periodic-note"), note);
  }

  function renderDetail(immediate) {
    const d = S.detail;
    d.dirty = false;
    const job = d.job || {};
    setText($("d-id"), d.id);
    const status = typeof job.status === "string" ? job.status : "loading…";
    const badge = $("d-status");
    setText(badge, status);
    badge.className = `status s-${status}`;
    setText($("d-task"), job.task);
    setText($("d-priority"), job.priority ? `priority ${job.priority}` : "");
    $("d-retry").hidden = !RETRYABLE.has(status);
    $("d-cancel").hidden = !CANCELLABLE.has(status);
    const full = Object.prototype.hasOwnProperty.call(job, "created_at");
    setText($("d-attempts"), full ? `${job.attempts} of ${job.max_retries === null ? "?" : job.max_retries + 1}` : "");
    setText($("d-timeout"), full ? (job.timeout === null || job.timeout === undefined ? "none" : secs(job.timeout)) : "");
    setText($("d-created"), full ? when(ms(job.created_at)) : "");
    setText($("d-scheduled"), full ? when(ms(job.scheduled_for)) : "");
    setText($("d-started"), full ? when(ms(job.started_at)) : "");
    setText($("d-finished"), full ? when(ms(job.finished_at)) : "");
    setText($("d-payload"), full ? pretty(job.payload) : (immediate ? "loading…" : ""));
    setText($("d-result"), full ? pretty(job.result) : "");
    const error = typeof job.error === "string" ? job.error : "";
    setText($("d-error"), error);
    $("d-error-wrap").hidden = !error;
    const tb = typeof job.traceback === "string" ? job.traceback : "";
    setText($("d-traceback"), tb);
    $("d-traceback-wrap").hidden = !tb;
    const progress = d.progress && typeof d.progress === "object" ? d.progress : null;
    $("d-progress-wrap").hidden = !progress;
    if (progress) {
      const f = Number(progress.fraction);
      $("d-progress").value = isFinite(f) ? Math.min(1, Math.max(0, f)) : 0;
      setText($("d-progress-note"), `${isFinite(f) ? Math.round(f * 100) : "?"} %${progress.note ? ` · ${progress.note}` : ""}`);
    }
    $("detail").dataset.status = status;
  }

  // ------------------------------------------------------------------ tabs and wiring

  function showTab(name) {
    S.tab = name;
    document.body.dataset.tab = name;
    for (const b of $("tabs").querySelectorAll("button[data-tab]")) {
      b.setAttribute("aria-pressed", String(b.dataset.tab === name));
    }
    for (const v of ["overview", "jobs", "dead", "workers", "periodic"]) $(`view-${v}`).hidden = v !== name;
    if (name === "jobs") {
      S.jobsDirty = true;
      if (S.stale.jobs) {
        S.stale.jobs = false;
        reloadJobsView();
      }
    }
    if (name === "dead") S.deadDirty = true;
    if (name === "workers") {
      S.runningDirty = true;
      if (S.stale.running) {
        S.stale.running = false;
        loadRunning().catch(() => {});
      }
    }
    if (name === "overview") S.metricsDirty = true;
    if (name === "periodic") {
      S.periodic.dirty = true;
      if (nextRunPassed()) refreshTasks();
    }
    schedule();
  }

  function reloadJobsView() {
    loadJobs().catch(() => setText($("jobs-note"), "Could not reach the server."));
  }

  function wire() {
    document.addEventListener("click", (event) => {
      const target = event.target instanceof Element ? event.target : null;
      if (!target) return;
      const link = target.closest("[data-job]");
      if (link) {
        const id = link.dataset.job;
        const known = S.jobs.get(id) || S.dead.get(id) || S.running.get(id) || null;
        openDetail(id, known ? { id, task: known.task, status: known.status, priority: known.priority } : null, event);
        return;
      }
      const retry = target.closest("[data-retry]");
      if (retry) {
        retryOne(retry.dataset.retry, retry);
        return;
      }
      const tab = target.closest("#tabs button[data-tab]");
      if (tab) showTab(tab.dataset.tab);
    });
    $("auth-form").addEventListener("submit", (e) => { // never a navigation (form-action 'none')
      e.preventDefault();
      useToken();
    });
    $("d-close").addEventListener("click", closeDetail);
    document.addEventListener("keydown", (e) => { if (e.key === "Escape" && S.detail.id) closeDetail(); });
    $("d-retry").addEventListener("click", () => jobAction("retry"));
    $("d-cancel").addEventListener("click", () => jobAction("cancel"));
    $("find-go").addEventListener("click", findJob);
    $("find-id").addEventListener("keydown", (e) => { if (e.key === "Enter") findJob(); });
    $("jobs-status").addEventListener("change", () => { S.jobsPages = []; reloadJobsView(); });
    $("jobs-task").addEventListener("change", () => { S.jobsPages = []; reloadJobsView(); });
    $("jobs-older").addEventListener("click", () => {
      if (!S.jobsNext) return;
      S.jobsPages.push(S.jobsNext);
      reloadJobsView();
    });
    $("jobs-newest").addEventListener("click", () => { S.jobsPages = []; reloadJobsView(); });
    $("dead-retry-all").addEventListener("click", askRetryAll);
    $("dead-confirm-no").addEventListener("click", hideConfirm);
    $("dead-confirm-yes").addEventListener("click", retryAll);
    $("feed-pause").addEventListener("click", () => {
      S.feedPaused = !S.feedPaused;
      S.feedSkipped = 0;
      $("feed-pause").setAttribute("aria-pressed", String(S.feedPaused));
      setText($("feed-pause"), S.feedPaused ? "Resume" : "Pause");
      schedule();
    });
    const holdWhileOver = (node, key, release) => {
      node.addEventListener("pointerenter", () => { S.hold[key] = true; });
      node.addEventListener("pointerleave", () => {
        S.hold[key] = false;
        release();
        schedule();
      });
    };
    holdWhileOver($("feed"), "feed", () => {});
    holdWhileOver($("jobs"), "jobs", () => {
      S.jobsOrder = S.jobsHeld.reverse().concat(S.jobsOrder);
      S.jobsHeld = [];
      trimJobs();
      S.jobsDirty = true;
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && S.dropped) requestReload(true);
    });
    placeDetail();
    new ResizeObserver(placeDetail).observe($("top"));
  }

  function start() {
    takeToken();
    wire();
    window.setInterval(tick, 1000);
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
