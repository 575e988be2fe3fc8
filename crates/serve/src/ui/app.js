// Hangar dashboard: a small hash-routed page over the server's own JSON APIs.
// No framework and no build step; charts with the vendored uPlot.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const main = $("#main");
let timer = null;          // the current page's refresh timer
let charts = [];           // uPlot instances of the current page

function key() { return sessionStorage.getItem("hangar-key") || ""; }

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function showError(msg) {
  const a = $("#alert");
  if (!msg) { a.hidden = true; a.textContent = ""; return; }
  a.textContent = msg;
  a.hidden = false;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// Calls an API of this server with the key typed in; errors carry the server's message.
async function api(path, opts = {}) {
  const headers = Object.assign({ accept: "application/json" }, opts.headers || {});
  if (key()) headers.authorization = "Bearer " + key();
  if (opts.body !== undefined) headers["content-type"] = "application/json";
  const r = await fetch(path, {
    method: opts.method || "GET", headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
  });
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!r.ok) {
    const m = (body && (body.error && (body.error.message || body.error) || body.message)) || text || r.statusText;
    throw new ApiError(r.status, `${r.status}: ${typeof m === "string" ? m : JSON.stringify(m)}`);
  }
  return body;
}

const fmt = {
  n: (v, d = 1) => (v === null || v === undefined || Number.isNaN(v)) ? "–" : Number(v).toFixed(d),
  ms: (s) => (s === null || s === undefined) ? "–" : (s * 1000).toFixed(0) + " ms",
  pct: (v) => (v === null || v === undefined) ? "–" : (v * 100).toFixed(1) + "%",
  time: (ms) => new Date(ms).toISOString().replace("T", " ").slice(0, 19),
  bytes: (b) => b >= 1 << 30 ? (b / (1 << 30)).toFixed(2) + " GiB" : b >= 1 << 20 ? (b / (1 << 20)).toFixed(1) + " MiB" : b + " B",
};

function chart(container, title, series, data, opts = {}) {
  const width = Math.max(300, container.clientWidth - 4);
  const u = new uPlot({
    title, width, height: opts.height || 220,
    scales: { x: { time: opts.time !== false } },
    axes: [{}, { size: 60 }],
    series: [{}].concat(series.map((s, i) => Object.assign({
      stroke: ["#0b5cad", "#d9822b", "#1e7a35", "#b3261e", "#7c4dbb"][i % 5], width: 2,
    }, s))),
  }, data, container);
  charts.push(u);
  return u;
}

function clearPage() {
  if (timer) { clearInterval(timer); timer = null; }
  charts.forEach((c) => c.destroy());
  charts = [];
  main.replaceChildren();
  showError("");
}

