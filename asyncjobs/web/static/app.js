// asyncjobs admin. Plain JavaScript, no build step, no dependencies.
// Every value that comes from a job is put in the page as text (textContent / text nodes),
// never parsed as HTML.
"use strict";

(() => {
  const POLL_MS = 1000;
  const STATES = ["Queued", "Started", "Executed", "Completed", "Failed", "Cancelled"];
  const ACTIVE = new Set(["Queued", "Started", "Executed"]);
  const FILTERS = ["state", "command", "request_type", "worker", "tag", "batch_id", "ref_id",
    "created_by", "user_id", "from", "to", "q"];

  // -- DOM helpers ------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function s(tag, attrs, ...children) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) el.setAttribute(key, String(value));
    }
    append(el, children);
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "style") Object.assign(el.style, value);
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key in el && typeof value !== "string") el[key] = value;
      else el.setAttribute(key, value === true ? "" : String(value));
    }
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  const $ = (id) => document.getElementById(id);
  const clear = (el, ...children) => { el.replaceChildren(); append(el, children); return el; };

  // -- formatting -------------------------------------------------------------------------

  const pad = (n) => String(n).padStart(2, "0");

  function fmtTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fmtAgo(iso, now) {
    if (!iso) return "";
    const diff = ((now ? new Date(now) : new Date()) - new Date(iso)) / 1000;
    const span = fmtSpan(Math.abs(diff) * 1000, true);
    if (Math.abs(diff) < 2) return "just now";
    return diff >= 0 ? `${span} ago` : `in ${span}`;
  }

  function fmtSpan(ms, coarse) {
    if (ms === null || ms === undefined) return "";
    if (ms < 1000 && !coarse) return `${Math.round(ms)} ms`;
    const sec = ms / 1000;
    if (sec < 60) return coarse ? `${Math.round(sec)}s` : `${sec.toFixed(sec < 10 ? 2 : 1)} s`;
    const min = Math.floor(sec / 60);
    if (min < 60) return `${min}m ${pad(Math.floor(sec % 60))}s`;
    const hours = Math.floor(min / 60);
    if (hours < 48) return `${hours}h ${pad(min % 60)}m`;
    return `${Math.floor(hours / 24)}d ${hours % 24}h`;
  }

  const fmtNum = (n) => (n === null || n === undefined ? "" : Number(n).toLocaleString());

  function when(iso, now) {
    if (!iso) return h("span", { class: "none" }, "—");
    return h("span", { title: fmtTime(iso) }, fmtAgo(iso, now));
  }

  function badge(state) {
    return h("span", { class: `badge ${STATES.includes(state) ? state : ""}` }, state || "?");
  }

  function none(text) {
    return h("span", { class: "none" }, text || "—");
  }

  function jobName(job) {
    return job.command || job.request || "";
  }

  function jobLink(id, text) {
    return h("a", {
      class: "id-link", href: withParams({ job: id }),
      onclick: (e) => { e.stopPropagation(); },
    }, text || `#${id}`);
  }

  function prettyJson(text) {
    if (text === null || text === undefined || text === "") return "";
    try { return JSON.stringify(JSON.parse(text), null, 2); } catch (_) { return String(text); }
  }

  function progressBar(progress, estimated) {
    const pct = progress === null || progress === undefined ? null : Math.round(progress * 1000) / 10;
    const fill = h("span", { style: { width: `${pct === null ? 0 : Math.min(100, pct)}%` } });
    const label = h("span", { class: "pct" }, pct === null ? "—" : `${pct}%`);
    const bar = h("div", {
      class: `bar${estimated ? " estimated" : ""}`, role: "progressbar",
      "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": pct === null ? "0" : String(pct),
      title: estimated ? "estimated from recent durations of this command" : "reported by the job",
    }, fill);
    const el = h("div", { class: "progress" }, bar, label);
    el.update = (value, est) => {
      const p = value === null || value === undefined ? null : Math.round(value * 1000) / 10;
      fill.style.width = `${p === null ? 0 : Math.min(100, p)}%`;
      label.textContent = p === null ? "—" : `${p}%`;
      bar.setAttribute("aria-valuenow", p === null ? "0" : String(p));
      bar.classList.toggle("estimated", Boolean(est));
    };
    return el;
  }

  // -- API --------------------------------------------------------------------------------

  async function api(path, options) {
    const opts = options || {};
    const headers = { "Accept": "application/json", "X-Requested-With": "asyncjobs" };
    const init = { method: opts.method || "GET", headers, credentials: "same-origin", cache: "no-store" };
    if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.body);
    }
    const response = await fetch(path, init);
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) {
      const error = new Error((data && data.error) || `${response.status} ${response.statusText}`);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  const post = (path, body) => api(path, { method: "POST", body: body || {} });

  function query(params) {
    const q = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== null && value !== undefined && value !== "") q.set(key, value);
    }
    const text = q.toString();
    return text ? `?${text}` : "";
  }

  // -- toasts and confirmation ------------------------------------------------------------

  function toast(message, isError) {
    const el = h("div", { class: `toast${isError ? " error" : ""}` }, message);
    $("toasts").append(el);
    setTimeout(() => el.remove(), isError ? 6000 : 3500);
  }

  function confirmBox(title, message, okLabel, danger) {
    const layer = $("modal");
    return new Promise((resolve) => {
      const done = (answer) => { layer.hidden = true; clear(layer); resolve(answer); };
      const ok = h("button", { class: `btn ${danger ? "danger solid" : "primary"}`, type: "button", onclick: () => done(true) }, okLabel);
      clear(layer, h("div", { class: "modal", role: "dialog", "aria-modal": "true" },
        h("h2", null, title), h("p", null, message),
        h("div", { class: "buttons" },
          h("button", { class: "btn", type: "button", onclick: () => done(false) }, "Keep"), ok)));
      layer.hidden = false;
      ok.focus();
    });
  }

  async function act(path, body, success) {
    try {
      const result = await post(path, body);
      toast(success(result));
      await tick(true);
      return result;
    } catch (error) {
      toast(error.message, true);
      return null;
    }
  }

  // -- routing ----------------------------------------------------------------------------
  // #/<page>[/<tab>][?filters&job=<id>]; `job` opens the job panel over the page.

  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, "");
    const [path, search] = raw.split("?");
    const parts = path.split("/").filter(Boolean);
    return {
      page: parts[0] || "dashboard",
      tab: parts[1] || "",
      params: Object.fromEntries(new URLSearchParams(search || "")),
    };
  }

  function hashFor(route) {
    const path = `#/${route.page}${route.tab ? `/${route.tab}` : ""}`;
    return path + query(route.params);
  }

  function withParams(changes) {
    const route = parseHash();
    const params = { ...route.params };
    for (const [key, value] of Object.entries(changes)) {
      if (value === null || value === undefined || value === "") delete params[key];
      else params[key] = String(value);
    }
    return hashFor({ ...route, params });
  }

  function go(changes, replace) {
    const target = withParams(changes);
    if (replace) history.replaceState(null, "", target);
    else history.pushState(null, "", target);
    route();
  }

  // -- pages ------------------------------------------------------------------------------

  let overview = null;
  let page = null;       // { name, key, refresh() }
  let panel = null;      // { id, refresh() }

  function pageHead(title, sub, ...extra) {
    return h("div", { class: "page-head" },
      h("div", null, h("h1", null, title), sub ? h("div", { class: "sub" }, sub) : null), ...extra);
  }

  function card(title, hint, body, opts) {
    const o = opts || {};
    return h("section", { class: "card" },
      title ? h("div", { class: "card-head" }, h("h2", null, title), hint || null) : null,
      h("div", { class: `card-body${o.flush ? " flush" : ""}` }, body));
  }

  function table(columns, bodyEl) {
    return h("div", { class: "table-wrap" }, h("table", null,
      h("thead", null, h("tr", null, columns.map((c) =>
        typeof c === "string" ? h("th", null, c) : h("th", { class: c.cls || "" }, c.label)))),
      bodyEl));
  }

  function emptyRow(span, text) {
    return h("tr", null, h("td", { colSpan: span, class: "empty" }, text));
  }

  // Dashboard ----------------------------------------------------------------------------

  function dashboardPage() {
    const stats = h("div", { class: "grid cards" });
    const chart = h("div");
    const commands = h("tbody");
    const workers = h("tbody");
    const nodes = h("ul", { class: "list plain" });
    const legend = h("div", { class: "legend" },
      h("span", null, h("i", { class: "l-completed" }), "Completed"),
      h("span", null, h("i", { class: "l-failed" }), "Failed"),
      h("span", null, h("i", { class: "l-cancelled" }), "Cancelled"));
    const statColumns = [{ label: "Queued", cls: "num" }, { label: "Running", cls: "num" },
      { label: "Completed", cls: "num" }, { label: "Failed", cls: "num" },
      { label: "Cancelled", cls: "num" }, { label: "Success", cls: "num" },
      { label: "Avg", cls: "num" }, { label: "p95", cls: "num" }];
    clear($("main"),
      pageHead("Dashboard", "Jobs created in the last 24 hours, and the live queue"),
      stats,
      h("div", { class: "grid wide-left" },
        card("Throughput", legend, chart),
        card("Nodes", h("span", { class: "hint" }, "Processes running jobs"), nodes, { flush: true })),
      card("By command", h("span", { class: "hint" }, "Last 24 hours; queued and running now"),
        table(["Command", ...statColumns], commands), { flush: true }),
      card("By worker", h("span", { class: "hint" }, "Named workers run one job at a time"),
        table(["Worker", ...statColumns], workers), { flush: true }));

    let lastDash = "";
    window.addEventListener("resize", () => { lastDash = ""; });
    return {
      name: "dashboard",
      async refresh() {
        renderStats(stats);
        renderNodes(nodes);
        const dash = await api("api/dashboard");
        const json = JSON.stringify([dash.throughput, dash.commands, dash.workers]);
        if (json === lastDash) return;
        lastDash = json;
        clear(chart, throughputChart(dash.throughput, chart.clientWidth));
        fillStats(commands, dash.commands, (row) => [
          h("span", null, row.name, h("span", { class: "kind" }, row.request_type === "API" ? "API" : "")),
        ]);
        fillStats(workers, dash.workers, (row) => [row.name === null ? none("no named worker") : row.name]);
      },
    };
  }

  function renderStats(el) {
    if (!overview) return;
    const c = overview.counts;
    const alive = overview.nodes.filter((n) => n.alive).length;
    const items = [
      ["Queued", "queued", c.Queued, overview.delayed ? `${fmtNum(overview.delayed)} delayed` : "waiting to run"],
      ["Running", "running", overview.running, c.Executed ? `${fmtNum(c.Executed)} in callback` : "executing now"],
      ["Completed", "completed", c.Completed, "last 24 hours"],
      ["Failed", "failed", c.Failed, "last 24 hours"],
      ["Cancelled", "cancelled", c.Cancelled, "last 24 hours"],
      ["Nodes", "nodes", alive, `${fmtNum(overview.nodes.length)} registered`],
    ];
    clear(el, ...items.map(([label, cls, value, foot]) =>
      h("div", { class: "card stat", dataset: { stat: cls } },
        h("div", { class: "label" }, h("span", { class: `dot ${cls}` }), label),
        h("div", { class: "value" }, fmtNum(value)),
        h("div", { class: "foot" }, foot))));
  }

  function renderNodes(list) {
    if (!overview) return;
    clear(list);
    if (!overview.nodes.length) {
      list.append(h("li", { class: "empty" }, "No process is running jobs right now."));
      return;
    }
    for (const node of overview.nodes) {
      list.append(h("li", null,
        h("div", { class: "node" },
          h("div", null, h("b", null, node.host), h("span", { class: "muted" }, ` · pid ${node.pid}`)),
          h("div", { class: "mono faint ellipsis", title: node.id }, node.id)),
        h("span", { class: "muted", style: { marginLeft: "auto" }, title: fmtTime(node.started_date) }, `up ${fmtAgo(node.started_date, overview.now).replace(" ago", "")}`),
        node.alive ? h("span", { class: "badge Completed" }, "alive") : h("span", { class: "badge Failed" }, "expired")));
    }
  }

  function fillStats(tbody, rows, name) {
    clear(tbody);
    if (!rows.length) {
      tbody.append(emptyRow(9, "No jobs in the last 24 hours."));
      return;
    }
    for (const row of rows) {
      const finished = row.completed + row.failed;
      const rate = finished ? `${Math.round((row.completed / finished) * 1000) / 10}%` : "—";
      tbody.append(h("tr", null,
        h("td", { class: "ellipsis" }, name(row)),
        h("td", { class: "num" }, fmtNum(row.queued)),
        h("td", { class: "num" }, fmtNum(row.running)),
        h("td", { class: "num" }, fmtNum(row.completed)),
        h("td", { class: `num${row.failed ? " error-text" : ""}` }, fmtNum(row.failed)),
        h("td", { class: "num" }, fmtNum(row.cancelled)),
        h("td", { class: "num" }, rate),
        h("td", { class: "num nowrap" }, row.avg_ms === null ? "—" : fmtSpan(row.avg_ms)),
        h("td", { class: "num nowrap" }, row.p95_ms === null ? "—" : fmtSpan(row.p95_ms))));
    }
  }

  function throughputChart(buckets, width) {
    const W = Math.max(320, Math.round(width || 960)), H = 230, left = 40, right = 8, top = 12, bottom = 26;
    const totals = buckets.map((b) => b.Completed + b.Failed + b.Cancelled);
    const peak = Math.max(4, ...totals);
    const step = niceStep(peak / 4);
    const max = Math.ceil(peak / step) * step;
    const plotH = H - top - bottom;
    const slot = (W - left - right) / buckets.length;
    const y = (v) => top + plotH - (v / max) * plotH;
    const svgEl = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Finished jobs per hour" });
    for (let v = 0; v <= max; v += step) {
      svgEl.append(s("line", { class: "grid-line", x1: left, x2: W - right, y1: y(v), y2: y(v) }));
      svgEl.append(s("text", { class: "axis-label", x: left - 8, y: y(v) + 4, "text-anchor": "end" }, fmtNum(v)));
    }
    buckets.forEach((b, i) => {
      const x = left + i * slot + slot * 0.18;
      const w = slot * 0.64;
      const col = s("g", { class: "col" });
      let base = 0;
      for (const [key, cls] of [["Completed", "bar-completed"], ["Failed", "bar-failed"], ["Cancelled", "bar-cancelled"]]) {
        const value = b[key];
        if (!value) continue;
        col.append(s("rect", { class: cls, x, width: w, y: y(base + value), height: Math.max(1, y(base) - y(base + value)), rx: 2 }));
        base += value;
      }
      const hour = new Date(b.hour);
      col.append(s("rect", { x: left + i * slot, y: top, width: slot, height: plotH, fill: "transparent" },
        s("title", null, `${pad(hour.getHours())}:00 — ${b.Completed} completed, ${b.Failed} failed, ${b.Cancelled} cancelled`)));
      svgEl.append(col);
      if (i % 3 === 0 || i === buckets.length - 1) {
        svgEl.append(s("text", { class: "axis-label", x: left + i * slot + slot / 2, y: H - 8, "text-anchor": "middle" }, `${pad(hour.getHours())}:00`));
      }
    });
    return svgEl;
  }

  function niceStep(raw) {
    const power = 10 ** Math.floor(Math.log10(Math.max(raw, 1)));
    for (const m of [1, 2, 5, 10]) if (m * power >= raw) return m * power;
    return 10 * power;
  }

  // Queue --------------------------------------------------------------------------------

  function queuePage() {
    const selected = new Set();
    const running = h("tbody");
    const queued = h("tbody");
    const runningCount = h("span", { class: "hint" });
    const queuedCount = h("span", { class: "hint" });
    const workerSelect = h("select", { "aria-label": "Worker" }, h("option", { value: "" }, "Worker…"));
    const cancelSelected = h("button", { class: "btn danger", type: "button", disabled: true, onclick: async () => {
      const ids = [...selected];
      if (!ids.length || !await confirmBox("Cancel selected jobs?", `${ids.length} job(s) will be cancelled.`, "Cancel jobs", true)) return;
      selected.clear();
      await act("api/jobs/cancel", { ids }, (r) => `Cancelled ${r.cancelled} job(s)`);
    } }, "Cancel selected");
    const cancelQueued = h("button", { class: "btn", type: "button", onclick: async () => {
      if (!await confirmBox("Cancel every queued job?", "Jobs that have not started will be cancelled; running jobs keep running.", "Cancel queued jobs", true)) return;
      await act("api/jobs/cancel", { state: "Queued" }, (r) => `Cancelled ${r.cancelled} queued job(s)`);
    } }, "Cancel all queued");
    const cancelWorker = h("button", { class: "btn", type: "button", onclick: async () => {
      const worker = workerSelect.value;
      if (!worker) { toast("Choose a worker first", true); return; }
      if (!await confirmBox(`Cancel all jobs of worker “${worker}”?`, "Its queued jobs are cancelled and its running job is stopped.", "Cancel jobs", true)) return;
      await act("api/jobs/cancel", { worker }, (r) => `Cancelled ${r.cancelled} job(s) of ${worker}`);
    } }, "Cancel worker’s jobs");

    clear($("main"),
      pageHead("Queue", "Running jobs and the jobs waiting to run",
        h("div", { class: "toolbar" }, cancelSelected, cancelQueued, workerSelect, cancelWorker)),
      card("Running", runningCount, table([
        { label: "", cls: "check" }, "Job", "Command", "Worker", "Progress", "Status", "Started", { label: "Elapsed", cls: "num" }, { label: "Remaining", cls: "num" }, "",
      ], running), { flush: true }),
      card("Queued", queuedCount, table([
        { label: "", cls: "check" }, "Job", "Command", "Worker", { label: "Priority", cls: "num" }, "Created", "Waiting for", { label: "Attempts", cls: "num" }, "",
      ], queued), { flush: true }));

    const rows = new Map();
    const updateButtons = () => { cancelSelected.disabled = selected.size === 0; };

    function checkbox(id) {
      return h("input", { type: "checkbox", "aria-label": `Select job ${id}`, checked: selected.has(id),
        onclick: (e) => e.stopPropagation(),
        onchange: (e) => { if (e.target.checked) selected.add(id); else selected.delete(id); updateButtons(); } });
    }

    function cancelButton(job) {
      return h("button", { class: "btn small danger", type: "button", onclick: async (e) => {
        e.stopPropagation();
        if (!await confirmBox(`Cancel job #${job.id}?`, `${jobName(job)} will be ${ACTIVE.has(job.state) && job.state !== "Queued" ? "stopped" : "cancelled"}.`, "Cancel job", true)) return;
        await act(`api/jobs/${job.id}/cancel`, {}, () => `Job #${job.id} cancelled`);
      } }, "Cancel");
    }

    function openRow(id) { return () => go({ job: id }); }

    function runningRow(job, now) {
      let row = rows.get(job.id);
      if (!row) {
        const bar = progressBar(job.progress, job.progress_estimated);
        const cells = {
          status: h("td", null), started: h("td", { class: "nowrap" }), elapsed: h("td", { class: "num nowrap" }),
          eta: h("td", { class: "num nowrap" }), state: h("span"),
        };
        const tr = h("tr", { class: "clickable", dataset: { job: job.id }, onclick: openRow(job.id) },
          h("td", { class: "check" }, checkbox(job.id)),
          h("td", null, jobLink(job.id)),
          h("td", { class: "ellipsis" }, jobName(job), job.tag ? [" ", h("span", { class: "tag" }, job.tag)] : null),
          h("td", null, job.worker || none()),
          h("td", null, bar), cells.status, cells.started, cells.elapsed, cells.eta,
          h("td", { class: "num" }, cancelButton(job)));
        row = { tr, bar, cells };
        rows.set(job.id, row);
      }
      row.bar.update(job.progress, job.progress_estimated);
      clear(row.cells.status,
        job.cancel_requested ? h("span", { class: "badge Cancelled" }, "cancelling") :
          job.state === "Executed" ? badge("Executed") : null,
        job.status ? h("span", { class: "status-line" }, job.status) : (job.cancel_requested || job.state === "Executed" ? null : none("")));
      clear(row.cells.started, when(job.started_date, now));
      row.cells.elapsed.textContent = fmtSpan(job.elapsed_ms, true);
      row.cells.eta.textContent = job.eta_ms === null ? "—" : `~${fmtSpan(job.eta_ms, true)}`;
      return row.tr;
    }

    function waitingText(job) {
      const w = job.waiting;
      switch (w.reason) {
        case "run_after": return [h("span", { class: "badge Queued" }, "scheduled"), " ", h("span", { title: fmtTime(w.until) }, `runs ${fmtAgo(w.until)}`)];
        case "depends_on": return ["job ", jobLink(w.job_id), ` to complete${w.state ? ` (${w.state})` : ""}`];
        case "worker_busy": return ["worker ", h("b", null, w.worker), " busy with ", jobLink(w.job_id)];
        case "worker_queue": return ["behind ", jobLink(w.job_id), " on worker ", h("b", null, w.worker)];
        default: return h("span", { class: "muted" }, "a free slot (ready)");
      }
    }

    let lastQueued = "";
    return {
      name: "queue",
      async refresh() {
        const data = await api("api/queue");
        const now = data.now;
        runningCount.textContent = `${fmtNum(data.running_total)} running`;
        queuedCount.textContent = data.queued_total > data.queued.length
          ? `showing ${data.queued.length} of ${fmtNum(data.queued_total)}` : `${fmtNum(data.queued_total)} queued`;
        const live = new Set(data.running.map((j) => j.id));
        for (const id of [...rows.keys()]) if (!live.has(id)) rows.delete(id);
        const present = new Set([...live, ...data.queued.map((j) => j.id)]);
        for (const id of [...selected]) if (!present.has(id)) selected.delete(id);
        updateButtons();
        if (data.running.length) running.replaceChildren(...data.running.map((j) => runningRow(j, now)));
        else clear(running, emptyRow(10, "Nothing is running."));
        const workers = new Set([...data.running, ...data.queued].map((j) => j.worker).filter(Boolean));
        const current = workerSelect.value;
        const options = [...workers].sort();
        if (JSON.stringify(options) !== workerSelect.dataset.options) {
          workerSelect.dataset.options = JSON.stringify(options);
          workerSelect.replaceChildren(h("option", { value: "" }, "Worker…"), ...options.map((w) => h("option", { value: w }, w)));
          workerSelect.value = options.includes(current) ? current : "";
        }
        const json = JSON.stringify([data.queued, [...selected]]);
        if (json === lastQueued) return;
        lastQueued = json;
        clear(queued);
        if (!data.queued.length) { queued.append(emptyRow(9, "The queue is empty.")); return; }
        for (const job of data.queued) {
          queued.append(h("tr", { class: `clickable${selected.has(job.id) ? " selected" : ""}`, dataset: { job: job.id }, onclick: openRow(job.id) },
            h("td", { class: "check" }, checkbox(job.id)),
            h("td", null, jobLink(job.id)),
            h("td", { class: "ellipsis" }, jobName(job), job.tag ? [" ", h("span", { class: "tag" }, job.tag)] : null),
            h("td", null, job.worker || none()),
            h("td", { class: "num" }, job.priority),
            h("td", { class: "nowrap" }, when(job.created_date, now)),
            h("td", null, waitingText(job)),
            h("td", { class: "num" }, `${job.attempts} / ${job.retry_limit + 1}`),
            h("td", { class: "num" }, cancelButton(job))));
        }
      },
    };
  }

  // Scheduled ----------------------------------------------------------------------------

  function scheduledPage() {
    const body = h("tbody");
    const notice = h("div", { class: "notice", hidden: true });
    clear($("main"),
      pageHead("Scheduled", "Recurring tasks, when they last ran and when they run next"),
      notice,
      card(null, null, table(["Task", "Schedule", "Runs", "Last run", "Next run", "Last job", ""], body), { flush: true }));
    let last = "";
    return {
      name: "scheduled",
      async refresh() {
        const data = await api("api/scheduled");
        const json = JSON.stringify(data.tasks) + data.can_run_now + Math.floor(Date.parse(data.now) / 5000);
        if (json === last) return;
        last = json;
        notice.hidden = data.can_run_now || !data.tasks.length;
        notice.textContent = "Running a task on demand needs a newer asyncjobs runtime; the schedule itself works.";
        clear(body);
        if (!data.tasks.length) {
          body.append(emptyRow(7, "No scheduled tasks. Register one with jobs.recurring_command(...) or jobs.recurring_api(...)."));
          return;
        }
        for (const task of data.tasks) {
          // A runtime without per-task flags leaves them out: each task then goes by the whole.
          const runnable = data.can_run_now && task.can_run_now !== false;
          const run = h("button", { class: "btn small", type: "button", disabled: !runnable,
            title: runnable ? "Enqueue this task now"
              : task.cannot_run_now || "Not supported by this runtime",
            onclick: async () => {
              await act(`api/scheduled/${encodeURIComponent(task.name)}/run`, {}, (r) => `Enqueued ${task.name}${r.job_id ? ` as job #${r.job_id}` : ""}`);
            } }, "Run now");
          body.append(h("tr", null,
            h("td", null, h("b", null, task.name), task.enabled ? null : [" ", h("span", { class: "badge" }, "disabled")]),
            h("td", { class: "mono" }, task.schedule_text),
            h("td", { class: "ellipsis" }, task.command || task.request, h("span", { class: "kind" }, task.request_type === "API" ? "API" : "")),
            h("td", { class: "nowrap" }, when(task.last_run, data.now)),
            h("td", { class: "nowrap" }, task.enabled ? when(task.next_run, data.now) : none()),
            h("td", null, task.last_job_id ? [jobLink(task.last_job_id), " ", task.last_job_state ? badge(task.last_job_state) : null] : none("never ran")),
            h("td", { class: "num" }, run)));
        }
      },
    };
  }

  // History ------------------------------------------------------------------------------

  function historyPage(route) {
    const tab = ["summary", "completed", "failed"].includes(route.tab) ? route.tab : "summary";
    const params = route.params;
    const selected = new Set();
    const body = h("tbody");
    const pager = h("div", { class: "pager" });
    const requeueSelected = h("button", { class: "btn", type: "button", disabled: true, hidden: tab !== "failed", onclick: async () => {
      const ids = [...selected];
      if (!ids.length) return;
      const result = await act("api/jobs/requeue", { ids }, (r) => `Requeued ${r.requeued.length} job(s)`);
      if (result) { selected.clear(); requeueSelected.disabled = true; }
    } }, "Requeue selected");

    const month = h("select", { name: "month", "aria-label": "Month" });
    const state = h("select", { name: "state", "aria-label": "State" }, h("option", { value: "" }, "Any state"),
      (tab === "failed" ? ["Failed", "Cancelled"] : STATES).map((st) => h("option", { value: st }, st)));
    const field = (name, label, type, wide) => h("label", { class: wide ? "wide" : "" }, label,
      h("input", { type: type || "text", name, value: params[name] || "", autocomplete: "off", spellcheck: "false" }));
    state.value = params.state || "";
    const more = ["tag", "batch_id", "ref_id", "created_by", "user_id", "from", "to"];
    const extra = h("div", { class: "filters-more", hidden: !more.some((name) => params[name]) },
      field("tag", "Tag"),
      field("batch_id", "Batch id"),
      field("ref_id", "Ref id"),
      field("created_by", "Created by"),
      field("user_id", "User id"),
      field("from", "Created from", "date"),
      field("to", "Created to", "date"));
    const form = h("form", { class: "filters", onsubmit: (e) => {
      e.preventDefault();
      const values = { month: month.value || null, offset: null };
      for (const el of form.elements) if (el.name && el.name !== "month") values[el.name] = el.value.trim() || null;
      go(values);
    } },
      h("div", { class: "filters-main" },
        field("q", "Search", "search", true),
        h("label", null, "Month", month),
        tab === "completed" ? h("span") : h("label", null, "State", state),
        field("command", "Command or API"),
        field("worker", "Worker"),
        h("div", { class: "actions" },
          h("button", { class: "btn ghost", type: "button", onclick: () => { extra.hidden = !extra.hidden; } }, "More filters"),
          h("button", { class: "btn ghost", type: "button", onclick: () => {
            const reset = { offset: null, month: null };
            for (const name of FILTERS) reset[name] = null;
            go(reset);
          } }, "Reset"),
          h("button", { class: "btn primary", type: "submit" }, "Apply"))),
      extra);

    const tabLink = (name, label) => h("a", { href: hashFor({ page: "history", tab: name, params: {} }), class: tab === name ? "active" : "" }, label);
    const columns = [tab === "failed" ? { label: "", cls: "check" } : null, "Job", "Command", "State", "Worker", "Tag", "Created",
      { label: "Duration", cls: "num" }, { label: "Attempts", cls: "num" }, tab === "completed" ? null : "Error",
      tab === "failed" ? { label: "" } : null].filter((c) => c !== null);
    clear($("main"),
      pageHead("History", tab === "summary" ? "Every job, active or archived, across months"
        : `${tab === "completed" ? "Completed" : "Failed and cancelled"} jobs, archived by month`, requeueSelected),
      h("nav", { class: "tabs" }, tabLink("summary", "Summary"), tabLink("completed", "Completed"), tabLink("failed", "Failed")),
      h("section", { class: "card" }, form, table(columns, body), pager));

    let last = "";
    return {
      name: "history",
      key: `${tab}${location.hash}`,
      async refresh() {
        const request = { view: tab, limit: 50, offset: params.offset || 0, month: params.month };
        for (const name of FILTERS) if (name !== "state" || tab !== "completed") request[name] = params[name];
        const data = await api(`api/jobs${query(request)}`);
        fillMonths(data);
        const json = JSON.stringify([data.items, data.has_more, [...selected]]);
        if (json === last) return;
        last = json;
        clear(body);
        if (!data.items.length) body.append(emptyRow(columns.length, "No jobs match these filters."));
        for (const job of data.items) body.append(historyRow(job));
        const offset = Number(data.offset);
        clear(pager,
          h("span", null, data.items.length ? `Jobs ${fmtNum(offset + 1)}–${fmtNum(offset + data.items.length)}` : ""),
          h("div", { class: "toolbar" },
            h("button", { class: "btn small", type: "button", disabled: offset === 0, onclick: () => go({ offset: Math.max(0, offset - data.limit) || null }) }, "‹ Newer"),
            h("button", { class: "btn small", type: "button", disabled: !data.has_more, onclick: () => go({ offset: offset + data.limit }) }, "Older ›")));
      },
    };

    function fillMonths(data) {
      const months = [...data.months].reverse();
      const wanted = tab === "summary" ? (params.month || "") : data.month;
      if (tab !== "summary" && wanted && !months.includes(wanted)) months.unshift(wanted);
      const key = JSON.stringify([months, wanted]);
      if (month.dataset.key === key) return;
      month.dataset.key = key;
      const label = (m) => new Date(Date.UTC(Number(m.slice(0, 4)), Number(m.slice(4)) - 1, 1))
        .toLocaleDateString(undefined, { year: "numeric", month: "long", timeZone: "UTC" });
      month.replaceChildren(
        tab === "summary" ? h("option", { value: "" }, "All months") : null,
        ...months.map((m) => h("option", { value: m }, label(m))));
      month.value = wanted || "";
    }

    function historyRow(job) {
      const cells = [];
      if (tab === "failed") {
        cells.push(h("td", { class: "check" }, h("input", { type: "checkbox", "aria-label": `Select job ${job.id}`, checked: selected.has(job.id),
          onclick: (e) => e.stopPropagation(),
          onchange: (e) => { if (e.target.checked) selected.add(job.id); else selected.delete(job.id); requeueSelected.disabled = selected.size === 0; } })));
      }
      cells.push(
        h("td", null, jobLink(job.id)),
        h("td", { class: "ellipsis" }, jobName(job), h("span", { class: "kind" }, job.request_type === "API" ? "API" : "")),
        h("td", null, badge(job.state)),
        h("td", null, job.worker || none()),
        h("td", null, job.tag ? h("span", { class: "tag", title: job.tag }, job.tag) : none()),
        h("td", { class: "nowrap" }, when(job.created_date)),
        h("td", { class: "num nowrap" }, job.duration_ms === null ? "—" : fmtSpan(job.duration_ms)),
        h("td", { class: "num" }, job.attempts));
      if (tab !== "completed") {
        cells.push(h("td", { class: "ellipsis error-text", title: job.error_message || "" }, job.error_message || ""));
      }
      if (tab === "failed") {
        cells.push(h("td", { class: "num" }, h("button", { class: "btn small", type: "button", dataset: { requeue: job.id }, onclick: async (e) => {
          e.stopPropagation();
          await act(`api/jobs/${job.id}/requeue`, {}, () => `Job #${job.id} requeued`);
        } }, "Requeue")));
      }
      return h("tr", { class: "clickable", dataset: { job: job.id }, onclick: () => go({ job: job.id }) }, cells);
    }
  }

  // -- the job panel ----------------------------------------------------------------------

  function openPanel(id) {
    if (panel && panel.id === id) return;
    const el = $("panel");
    $("backdrop").hidden = false;
    el.hidden = false;
    clear(el, h("div", { class: "panel-head" }, h("div", { class: "panel-title" },
      h("h2", null, `Job #${id}`), h("button", { class: "btn ghost close", type: "button", onclick: closePanel, "aria-label": "Close" }, "✕"))),
    h("div", { class: "panel-body" }, h("p", { class: "muted" }, "Loading…")));
    panel = jobPanel(id, el);
    panel.refresh().catch((error) => showPanelError(el, id, error));
  }

  function closePanel() {
    go({ job: null });
  }

  function hidePanel() {
    panel = null;
    $("panel").hidden = true;
    $("backdrop").hidden = true;
    clear($("panel"));
  }

  function showPanelError(el, id, error) {
    const body = el.querySelector(".panel-body");
    if (body) clear(body, h("div", { class: "notice" }, error.message));
  }

  function jobPanel(id, el) {
    let detail = null;
    let logOffset = 0;
    let logEl = null;
    let liveEls = null;

    async function load() {
      detail = await api(`api/jobs/${id}`);
      render();
    }

    function render() {
      const d = detail;
      const job = d.job || d.summary;
      const s0 = d.summary;
      const actions = h("div", { class: "panel-actions" },
        d.can_cancel ? h("button", { class: "btn danger", type: "button", dataset: { action: "cancel" }, onclick: async () => {
          if (!await confirmBox(`Cancel job #${id}?`, job.state === "Queued" ? "It will never start." : "The running job is stopped and ends Cancelled.", "Cancel job", true)) return;
          await act(`api/jobs/${id}/cancel`, {}, () => `Job #${id} cancelled`);
          await load();
        } }, "Cancel job") : null,
        d.can_requeue ? h("button", { class: "btn primary", type: "button", dataset: { action: "requeue" }, onclick: async () => {
          await act(`api/jobs/${id}/requeue`, {}, () => `Job #${id} requeued`);
          await load();
        } }, "Requeue") : null);

      const span = (ms) => (ms === null || ms === undefined ? null : fmtSpan(ms));
      const props = [
        ["Ref id", h("span", { class: "mono" }, s0.ref_id)],
        ["Kind", job.request_type === "API" ? "API (handler for the request type)" : "Command"],
        ["Command", job.command || null],
        ["Request type", job.request],
        ["Worker", job.worker || none("none (runs in parallel)")],
        ["Tag", job.tag ? h("span", { class: "tag" }, job.tag) : null],
        ["Batch id", job.batch_id ? h("span", { class: "mono" }, job.batch_id) : null],
        ["Priority", job.priority ? String(job.priority) : null],
        ["Created", [fmtTime(job.created_date), " ", h("span", { class: "muted" }, `(${fmtAgo(job.created_date)})`)]],
        ["Created by", job.created_by || null],
        ["User id", job.user_id || null],
        ["Run after", job.run_after ? fmtTime(job.run_after) : null],
        ["Started", job.started_date ? fmtTime(job.started_date) : null],
        ["Completed", job.completed_date ? fmtTime(job.completed_date) : null],
        ["Duration", span(job.duration_ms)],
        ["Attempts", job.retry_limit === undefined ? String(job.attempts) : `${job.attempts} of ${job.retry_limit + 1}`],
        ["Timeout", job.timeout_secs ? fmtSpan(job.timeout_secs * 1000) : null],
        ["Callback", job.callback ? [job.callback, job.notified_date ? h("span", { class: "muted" }, ` — notified ${fmtTime(job.notified_date)}`) : null] : null],
        ["Reply to", job.reply_to ? h("span", { class: "mono" }, job.reply_to) : null],
        ["Depends on", s0.depends_on ? [jobLink(s0.depends_on), " ", d.depends_on_job ? badge(d.depends_on_job.state) : none("not found")] : null],
        ["Parent", s0.parent_id ? [jobLink(s0.parent_id), " ", d.parent ? badge(d.parent.state) : none("not found")] : null],
        ["Stored in", { queue: "the queue", completed: "the completed archive", failed: "the failed archive", summary: "summary only (its archive month was dropped)" }[d.location]],
      ].filter(([, value]) => value !== null && value !== undefined);

      const sections = [];
      const section = (title, ...content) => sections.push(h("div", { class: "section" }, h("h3", null, title), ...content));
      const running = d.state === "Started" || d.state === "Executed";
      liveEls = null;
      if (ACTIVE.has(d.state)) {
        const bar = progressBar(job.progress, false);
        const status = h("div", { class: "status-line" }, job.status || "");
        liveEls = { bar, status };
        section(running ? "Progress" : "Waiting",
          h("div", { class: "live-progress" }, running ? bar : h("span", { class: "muted" }, "Queued; not started yet."), status));
      }
      if (job.error || s0.error_message) {
        const error = job.error || { message: s0.error_message, type: s0.error_code || "" };
        section("Error", h("div", { class: "error-box" },
          h("div", { class: "message" }, error.message),
          h("div", { class: "type" }, [error.type, job.error_code && job.error_code !== error.type ? ` · ${job.error_code}` : ""].join("")),
          error.traceback ? h("pre", { class: "code" }, error.traceback) : null));
      }
      const logs = h("pre", { class: "code logs", dataset: { logs: id } }, job.logs || "");
      logEl = logs;
      logOffset = d.log_length;  // the server's count: a JS string's length counts UTF-16 units
      const logSection = () => section("Logs", job.logs || ACTIVE.has(d.state) ? logs : h("p", { class: "muted" }, "No log lines."));
      if (ACTIVE.has(d.state)) logSection();
      section("Details", h("dl", { class: "props" }, props.map(([k, v]) => [h("dt", null, k), h("dd", null, v)])));
      if (job.request_body !== undefined) {
        section(`Request · ${job.request}`, h("pre", { class: "code light" }, prettyJson(job.request_body)));
      }
      if (job.response_body) {
        section(`Response · ${job.response || ""}`, h("pre", { class: "code light" }, prettyJson(job.response_body)));
      }
      if (!ACTIVE.has(d.state)) logSection();
      if (job.args && Object.keys(job.args).length) {
        section("Args", h("dl", { class: "props" }, Object.entries(job.args).map(([k, v]) => [h("dt", { class: "mono" }, k), h("dd", null, v)])));
      }
      if (job.meta && Object.keys(job.meta).length) {
        section("Meta", h("pre", { class: "code light" }, JSON.stringify(job.meta, null, 2)));
      }
      for (const [title, list] of [["Dependents", d.dependents], ["Child jobs", d.children]]) {
        if (!list.length) continue;
        section(`${title} (${list.length})`, h("ul", { class: "list" }, list.map((r) => h("li", null, jobLink(r.id), h("span", null, r.command || r.request), badge(r.state),
          h("span", { class: "muted", style: { marginLeft: "auto" } }, fmtAgo(r.created_date))))));
      }

      clear(el,
        h("div", { class: "panel-head" },
          h("div", { class: "panel-title" },
            h("h2", null, `Job #${id}`), badge(d.state),
            h("button", { class: "btn ghost close", type: "button", onclick: closePanel, "aria-label": "Close" }, "✕")),
          h("div", { class: "panel-sub" }, h("b", null, jobName(job)), job.request_type === "API" ? h("span", { class: "kind" }, "API") : null,
            h("span", { class: "mono faint" }, s0.ref_id)),
          actions),
        h("div", { class: "panel-body" }, sections));
      if (logs.isConnected) logs.scrollTop = logs.scrollHeight;
    }

    async function live() {
      const data = await api(`api/jobs/${id}/live?log_offset=${logOffset}`);
      if (!data.active || data.state !== detail.state) {
        await load();
        return;
      }
      if (liveEls) {
        liveEls.bar.update(data.progress, false);
        liveEls.status.textContent = data.cancel_requested ? "Cancelling…" : (data.status || "");
      }
      if (data.logs && logEl) {
        const atBottom = logEl.scrollTop + logEl.clientHeight >= logEl.scrollHeight - 8;
        if (data.log_offset < logOffset) logEl.textContent = data.logs;
        else logEl.append(document.createTextNode(data.logs));
        if (atBottom) logEl.scrollTop = logEl.scrollHeight;
      }
      logOffset = data.log_offset;
    }

    return {
      id,
      async refresh() {
        if (detail === null) await load();
        else if (ACTIVE.has(detail.state)) await live();
      },
    };
  }

  // -- the loop ---------------------------------------------------------------------------

  function markNav(name) {
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === name);
  }

  function route() {
    const r = parseHash();
    const builders = { dashboard: dashboardPage, queue: queuePage, scheduled: scheduledPage, history: historyPage };
    const name = builders[r.page] ? r.page : "dashboard";
    const { job, ...rest } = r.params;
    const key = `${name}/${r.tab}?${new URLSearchParams(rest)}`;
    if (!page || page.routeKey !== key) {
      page = builders[name](r);
      page.routeKey = key;
      markNav(name);
    }
    const id = job && /^\d+$/.test(job) ? Number(job) : null;
    if (id === null) { if (panel) hidePanel(); } else openPanel(id);
    tick(true);
  }

  let ticking = false;
  let again = false;  // asked for while a tick was running: run one more right after it
  let timer = null;

  async function tick(now) {
    if (ticking) { again = again || Boolean(now); return; }
    clearTimeout(timer);
    if (document.hidden && !now) { timer = setTimeout(tick, POLL_MS); return; }
    ticking = true;
    const liveEl = $("live");
    try {
      overview = await api("api/overview");
      $("nav-queue").textContent = overview.counts.Queued + overview.running ? fmtNum(overview.counts.Queued + overview.running) : "";
      const work = [];
      if (page) work.push(page.refresh());
      if (panel) work.push(panel.refresh());
      await Promise.all(work);
      liveEl.className = "live ok";
      liveEl.textContent = "Live";
    } catch (error) {
      liveEl.className = "live error";
      liveEl.textContent = error.status === 401 || error.status === 403 ? "Not authorised" : "Reconnecting…";
      liveEl.title = error.message;
    } finally {
      ticking = false;
      if (again) { again = false; timer = setTimeout(() => tick(true), 0); }
      else timer = setTimeout(tick, POLL_MS);
    }
  }

  document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(true); });
  window.addEventListener("hashchange", route);
  window.addEventListener("popstate", route);
  $("backdrop").addEventListener("click", closePanel);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !$("modal").hidden) return;
    if (e.key === "Escape" && panel) closePanel();
  });
  $("jump").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = $("jump-input");
    const value = input.value.trim();
    if (!value) return;
    try {
      const id = /^\d+$/.test(value) ? Number(value) : (await api(`api/jobs/by-ref/${encodeURIComponent(value)}`)).summary.id;
      await api(`api/jobs/${id}`);
      input.value = "";
      go({ job: id });
    } catch (error) {
      toast(error.message, true);
    }
  });
  route();
})();
