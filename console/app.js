// The pulse-ledger web console: pages drawn from the JSON API of the
// server that served this script (spec/console.md). The token is kept in
// this tab's session storage and sent as a bearer header, never in a URL.
"use strict";

const main = document.getElementById("main");
const statusLine = document.getElementById("status");
const TOKEN_KEY = "pulse-ledger-token";
const JOB_STATES = ["", "queued", "held", "running", "retrying", "succeeded", "dead", "cancelled"];

// The live view of the page on screen; stopped when the page changes.
let live = null;

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token()) h["Authorization"] = "Bearer " + token();
  return h;
}

// An API error as the server words it: {code, message}.
class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.code + ": " + body.message : "HTTP " + status);
    this.status = status;
    this.code = body && body.code;
  }
}

async function api(path, options) {
  const r = await fetch("/api/v1/" + path, Object.assign({ headers: headers() }, options || {}));
  let body = null;
  try { body = await r.json(); } catch (_) { body = null; }
  if (!r.ok) throw new ApiError(r.status, body);
  return body;
}

async function act(path) {
  return api(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: "{}",
  });
}

// Server-sent events over fetch (EventSource cannot send the token):
// calls onEvent(name, data) per event until stopped or the stream ends.
function follow(path, onEvent, onEnd) {
  const abort = new AbortController();
  (async () => {
    try {
      const r = await fetch("/api/v1/" + path, { headers: headers(), signal: abort.signal });
      if (!r.ok) {
        let body = null;
        try { body = await r.json(); } catch (_) { body = null; }
        throw new ApiError(r.status, body);
      }
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let name = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) name = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (data.length) onEvent(name, data.join("\n"));
        }
      }
      if (onEnd) onEnd(null);
    } catch (e) {
      if (e.name !== "AbortError" && onEnd) onEnd(e);
    }
  })();
  return () => abort.abort();
}

// Elements: el("tag", {attr: value}, children…); text children are text.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// A time in the browser's zone, with the exact UTC on hover.
function time(ms) {
  if (!ms) return el("span", { class: "muted" }, "—");
  const d = new Date(Number(ms));
  return el("time", { datetime: d.toISOString(), title: d.toISOString() }, d.toLocaleString());
}

function short(s, n) {
  s = String(s || "");
  return s.length > (n || 24) ? s.slice(0, n || 24) + "…" : s;
}

function stateBadge(state) {
  return el("span", { class: "state state-" + state }, state);
}

function show(content) {
  main.replaceChildren(...[content].flat().filter((c) => c !== null && c !== undefined));
}

function say(text, isError) {
  statusLine.textContent = text || "";
  statusLine.className = isError ? "error" : "";
}

function failure(e) {
  if (e.status === 401 || e.status === 403) {
    return el("div", { class: "notice error" },
      el("p", {}, e.message),
      el("p", {}, "Enter a token with the read scope above (actions need their own scopes)."));
  }
  return el("p", { class: "notice error" }, e.message);
}

function content(value) {
  if (value === null || value === undefined) return el("span", { class: "muted" }, "none");
  if ("json" in value) return el("pre", { class: "json" }, JSON.stringify(value.json, null, 2));
  if ("text" in value) return el("pre", {}, value.text);
  return el("pre", { class: "muted" }, "base64: " + value.base64);
}

function table(head, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows));
}

// ---- pages ----