// ---- Overview: live throughput, latency percentiles, queue, KV, errors -------------
async function overview() {
  const range = el("select", { id: "range", "aria-label": "Time range" },
    ...[["300", "5 minutes"], ["900", "15 minutes"], ["3600", "1 hour"], ["86400", "24 hours"]]
      .map(([v, t]) => el("option", { value: v, selected: v === (sessionStorage.getItem("hangar-range") || "900") }, t)));
  const stats = el("div", { class: "stats", "aria-live": "polite" });
  const grid = el("div", { class: "grid" });
  main.append(el("h2", {}, "Overview"),
    el("div", { class: "controls" }, el("label", {}, "Time range", range)), stats, grid);
  const boxes = ["throughput", "ttft", "itl", "queue", "kv", "errors"].map((id) => {
    const b = el("div", { class: "card chart", id: "chart-" + id });
    grid.append(b);
    return b;
  });
  async function draw() {
    let ts, m;
    try {
      [ts, m] = await Promise.all([api("/v1/monitor/timeseries?seconds=" + range.value), api("/v1/models")]);
    } catch (e) { showError(e.message); return; }
    showError("");
    const s = ts.samples;
    const col = (f) => s.map((x) => { const v = f(x); return v === null || v === undefined ? null : v; });
    const t = s.map((x) => x.t);
    const last = s[s.length - 1] || {};
    const models = (m && m.data || []).map((d) => d.id).join(", ") || "none";
    stats.replaceChildren(
      ...[["Models", models], ["Tokens/s", fmt.n(last.generated_tokens_per_s)], ["TTFT p95", fmt.ms(last.ttft_p95)],
        ["ITL p95", fmt.ms(last.itl_p95)], ["Queue", fmt.n(last.queue, 0)], ["Running", fmt.n(last.running, 0)],
        ["KV used", fmt.pct(last.kv_usage)], ["Errors/s", fmt.n(last.errors_per_s, 2)], ["Samples", s.length]]
        .map(([k, v]) => el("div", { class: "stat" }, el("b", {}, v), el("span", {}, k))));
    charts.forEach((c) => c.destroy());
    charts = [];
    boxes.forEach((b) => b.replaceChildren());
    chart(boxes[0], "Throughput (tokens/s)", [{ label: "generated" }, { label: "prompt" }],
      [t, col((x) => x.generated_tokens_per_s), col((x) => x.prompt_tokens_per_s)]);
    chart(boxes[1], "Time to first token (s)", [{ label: "p50" }, { label: "p95" }],
      [t, col((x) => x.ttft_p50), col((x) => x.ttft_p95)]);
    chart(boxes[2], "Inter-token latency (s)", [{ label: "p50" }, { label: "p95" }],
      [t, col((x) => x.itl_p50), col((x) => x.itl_p95)]);
    chart(boxes[3], "Queue and running sequences", [{ label: "waiting" }, { label: "running" }],
      [t, col((x) => x.queue), col((x) => x.running)]);
    chart(boxes[4], "KV cache used (share)", [{ label: "used" }], [t, col((x) => x.kv_usage)]);
    chart(boxes[5], "Requests and 5xx errors (per s)", [{ label: "requests" }, { label: "errors" }],
      [t, col((x) => x.requests_per_s), col((x) => x.errors_per_s)]);
  }
  range.addEventListener("change", () => { sessionStorage.setItem("hangar-range", range.value); draw(); });
  await draw();
  timer = setInterval(draw, 5000);
}