function overviewPage() {
  const view = el("section", { "aria-labelledby": "overview-title" },
    el("h1", { id: "overview-title" }, "Overview"), el("p", {}, "Connecting…"));
  show(view);
  const draw = (o) => {
    const q = o.queues;
    view.replaceChildren(
      el("h1", { id: "overview-title" }, "Overview"),
      el("div", { class: "cards" },
        card("Ready", q.ready, "#/jobs?state=queued"),
        card("Delayed", q.delayed, "#/jobs?state=retrying"),
        card("Running", q.running, "#/jobs?state=running"),
        card("Held", q.held, "#/jobs?state=held"),
        card("Succeeded*", (o.finished_since_start || {}).succeeded || 0, "#/jobs?state=succeeded"),
        card("Dead*", (o.finished_since_start || {}).dead || 0, "#/jobs?state=dead"),
        card("Cancelled*", (o.finished_since_start || {}).cancelled || 0, "#/jobs?state=cancelled"),
        card("Plugin sessions", o.plugins.sessions, "#/plugins"),
        card("Log size", o.log.size, "#/log")),
      el("p", { class: "muted" }, "* finished on this server since it started."),
      el("h2", {}, "Last minutes"),
      activityChart(o.activity || []),
      el("h2", {}, "Deepest queues"),
      q.deepest.length
        ? table(["Handler", "Ready"], q.deepest.map((d) => el("tr", {},
            el("td", {}, el("a", { href: "#/handler/" + d.handler }, short(d.handler, 40))),
            el("td", { class: "num" }, d.ready))))
        : el("p", { class: "muted" }, "No job is waiting."),
      el("h2", {}, "Latest checkpoint"),
      o.checkpoint ? el("pre", { class: "note" }, o.checkpoint.note) : el("p", {}, "none"),
      el("h2", {}, "Nodes"),
      table(["Name", "Listen", "Live", "Log size", "Sessions", "Running", "Seen"],
        o.nodes.nodes.map((n) => el("tr", {},
          el("td", {}, n.name || "(single server)"), el("td", {}, n.listen),
          el("td", {}, n.live ? "yes" : "gone"), el("td", { class: "num" }, n.log_size),
          el("td", { class: "num" }, n.sessions), el("td", { class: "num" }, n.running),
          el("td", {}, time(n.last_seen_ms))))),
      el("p", { class: "muted" }, "Updated ", time(o.at_ms)));
  };
  // Drawn at once from one read, then kept live.
  api("overview").then(draw, (e) => view.replaceChildren(failure(e)));
  live = follow("overview/live", (name, data) => {
    if (name === "overview") draw(JSON.parse(data));
    else if (name === "error") say(data, true);
  }, (e) => { if (e) view.replaceChildren(failure(e)); });
}

// Jobs started per second (bars) over the last minutes, with the latest
// throughput and enqueue→start waits in words (also for screen readers).
function activityChart(points) {
  if (points.length === 0) {
    return el("p", { class: "muted" }, "Collecting: the first figures come after 10 seconds.");
  }
  const last = points[points.length - 1];
  const ms = (v) => (v === null || v === undefined ? "—" : v < 1 ? v.toFixed(1) + " ms" : Math.round(v) + " ms");
  const summary = "Last 5 s: " + last.enqueued_per_s + " enqueued/s, " + last.started_per_s + " started/s, " +
    last.ended_per_s + " ended/s; run_at → start p50 " + ms(last.wait_p50_ms) + ", p99 " + ms(last.wait_p99_ms) + ".";
  const NS = "http://www.w3.org/2000/svg";
  const w = 600, h = 80;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", "0 0 " + w + " " + h);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "Jobs started per second, last " + points.length * 5 + " seconds. " + summary);
  const top = Math.max(1, ...points.map((p) => p.started_per_s));
  const bw = w / 120;
  points.forEach((p, i) => {
    const bh = Math.round((p.started_per_s / top) * (h - 2));
    const r = document.createElementNS(NS, "rect");
    r.setAttribute("x", String(w - (points.length - i) * bw));
    r.setAttribute("y", String(h - bh));
    r.setAttribute("width", String(Math.max(1, bw - 1)));
    r.setAttribute("height", String(bh));
    r.setAttribute("fill", "#1f5fbf");
    const t = document.createElementNS(NS, "title");
    t.textContent = new Date(p.at_ms).toLocaleTimeString() + ": " + p.started_per_s + " started/s, wait p99 " + ms(p.wait_p99_ms);
    r.append(t);
    svg.append(r);
  });
  return el("figure", { class: "activity" }, svg,
    el("figcaption", {}, summary, el("span", { class: "muted" }, " Peak " + top + " started/s in the last " + Math.round(points.length * 5 / 60 * 10) / 10 + " min.")));
}

function card(label, value, href) {
  return el("a", { class: "card", href }, el("span", { class: "card-value" }, value),
    el("span", { class: "card-label" }, label));
}

// A handler given by DID, or by name (resolved through the registry: an
// exact name that one handler has).
async function handlerDid(text) {
  if (!text || text.startsWith("did:")) return text;
  const r = await api("subjects?limit=50&name_prefix=" + encodeURIComponent(text));
  const exact = r.subjects.filter((x) => x.name === text);
  if (exact.length === 1) return exact[0].did;
  throw new ApiError(400, { code: "unknown_handler_name",
    message: exact.length ? "several handlers are named " + JSON.stringify(text) + ": give its DID (see Handlers)"
      : "no handler is named " + JSON.stringify(text) });
}

async function jobsPage(params) {
  const state = params.get("state") || "";
  const handler = params.get("handler") || "";
  const since = params.get("since") || "";
  const after = params.get("after") || "";
  const form = el("form", { class: "filters", onsubmit: (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    if (form.state.value) p.set("state", form.state.value);
    if (form.handler.value.trim()) p.set("handler", form.handler.value.trim());
    if (form.since.value) p.set("since", String(new Date(form.since.value).getTime()));
    location.hash = "#/jobs" + (p.toString() ? "?" + p : "");
  } },
    el("label", { for: "f-state" }, "State"),
    el("select", { id: "f-state", name: "state" },
      JOB_STATES.map((s) => el("option", { value: s, selected: s === state }, s || "any"))),
    el("label", { for: "f-handler" }, "Handler"),
    el("input", { id: "f-handler", name: "handler", value: handler, placeholder: "name or did:key:…" }),
    el("label", { for: "f-since" }, "Changed since"),
    el("input", { id: "f-since", name: "since", type: "datetime-local",
      value: since ? localInput(Number(since)) : null }),
    el("button", { type: "submit" }, "Filter"));
  show([el("h1", {}, "Jobs"), form, el("p", {}, "Loading…")]);
  try {
    const did = await handlerDid(handler);
    const q = new URLSearchParams({ limit: "50" });
    if (state) q.set("state", state);
    if (did) q.set("handler", did);
    if (since) q.set("since_ms", since);
    if (after) q.set("after", after);
    const page = await api("jobs?" + q);
    const rows = page.jobs.map((j) => el("tr", {},
      el("td", {}, el("a", { href: "#/job/" + j.id }, short(j.id, 12))),
      el("td", {}, el("a", { href: "#/handler/" + j.handler }, short(j.handler, 28))),
      el("td", {}, stateBadge(j.state)),
      el("td", { class: "num" }, j.attempts + "/" + j.max_attempts),
      el("td", { class: "num" }, j.progress.percent + "%"),
      el("td", {}, time(j.updated_at_ms))));
    const next = new URLSearchParams();
    if (state) next.set("state", state);
    if (handler) next.set("handler", handler);
    if (since) next.set("since", since);
    next.set("after", page.next || "");
    const bulk = did && !["succeeded", "dead", "cancelled"].includes(state)
      ? el("button", { type: "button", onclick: async () => {
          const what = (state || "unfinished") + " jobs of handler " + did;
          if (!window.confirm("Cancel every " + what + "?")) return;
          try {
            const r = await api("jobs/cancel", { method: "POST",
              headers: headers({ "Content-Type": "application/json" }),
              body: JSON.stringify({ handler: did, state }) });
            say("cancelled " + r.cancelled + (r.more ? " (more remain: cancel again)" : ""));
            route();
          } catch (e) { say(e.message, true); }
        } }, "Cancel all " + (state || "unfinished") + " jobs of this handler")
      : null;
    show([el("h1", {}, "Jobs"), form,
      rows.length ? table(["Job", "Handler", "State", "Attempts", "Progress", "Updated"], rows)
        : el("p", { class: "muted" }, "No job matches."),
      el("div", { class: "actions" },
        page.next ? el("a", { class: "button", href: "#/jobs?" + next }, "Next page") : null, bulk)]);
  } catch (e) {
    show([el("h1", {}, "Jobs"), form, failure(e)]);
  }
}