// ---- Models & registry: versions, stages, lineage; promote / demote -----------------
async function models() {
  main.append(el("h2", {}, "Models & registry"));
  let list;
  try { list = await api("/v1/registry/models"); } catch (e) {
    main.append(el("p", { class: "muted" }, "The registry API is not available: " + e.message));
    return;
  }
  if (!list.models.length) main.append(el("p", { class: "muted" }, "The registry holds no models yet (hangar pull default)."));
  for (const m of list.models) {
    const card = el("section", { class: "card", "aria-label": "Model " + m.name });
    main.append(card, el("div", { style: "height:12px" }));
    card.append(el("h3", {}, m.name, " ", el("span", { class: "muted" }, `${m.versions} versions, ${fmt.bytes(m.total_size)}`)));
    let info;
    try { info = await api("/v1/registry/models/" + encodeURIComponent(m.name)); } catch (e) { card.append(el("p", {}, e.message)); continue; }
    const rows = info.versions.slice().sort((a, b) => b.version - a.version).map((v) => {
      const stage = v.stage || "none";
      const action = v.stage === "production"
        ? el("button", { onclick: () => change(m.name, v.version, "demote"), "aria-label": `Demote ${m.name} version ${v.version}` }, "Demote")
        : el("button", { class: "primary", onclick: () => change(m.name, v.version, "promote"), "aria-label": `Promote ${m.name} version ${v.version} to production` }, "Promote to production");
      const lineage = v.lineage
        ? `${v.lineage.derivation} from ${v.lineage.base_model}@${v.lineage.base_version}${v.lineage.run ? " (run " + v.lineage.run + ")" : ""}`
        : "–";
      return el("tr", {},
        el("td", {}, "v" + v.version), el("td", {}, el("span", { class: "pill " + stage }, stage)),
        el("td", {}, v.aliases.join(", ") || "–"), el("td", { class: "lineage" }, lineage,
          v.ancestry.length ? el("div", { class: "muted" }, "ancestry: " + [m.name + "@" + v.version].concat(v.ancestry).join(" ← ")) : null),
        el("td", {}, fmt.time(v.created_at * 1000)), el("td", {}, v.created_by), el("td", { class: "num" }, fmt.bytes(v.total_size)),
        el("td", {}, action));
    });
    card.append(el("table", {},
      el("thead", {}, el("tr", {}, ...["Version", "Stage", "Aliases", "Lineage", "Created (UTC)", "By", "Size", ""].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows)));
  }
  async function change(name, version, what) {
    try {
      const body = what === "promote" ? { stage: "production" } : {};
      await api(`/v1/registry/models/${encodeURIComponent(name)}/versions/${version}/${what}`, { method: "POST", body });
      await route();
      showError("");
      $("#who").textContent = `${what === "promote" ? "Promoted" : "Demoted"} ${name}@${version}`;
    } catch (e) {
      showError(`Could not ${what} ${name}@${version}: ${e.message}`);
    }
  }
}

// ---- Requests: the log with search, and one request in full -------------------------
async function requests() {
  const text = el("input", { id: "q", type: "search", placeholder: "text in prompt or answer" });
  const model = el("input", { id: "q-model", type: "text", placeholder: "any" });
  const finish = el("select", { id: "q-finish" }, ...["", "stop", "length", "cancelled", "error"].map((f) => el("option", { value: f }, f || "any")));
  const table = el("div");
  const detail = el("section", { class: "card", id: "detail", "aria-live": "polite", hidden: true });
  const form = el("form", { class: "controls", role: "search", onsubmit: (e) => { e.preventDefault(); load(); } },
    el("label", {}, "Search", text), el("label", {}, "Model", model), el("label", {}, "Finish", finish),
    el("button", { type: "submit", class: "primary" }, "Search"));
  main.append(el("h2", {}, "Requests"), form, table, el("div", { style: "height:12px" }), detail);
  async function load() {
    const p = new URLSearchParams({ limit: "100" });
    if (text.value) p.set("text", text.value);
    if (model.value) p.set("model", model.value);
    if (finish.value) p.set("finish_reason", finish.value);
    let r;
    try { r = await api("/v1/monitor/requests?" + p); } catch (e) {
      table.replaceChildren(el("p", { class: "muted" }, e.message));
      return;
    }
    if (!r.requests.length) { table.replaceChildren(el("p", { class: "muted" }, "No requests match.")); return; }
    table.replaceChildren(el("div", { class: "card" }, el("table", { "aria-label": "Requests" },
      el("thead", {}, el("tr", {}, ...["Time (UTC)", "Model", "Key", "In", "Out", "TTFT", "Total", "Finish", "Prompt"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, r.requests.map((q) => {
        const open = () => show(q.id);
        return el("tr", { tabindex: "0", onclick: open, onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } } },
          el("td", {}, fmt.time(q.ts_ms)), el("td", {}, q.model), el("td", {}, q.key_id || "–"),
          el("td", { class: "num" }, q.prompt_tokens), el("td", { class: "num" }, q.completion_tokens),
          el("td", { class: "num" }, fmt.n(q.ttft_ms, 0) + " ms"), el("td", { class: "num" }, fmt.n(q.e2e_ms, 0) + " ms"),
          el("td", {}, q.finish_reason), el("td", {}, q.prompt.slice(-80)));
      })))));
  }
  async function show(id) {
    try {
      const q = await api("/v1/monitor/requests/" + id);
      detail.hidden = false;
      detail.replaceChildren(el("h3", {}, `Request ${q.request_id}`),
        el("p", { class: "muted" }, `${fmt.time(q.ts_ms)} · ${q.model}${q.model_version ? " (" + q.model_version + ")" : ""} · ${q.route} · status ${q.status} · key ${q.key_id || "none"}`),
        el("p", {}, `queue ${fmt.n(q.queue_ms, 1)} ms · first token ${fmt.n(q.ttft_ms, 1)} ms · decode ${fmt.n(q.decode_ms, 1)} ms · total ${fmt.n(q.e2e_ms, 1)} ms · ${q.prompt_tokens} → ${q.completion_tokens} tokens · cost ${q.cost} · finish ${q.finish_reason}`),
        el("h3", {}, "Prompt"), el("pre", {}, q.prompt), el("h3", {}, "Answer"), el("pre", {}, q.response));
      detail.focus();
    } catch (e) { showError(e.message); }
  }
  await load();
}

// ---- Drift & quality: tests per model with reference vs current distributions -------
async function drift() {
  main.append(el("h2", {}, "Drift & quality"));
  let d, u;
  try { [d, u] = await Promise.all([api("/v1/monitor/drift"), api("/v1/monitor/usage")]); } catch (e) {
    main.append(el("p", { class: "muted" }, "Monitoring is not available: " + e.message));
    return;
  }
  // Drift and quality over time, from the server's sampled history.
  const overTime = el("section", { class: "card chart", "aria-label": "Drift over time", id: "drift-over-time" });
  main.append(overTime, el("div", { style: "height:12px" }));
  try {
    const ts = await api("/v1/monitor/timeseries?seconds=3600");
    const sm = ts.samples;
    chart(overTime, "Drift and quality over time", [
      { label: "unseen-token share" }, { label: "drift alert" }, { label: "relevance" }],
      [sm.map((x) => x.t), sm.map((x) => x.unseen_token_share ?? null), sm.map((x) => x.drift_alert ?? null),
        sm.map((x) => x.relevance ?? null)]);
  } catch (e) { overTime.append(el("p", { class: "muted" }, "No history: " + e.message)); }
  const names = Object.keys(d.models);
  if (!names.length) main.append(el("p", { class: "muted" }, "No requests seen yet: drift needs a reference window first."));
  for (const name of names) {
    const r = d.models[name];
    const card = el("section", { class: "card", "aria-label": "Drift of " + name });
    main.append(card, el("div", { style: "height:12px" }));
    const verdict = !r.ready ? el("span", { class: "muted" }, `collecting (reference ${r.reference_size}, window ${r.current_size})`)
      : r.alert ? el("span", { class: "bad" }, "drift detected") : el("span", { class: "good" }, "no drift");
    card.append(el("h3", {}, name, " — ", verdict));
    card.append(el("table", {}, el("thead", {}, el("tr", {}, ...["Signal", "Reference", "Current", "Test", "Drifted"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {},
        el("tr", {}, el("td", {}, "unseen-token share"), el("td", { class: "num" }, fmt.pct(r.unseen_token_share_reference)),
          el("td", { class: "num" }, fmt.pct(r.unseen_token_share)), el("td", {}, "share above reference + margin"), el("td", { class: r.unseen_drifted ? "bad" : "" }, r.unseen_drifted ? "yes" : "no")),
        r.features.map((f) => el("tr", {}, el("td", {}, f.name.replace(/_/g, " ")), el("td", { class: "num" }, fmt.n(f.reference_mean, 2)),
          el("td", { class: "num" }, fmt.n(f.current_mean, 2)),
          el("td", {}, f.method === "ks" ? `KS p=${fmt.n(f.ks.p_value, 3)}` : `Wasserstein ${fmt.n(f.wasserstein_normed, 3)}`, ` · PSI ${fmt.n(f.psi, 3)}`),
          el("td", { class: f.drifted ? "bad" : "" }, f.drifted ? "yes" : "no"))),
        r.embedding_mmd ? el("tr", {}, el("td", {}, "prompt embeddings"), el("td", {}, "–"), el("td", { class: "num" }, fmt.n(r.embedding_distance, 3)),
          el("td", {}, `MMD p=${fmt.n(r.embedding_mmd.p_value, 3)}`), el("td", { class: r.embedding_drifted ? "bad" : "" }, r.embedding_drifted ? "yes" : "no")) : null)));
    const grid = el("div", { class: "grid" });
    card.append(grid);
    // Lay out every box before drawing, so each chart takes its column's final width.
    const drawable = r.features.filter((f) => f.histogram.edges.length);
    const boxes = drawable.map(() => grid.appendChild(el("div", { class: "chart" })));
    for (const [i, f] of drawable.entries()) {
      const h = f.histogram;
      const box = boxes[i];
      const mids = h.edges.slice(0, -1).map((e, i) => (e + h.edges[i + 1]) / 2);
      chart(box, f.name.replace(/_/g, " ") + ": reference vs current", [
        { label: "reference", paths: uPlot.paths.bars({ size: [0.4] }), fill: "#0b5cad55" },
        { label: "current", paths: uPlot.paths.bars({ size: [0.4] }), fill: "#d9822b88" }],
        [mids, h.reference, h.current], { time: false, height: 200 });
    }
  }
  const usage = el("section", { class: "card", "aria-label": "Usage and cost" });
  main.append(usage);
  usage.append(el("h3", {}, `Usage and cost (${u.currency})`));
  usage.append(u.usage.length ? el("table", {}, el("thead", {}, el("tr", {}, ...["Key", "Model", "Requests", "Prompt tokens", "Completion tokens", "Cost"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, u.usage.map((r) => el("tr", {}, el("td", {}, r.key_id), el("td", {}, r.model), el("td", { class: "num" }, r.requests),
      el("td", { class: "num" }, r.prompt_tokens), el("td", { class: "num" }, r.completion_tokens), el("td", { class: "num" }, fmt.n(r.cost, 6))))))
    : el("p", { class: "muted" }, "No usage yet."));
  usage.append(el("h3", {}, "Personal data in answers"), u.pii.length
    ? el("ul", {}, u.pii.map((p) => el("li", {}, `${p.model}: ${p.responses} answers with ${p.kind}`)))
    : el("p", { class: "muted" }, "None found."));
}

// ---- Runs: tracking runs and metric charts (MLflow-compatible API) ------------------
async function runs() {
  main.append(el("h2", {}, "Runs"));
  let exps;
  try { exps = await api("/api/2.0/mlflow/experiments/search", { method: "POST", body: { max_results: 100 } }); } catch (e) {
    main.append(el("p", { class: "muted" }, "Tracking is not available on this server: " + e.message));
    return;
  }
  const ids = (exps.experiments || []).map((x) => x.experiment_id);
  const names = Object.fromEntries((exps.experiments || []).map((x) => [x.experiment_id, x.name]));
  let res;
  try { res = await api("/api/2.0/mlflow/runs/search", { method: "POST", body: { experiment_ids: ids, max_results: 200 } }); } catch (e) { showError(e.message); return; }
  const list = res.runs || [];
  if (!list.length) { main.append(el("p", { class: "muted" }, "No runs yet (log some with the mlflow client or hangar eval).")); return; }
  const picked = new Set();
  const compare = el("div", { class: "grid" });
  main.append(el("div", { class: "card" }, el("table", { "aria-label": "Runs" },
    el("thead", {}, el("tr", {}, ...["Compare", "Run", "Experiment", "Status", "Started (UTC)", "Metrics", "Params"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, list.map((r) => {
      const id = r.info.run_id;
      const box = el("input", { type: "checkbox", "aria-label": "Compare run " + (r.info.run_name || id),
        onchange: (e) => { e.target.checked ? picked.add(id) : picked.delete(id); drawCompare(); } });
      const metrics = (r.data.metrics || []).map((m) => `${m.key}=${fmt.n(m.value, 4)}`).join(", ");
      const params = (r.data.params || []).map((p) => `${p.key}=${p.value}`).join(", ");
      return el("tr", {}, el("td", {}, box), el("td", {}, r.info.run_name || id), el("td", {}, names[r.info.experiment_id] || r.info.experiment_id),
        el("td", {}, r.info.status), el("td", {}, fmt.time(Number(r.info.start_time))), el("td", {}, metrics), el("td", {}, params));
    })))), el("div", { style: "height:12px" }), compare);
  async function drawCompare() {
    charts.forEach((c) => c.destroy()); charts = []; compare.replaceChildren();
    const chosen = list.filter((r) => picked.has(r.info.run_id));
    const keys = [...new Set(chosen.flatMap((r) => (r.data.metrics || []).map((m) => m.key)))];
    for (const k of keys) {
      const series = [], hist = [];
      for (const r of chosen) {
        try {
          const h = await api(`/api/2.0/mlflow/metrics/get-history?run_id=${encodeURIComponent(r.info.run_id)}&metric_key=${encodeURIComponent(k)}`);
          hist.push(new Map((h.metrics || []).map((m) => [Number(m.step || 0), m.value])));
          series.push({ label: r.info.run_name || r.info.run_id });
        } catch (_) { /* a run without this metric */ }
      }
      const steps = [...new Set(hist.flatMap((m) => [...m.keys()]))].sort((a, b) => a - b);
      const box = el("div", { class: "card chart" });
      compare.append(box);
      chart(box, k + " by step", series, [steps].concat(hist.map((m) => steps.map((s) => m.has(s) ? m.get(s) : null))), { time: false });
    }
  }
}

const pages = { overview, models, requests, drift, runs };

async function route() {
  const page = (location.hash || "#overview").slice(1);
  const render = pages[page] || overview;
  document.querySelectorAll("nav a").forEach((a) => {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  });
  clearPage();
  try { await render(); } catch (e) { showError(e.message); }
}

$("#key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("hangar-key", $("#key").value.trim());
  $("#who").textContent = key() ? "key set" : "no key";
  route();
});
$("#key").value = key();
$("#who").textContent = key() ? "key set" : "";
window.addEventListener("hashchange", route);
route();