// A time as a datetime-local input's value, in the browser's zone.
function localInput(ms) {
  const d = new Date(ms);
  return new Date(ms - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

async function handlersPage(params) {
  const name = params.get("name") || "";
  const plugin = params.get("plugin") || "";
  const family = params.get("family") || "handler";
  const after = params.get("after") || "";
  const form = el("form", { class: "filters", onsubmit: (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    if (form.name.value.trim()) p.set("name", form.name.value.trim());
    if (form.plugin.value.trim()) p.set("plugin", form.plugin.value.trim());
    if (form.family.value !== "handler") p.set("family", form.family.value);
    location.hash = "#/handlers" + (p.toString() ? "?" + p : "");
  } },
    el("label", { for: "h-name" }, "Name starts with"),
    el("input", { id: "h-name", name: "name", value: name }),
    el("label", { for: "h-plugin" }, "Plugin"),
    el("input", { id: "h-plugin", name: "plugin", value: plugin, placeholder: "did:key:…" }),
    el("label", { for: "h-family" }, "Kind"),
    el("select", { id: "h-family", name: "family" },
      ["handler", "plugin"].map((f) => el("option", { value: f, selected: f === family }, f + "s"))),
    el("button", { type: "submit" }, "Search"));
  show([el("h1", {}, "Handlers"), form, el("p", {}, "Loading…")]);
  try {
    const q = new URLSearchParams({ limit: "50", family });
    if (name) q.set("name_prefix", name);
    if (plugin) q.set("plugin", plugin);
    if (after) q.set("after", after);
    const r = await api("subjects?" + q);
    const next = new URLSearchParams(params);
    next.set("after", r.next || "");
    show([el("h1", {}, "Handlers"), form,
      r.subjects.length ? table(["Name", "DID", "Statements", "Revoked", "Last statement"], r.subjects.map((x) => el("tr", {},
        el("td", {}, el("a", { href: "#/handler/" + x.did }, x.name || "(no name)")),
        el("td", {}, el("code", {}, short(x.did, 32))),
        el("td", { class: "num" }, Number(x.seq) + 1),
        el("td", {}, x.revoked ? "revoked" : "no"),
        el("td", {}, time(x.issued_at_ms)))))
        : el("p", { class: "muted" }, "None matches."),
      r.next ? el("a", { class: "button", href: "#/handlers?" + next }, "Next page") : null]);
  } catch (e) {
    show([el("h1", {}, "Handlers"), form, failure(e)]);
  }
}

function jobPage(id) {
  const view = el("section", {}, el("h1", {}, "Job ", short(id, 12)), el("p", {}, "Loading…"));
  show(view);
  let shown = -1;
  const draw = (j) => {
    // The first read and the live events may cross: never go back.
    if (Number(j.updated_at_ms) < shown) return;
    shown = Number(j.updated_at_ms);
    const ended = ["succeeded", "dead", "cancelled"].includes(j.state);
    view.replaceChildren(
      el("h1", {}, "Job ", el("code", {}, j.id)),
      el("dl", { class: "facts" },
        el("dt", {}, "State"), el("dd", {}, stateBadge(j.state), j.reason ? " (" + j.reason + ")" : ""),
        el("dt", {}, "Handler"), el("dd", {}, el("a", { href: "#/handler/" + j.handler }, j.handler)),
        el("dt", {}, "Attempts"), el("dd", {}, j.attempts + " of " + j.max_attempts),
        el("dt", {}, "Cost"), el("dd", {}, j.total_cost + (j.max_cost ? " of " + j.max_cost : "")),
        el("dt", {}, "Updated"), el("dd", {}, time(j.updated_at_ms)),
        j.last_error ? [el("dt", {}, "Last error"), el("dd", {}, j.last_error)] : null),
      el("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
        "aria-valuenow": j.progress.percent, "aria-label": "Progress" },
        el("div", { class: "progress-bar", style: null, "data-percent": j.progress.percent })),
      el("p", {}, j.progress.percent + "% ", j.progress.message),
      el("div", { class: "actions" },
        el("button", { type: "button", disabled: ended, onclick: () => confirmAct("cancel", j.id) }, "Cancel"),
        el("button", { type: "button", disabled: !["dead", "cancelled"].includes(j.state),
          onclick: () => confirmAct("retry", j.id) }, "Retry")),
      el("h2", {}, "Payload"), content(j.payload),
      el("h2", {}, "Result"), content(j.result),
      el("h2", {}, "Attempts"),
      j.attempt_history.length
        ? table(["#", "Lease", "Node", "Started", "Ended", "Outcome", "Cost", "Authorised under (handler, plugin)", "Error"],
            j.attempt_history.map((a) => el("tr", {},
              el("td", { class: "num" }, a.number),
              el("td", {}, el("code", { title: a.lease }, short(a.lease, 8))),
              el("td", {}, a.node || "—"), el("td", {}, time(a.started_at_ms)),
              el("td", {}, time(a.ended_at_ms)), el("td", {}, a.outcome || "running"),
              el("td", { class: "num" }, a.cost),
              el("td", {}, a.authorised ? el("span", {}, el("a", { href: "#/log?end=" + (Number(a.handler_index) + 1) }, a.handler_index), ", ",
                el("a", { href: "#/log?end=" + (Number(a.plugin_index) + 1) }, a.plugin_index)) : "—"),
              el("td", {}, a.error))))
        : el("p", { class: "muted" }, "Not started yet."),
      el("h2", {}, "Log"), logBox);
    const bar = view.querySelector(".progress-bar");
    if (bar) bar.style.width = Math.min(100, Number(j.progress.percent)) + "%";
  };
  const logBox = el("pre", { class: "log" }, "");
  let afterSeq = 0;
  const readLog = async () => {
    try {
      const r = await api("jobs/" + id + "/log?after=" + afterSeq);
      for (const l of r.lines) logBox.append("[" + l.attempt + "] " + l.line + "\n");
      afterSeq = r.next_after_seq || afterSeq;
    } catch (_) { /* the job's page says what failed */ }
  };
  api("jobs/" + id).then((j) => { draw(j); readLog(); }, (e) => view.replaceChildren(failure(e)));
  // Log lines are not job changes: read on every second while the page
  // is open (only the lines after the last one read).
  const lines = setInterval(readLog, 1000);
  const stop = follow("jobs/" + id + "/live", (name, data) => {
    if (name === "job") { draw(JSON.parse(data)); readLog(); }
    else if (name === "error") say(data, true);
  }, (e) => { if (e) view.replaceChildren(failure(e)); });
  live = () => { clearInterval(lines); stop(); };
}

async function confirmAct(action, id) {
  if (!window.confirm(action[0].toUpperCase() + action.slice(1) + " job " + id + "?")) return;
  try {
    await act("jobs/" + id + "/" + action);
    // Drawn again: a retried job has a new life to follow.
    route();
    say(action + ": done");
  } catch (e) {
    say(e.message, true);
  }
}

async function pluginsPage() {
  show([el("h1", {}, "Plugins"), el("p", {}, "Loading…")]);
  try {
    const r = await api("plugins");
    show([el("h1", {}, "Plugins"),
      r.sessions.length
        ? table(["Plugin", "Name", "Connection", "Handlers", "Slots", "Running", "Opened"],
            r.sessions.map((s) => el("tr", {},
              el("td", {}, el("a", { href: "#/handler/" + s.plugin }, short(s.plugin, 28))),
              el("td", {}, s.name), el("td", {}, s.connection + (s.draining ? " (draining)" : "")),
              el("td", {}, s.serves_any ? "any" : s.handlers.length),
              el("td", { class: "num" }, s.slots), el("td", { class: "num" }, s.running),
              el("td", {}, time(s.opened_ms)))))
        : el("p", { class: "muted" }, "No plugin session."),
      el("h2", {}, "Last refusals"),
      r.refusals.length
        ? table(["Plugin", "Address", "Rule", "Message", "At"], r.refusals.map((f) => el("tr", {},
            el("td", {}, short(f.plugin, 28)), el("td", {}, f.address), el("td", {}, el("code", {}, f.code)),
            el("td", {}, f.message), el("td", {}, time(f.at_ms)))))
        : el("p", { class: "muted" }, "None.")]);
  } catch (e) {
    show([el("h1", {}, "Plugins"), failure(e)]);
  }
}

async function logPage(params) {
  show([el("h1", {}, "Log"), el("p", {}, "Loading…")]);
  try {
    const info = await api("log");
    const size = Number(info.size);
    const per = 25;
    const end = Math.min(size, Number(params.get("end") || size));
    const start = Math.max(0, end - per);
    const entries = end > start ? (await api("log/entries?start=" + start + "&end=" + end)).entries : [];
    const consistency = await checkConsistency(info);
    show([el("h1", {}, "Log"),
      el("p", { class: consistency.ok ? "notice ok" : "notice error", id: "consistency" }, consistency.text),
      el("dl", { class: "facts" },
        el("dt", {}, "Origin"), el("dd", {}, info.origin),
        el("dt", {}, "Log key"), el("dd", {}, el("code", {}, info.log_did)),
        el("dt", {}, "Size"), el("dd", {}, size),
        el("dt", {}, "Root"), el("dd", {}, el("code", {}, info.root_hash))),
      el("h2", {}, "Latest checkpoint"),
      info.checkpoint ? el("pre", { class: "note" }, info.checkpoint.note) : el("p", {}, "none"),
      el("h2", {}, "Entries " + start + "–" + (end - 1)),
      table(["Index", "Envelope (base64)"], entries.reverse().map((e) => el("tr", {},
        el("td", { class: "num" }, e.index), el("td", {}, el("code", {}, short(e.envelope, 60)))))),
      el("div", { class: "actions" },
        end < size ? el("a", { class: "button", href: "#/log?end=" + Math.min(size, end + per) }, "Newer") : null,
        start > 0 ? el("a", { class: "button", href: "#/log?end=" + start }, "Older") : null),
      await equivocationsSection(null)]);
  } catch (e) {
    show([el("h1", {}, "Log"), failure(e)]);
  }
}

function scheduleRows(list, after) {
  return table(["Handler", "When", "Next", "Last fired", "State", ""], list.map((x) => el("tr", {},
    el("td", {}, el("a", { href: "#/handler/" + x.handler }, short(x.handler, 28))),
    el("td", {}, x.cron ? el("code", {}, x.cron + (x.timezone ? " " + x.timezone : "")) : "every " + x.every_ms + " ms"),
    el("td", {}, x.paused ? el("span", { class: "muted" }, "paused") : time(x.next_at_ms)),
    el("td", {}, x.last_job ? el("a", { href: "#/job/" + x.last_job }, time(x.last_fired_at_ms)) : time(x.last_fired_at_ms)),
    el("td", {}, x.paused ? "paused" : "active"),
    el("td", {}, el("button", { type: "button", onclick: async () => {
      const verb = x.paused ? "resume" : "pause";
      if (!window.confirm(verb[0].toUpperCase() + verb.slice(1) + " schedule " + x.id + "?")) return;
      try { await act("schedules/" + x.id + "/" + verb); say(verb + ": done"); after(); }
      catch (e) { say(e.message, true); }
    } }, x.paused ? "Resume" : "Pause")))));
}

// CBOR values as JSON: byte strings as hex.
function plain(v) {
  if (v instanceof Uint8Array) return PulseVerify.hex(v);
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}

// The subject's current schema: the one in its last statement, verified
// in this browser like the chain (fetched alone when not on this page).
async function schemaSection(page, checked, subject, logDid) {
  const box = el("section", { "aria-label": "Current schema" }, el("h2", {}, "Current schema"));
  try {
    const seen = checked.entries.filter((v) => v.body);
    if (!seen.some((v) => Number(v.body.seq) === Number(subject.seq))) {
      const r = await api("subjects/" + encodeURIComponent(subject.did) + "?limit=1&from_seq=" + subject.seq);
      seen.push(...(await PulseVerify.verifyChain(r, logDid)).entries.filter((v) => v.body));
    }
    // A rotation or revocation carries no schema: the latest one that
    // does holds.
    const withSchema = seen.filter((v) => v.body.schema)
      .sort((a, b) => Number(b.body.seq) - Number(a.body.seq))[0];
    if (!withSchema || !withSchema.body || !withSchema.body.schema) {
      box.append(el("p", { class: "muted" }, "Its last statement carries no schema; see the chain."));
    } else {
      box.append(el("p", { class: withSchema.ok ? "muted" : "notice error" },
        "From the statement at seq " + withSchema.body.seq + (withSchema.ok ? ", verified in this browser." : ": NOT verified: " + withSchema.why)),
      el("pre", { class: "json" }, JSON.stringify(plain(withSchema.body.schema), null, 2)));
    }
  } catch (e) {
    box.append(failure(e));
  }
  return box;
}

// Equivocation evidence (of one subject, or all): each checked here.
async function equivocationsSection(subject) {
  const box = el("section", { "aria-label": "Equivocations", id: "equivocations" }, el("h2", {}, "Equivocations"));
  try {
    const r = await api("log/equivocations?limit=100");
    const list = r.evidence.filter((e) => !subject || e.subject === subject);
    if (!list.length) {
      box.append(el("p", { class: "muted" }, "None recorded."));
      return box;
    }
    const rows = [];
    for (const e of list) {
      const err = await PulseVerify.equivocationError(e);
      rows.push(el("tr", {},
        el("td", {}, el("a", { href: "#/handler/" + e.subject }, short(e.subject, 28))),
        el("td", { class: "num" }, e.seq), el("td", { class: "num" }, e.logged_index),
        el("td", {}, err === null
          ? el("span", { class: "badge bad" }, "the key signed two statements for this seq (verified in this browser)")
          : el("span", { class: "badge" }, "evidence NOT verified: " + err))));
    }
    box.append(el("p", { class: "notice error" },
      "A key that signs two different statements for one seq has shown two histories: the log kept the first."),
      table(["Subject", "Seq", "Logged at", "Evidence"], rows));
  } catch (e) {
    box.append(failure(e));
  }
  return box;
}

async function schedulesPage(params) {
  show([el("h1", {}, "Schedules"), el("p", {}, "Loading…")]);
  const after = params.get("after") || "";
  try {
    const r = await api("schedules?limit=50" + (after ? "&after=" + after : ""));
    show([el("h1", {}, "Schedules"),
      r.schedules.length ? scheduleRows(r.schedules, () => schedulesPage(params)) : el("p", { class: "muted" }, "No schedule."),
      r.next ? el("a", { class: "button", href: "#/schedules?after=" + r.next }, "Next page") : null]);
  } catch (e) {
    show([el("h1", {}, "Schedules"), failure(e)]);
  }
}

// A handler's budget and schedules, each shown or its refusal said.
async function budgetAndSchedules(did) {
  const box = el("section", { "aria-label": "Budget and schedules" }, el("h2", {}, "Budget"));
  try {
    const b = await api("budgets/" + encodeURIComponent(did));
    const limit = (n) => (Number(n) ? n : "no limit");
    box.append(table(["Window", "Spent", "Limit"], [
      el("tr", {}, el("td", {}, "last hour"), el("td", { class: "num" }, b.spent_hour), el("td", { class: "num" }, limit(b.per_hour))),
      el("tr", {}, el("td", {}, "last day"), el("td", { class: "num" }, b.spent_day), el("td", { class: "num" }, limit(b.per_day)))]),
    el("p", { class: "muted" }, "Reserved by running attempts: " + b.reserved));
  } catch (e) {
    box.append(failure(e));
  }
  box.append(el("h2", {}, "Schedules"));
  try {
    const r = await api("schedules?limit=50&handler=" + encodeURIComponent(did));
    box.append(r.schedules.length ? scheduleRows(r.schedules, () => route()) : el("p", { class: "muted" }, "No schedule."));
  } catch (e) {
    box.append(failure(e));
  }
  return box;
}

// The first checkpoint this tab verified is kept (session storage); each
// later one must be its extension, proved in this browser.
const FIRST_KEY = "pulse-ledger-first-checkpoint";

async function checkConsistency(info) {
  let latest;
  try {
    latest = await PulseVerify.verifyCheckpoint(info.checkpoint.note, info.log_did);
  } catch (e) {
    return { ok: false, text: "The latest checkpoint is NOT verified: " + e.message };
  }
  const stored = JSON.parse(sessionStorage.getItem(FIRST_KEY) || "null");
  if (!stored || stored.log_did !== info.log_did) {
    sessionStorage.setItem(FIRST_KEY, JSON.stringify({ log_did: info.log_did, size: latest.size,
      root: PulseVerify.hex(latest.root) }));
    return { ok: true, text: "The latest checkpoint (size " + latest.size + ") was verified in this browser; later visits check that the log only grew from it." };
  }
  try {
    const p = await api("log/consistency?old=" + stored.size + "&new=" + latest.size);
    const err = PulseVerify.consistencyError(stored.size, latest.size, PulseVerify.unhex(stored.root),
      latest.root, p.proof.map(PulseVerify.unhex));
    if (err) return { ok: false, text: "NOT consistent with the checkpoint this tab first saw (size " + stored.size + "): " + err };
    return { ok: true, text: "Verified in this browser: the latest checkpoint (size " + latest.size +
      ") extends the one this tab first saw (size " + stored.size + "), and is signed by the log key." };
  } catch (e) {
    return { ok: false, text: "Consistency NOT verified: " + e.message };
  }
}

async function handlerPage(did, params) {
  const from = Number(params.get("from") || 0);
  show([el("h1", {}, "Subject"), el("p", {}, "Loading…")]);
  try {
    const log = await api("log");
    const r = await api("subjects/" + encodeURIComponent(did) + "?limit=50&from_seq=" + from);
    const s = r.subject;
    const checked = await PulseVerify.verifyChain(r, log.log_did);
    const verdicts = new Map(checked.entries.map((v) => [v.index, v]));
    const all = checked.entries.every((v) => v.ok);
    show([el("h1", {}, s.name || "Subject"),
      el("dl", { class: "facts" },
        el("dt", {}, "DID"), el("dd", {}, el("code", {}, s.did)),
        el("dt", {}, "Family"), el("dd", {}, s.family),
        el("dt", {}, "Current key"), el("dd", {}, el("code", {}, s.current_key)),
        el("dt", {}, "Statements"), el("dd", {}, Number(s.seq) + 1),
        el("dt", {}, "Revoked"), el("dd", {}, s.revoked ? "yes" : "no"),
        el("dt", {}, "Log key"), el("dd", {}, el("code", {}, log.log_did)),
        el("dt", {}, "Jobs"), el("dd", {}, el("a", { href: "#/jobs?handler=" + encodeURIComponent(s.did) }, "this handler's jobs"))),
      el("h2", {}, "Chain"),
      el("p", { class: all ? "notice ok" : "notice error", id: "chain-verdict" },
        all ? "Every statement below was verified in this browser: its signatures, its link to the one before, and its inclusion proof in the checkpoint, whose signature by the log key was checked too."
          : "Not every statement below could be verified in this browser: see each one's reason."),
      table(["Seq", "Kind", "Signer", "Issued", "Log index", "Verified in this browser"], r.entries.map((e) => {
        const v = verdicts.get(e.index);
        const b = v.body || {};
        return el("tr", { class: v.ok ? "verified" : "unverified", "data-index": e.index },
          el("td", { class: "num" }, b.seq === undefined ? "?" : b.seq),
          el("td", {}, b.kind || "?"),
          el("td", {}, el("code", { title: b.signer || "" }, short(b.signer, 24))),
          el("td", {}, time(b.issued_at)),
          el("td", { class: "num" }, e.index),
          el("td", {}, v.ok ? el("span", { class: "badge ok" }, "verified")
            : el("span", { class: "badge bad", title: v.why }, "NOT verified: " + v.why)));
      })),
      el("div", { class: "actions" },
        from > 0 ? el("a", { class: "button", href: "#/handler/" + did + "?from=" + Math.max(0, from - 50) }, "Earlier statements") : null,
        r.more ? el("a", { class: "button", href: "#/handler/" + did + "?from=" + (from + 50) }, "Later statements") : null),
      await schemaSection(r, checked, s, log.log_did),
      await equivocationsSection(s.did),
      s.family === "FAMILY_HANDLER" ? await budgetAndSchedules(s.did) : null,
      el("h2", {}, "Checkpoint"),
      checked.checkpoint ? el("p", { class: "muted" }, "Signature by the log key: verified in this browser.")
        : el("p", { class: "notice error" }, "Checkpoint NOT verified: " + checked.checkpointError),
      r.checkpoint ? el("pre", { class: "note" }, r.checkpoint.note) : null]);
  } catch (e) {
    show([el("h1", {}, "Subject"), failure(e)]);
  }
}

// BLAKE3 of lengths that cross every block, chunk and tree boundary, of
// the bytes i mod 251: the browser tests compare them with the Rust crate.
function selftestPage() {
  const lengths = [0, 1, 63, 64, 65, 1023, 1024, 1025, 2048, 2049, 3072, 3073, 4096, 4097, 5120, 8192, 65536];
  const lines = lengths.map((n) => {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = i % 251;
    return n + " " + PulseVerify.hex(PulseVerify.blake3(b));
  });
  const out = el("pre", { id: "selftest" }, lines.join("\n"));
  const trees = el("pre", { id: "selftest-log" }, "");
  show([el("h1", {}, "Self-test"), out, el("h2", {}, "This log"), trees]);
  // Every prefix's root computed here from the entries, and the server's
  // consistency proof from each prefix to the whole log checked with it.
  (async () => {
    const info = await api("log");
    const cp = await PulseVerify.verifyCheckpoint(info.checkpoint.note, info.log_did);
    const n = cp.size;
    const entries = n ? (await api("log/entries?start=0&end=" + n)).entries : [];
    const leaves = entries.map((e) => PulseVerify.leafHash(PulseVerify.unbase64(e.envelope)));
    const report = [];
    const whole = PulseVerify.treeRoot(leaves);
    report.push("root " + n + " " + (PulseVerify.hex(whole) === PulseVerify.hex(cp.root) ? "ok" : "WRONG"));
    for (let m = 0; m <= n; m++) {
      const p = (await api("log/consistency?old=" + m + "&new=" + n)).proof.map(PulseVerify.unhex);
      const old = PulseVerify.treeRoot(leaves.slice(0, m));
      const good = PulseVerify.consistencyError(m, n, old, cp.root, p);
      const bad = m > 0 && m < n ? PulseVerify.consistencyError(m, n, PulseVerify.blake3(old), cp.root, p) : "skipped";
      report.push("consistency " + m + " " + n + " " + (good === null ? "ok" : good) + " / forged old root: " + (bad === "skipped" ? "skipped" : bad === null ? "ACCEPTED" : "refused"));
    }
    trees.textContent = report.join("\n");
  })().catch((e) => { trees.textContent = "failed: " + e.message; });
}

// ---- routing ----

function route() {
  if (live) { live(); live = null; }
  say("");
  const hash = location.hash || "#/";
  const [path, query] = hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  for (const a of document.querySelectorAll("nav a")) {
    a.setAttribute("aria-current", a.getAttribute("href") === "#/" + (parts[0] || "") ? "page" : "false");
  }
  switch (parts[0] || "") {
    case "": return overviewPage();
    case "jobs": return jobsPage(params);
    case "job": return jobPage(parts[1]);
    case "plugins": return pluginsPage();
    case "handlers": return handlersPage(params);
    case "schedules": return schedulesPage(params);
    case "log": return logPage(params);
    case "handler": return handlerPage(decodeURIComponent(parts.slice(1).join("/")), params);
    case "selftest": return selftestPage();
    default: show(el("p", { class: "notice error" }, "No such page: " + hash));
  }
}

document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = document.getElementById("token");
  sessionStorage.setItem(TOKEN_KEY, input.value.trim());
  input.value = "";
  say("Token set for this tab.");
  route();
});
document.getElementById("token-forget").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  say("Token forgotten.");
  route();
});
window.addEventListener("hashchange", route);
route();
