// fluxcelery trace viewer. Every value from the API is inserted as text (textContent or
// text nodes via h()); nothing is ever parsed as HTML.
"use strict";

(() => {
  const POLL_MS = 1500;
  const RUN_STATUSES = ["pending", "running", "suspended", "completed", "rolling_back",
    "rolled_back", "failed", "cancelled"];
  const STEP_LEGEND = ["completed", "running", "pending", "suspended", "skipped", "failed",
    "compensated"];
  const OUTCOME_LABEL = {
    completed: "completed", retry: "failed, retried", failed: "failed", suspended: "suspended",
    skipped: "skipped", running: "running", interrupted: "interrupted",
    compensated: "compensated", compensating: "compensation failed, retried",
    compensation_failed: "compensation failed",
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    workflow: $("f-workflow"), status: $("f-status"), run: $("f-run"), counts: $("counts"),
    runs: $("runs"), runsEmpty: $("runs-empty"), runsTotal: $("runs-total"),
    source: $("source"), live: $("live"), liveText: $("live-text"), banner: $("banner"),
    runView: $("run-view"), overview: $("overview"), runHead: $("run-head"), path: $("path"),
    legend: $("legend"), rollback: $("rollback"), gantt: $("gantt"),
    tracebacks: $("tracebacks"), tracebacksPanel: $("tracebacks-panel"),
    attemptsNote: $("attempts-note"), timeline: $("timeline").tBodies[0],
    timelineNote: $("timeline-note"), payload: $("payload-body"),
    recent: $("recent").tBodies[0], recentEmpty: $("recent-empty"),
  };
  const state = {
    workflow: "", status: "", query: "", run: "",
    seen: { runs: null, detail: null, recent: null },
    runs: [], timer: 0, seq: 0,
    collapsed: new Set(), detail: null, // groups folded on the attempts chart; the run shown
  };

  // -- DOM helpers (text only) ----------------------------------------------------------
  function h(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key === "data") Object.assign(node.dataset, value);
      else if (key === "style") Object.assign(node.style, value); // CSSOM, allowed by the CSP
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const clear = (node) => node.replaceChildren();

  // -- formatting -----------------------------------------------------------------------
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.` +
      pad(d.getMilliseconds(), 3);
  }
  function fmtDateTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  // Milliseconds exactly: 0 is "0 ms", unknown is "—".
  function fmtMs(ms) {
    if (ms === null || ms === undefined || Number.isNaN(Number(ms))) return "—";
    return `${Math.round(Number(ms)).toLocaleString("en-US")} ms`;
  }
  // "40/100 (40%) resizing": a running step's last ctx.progress report (as the CLI shows it).
  function fmtProgress(p) {
    if (!p) return "";
    const num = (v) => typeof v === "number";
    let text = num(p.done) ? String(p.done) : "";
    if (num(p.total)) {
      text += `/${p.total}`;
      if (p.total > 0 && num(p.done)) text += ` (${Math.min(100, Math.round(100 * p.done / p.total))}%)`;
    }
    return p.message ? `${text} ${p.message}` : text;
  }
  function fmtDuration(ms) {
    if (ms === null || ms === undefined) return "—";
    if (ms < 1000) return `${ms} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
    const m = Math.floor(ms / 60000);
    return m < 60 ? `${m}m ${pad(Math.floor((ms % 60000) / 1000))}s` :
      `${Math.floor(m / 60)}h ${pad(m % 60)}m`;
  }
  function fmtAttempt(attempt, max) {
    if (attempt === null || attempt === undefined) return "—";
    return max ? `${attempt}/${max}` : String(attempt);
  }
  const shortId = (id) => (id && id.length > 12 ? id.slice(0, 8) : id || "");
  const label = (status) => String(status || "").replace(/_/g, " ");
  const badge = (status, extra) =>
    h("span", { class: `badge st-${status}${extra ? " " + extra : ""}`, text: label(status) });
  function eventClass(type) {
    const t = String(type || "");
    if (t === "step:complete" || t === "workflow:complete") return "ev-ok";
    if (t === "step:error" || t === "workflow:error" || t === "hook:error" ||
        t === "step:compensate_error") return "ev-bad";
    if (t === "step:retry") return "ev-warn";
    if (t === "step:suspend" || t === "signal:received" || t.startsWith("approval:")) return "ev-wait";
    if (t.includes("compensate") || t.includes("rollback")) return "ev-comp";
    if (t === "step:skipped" || t === "workflow:cancel") return "ev-muted";
    return "ev-info";
  }

  // -- parallel branches and for_each items (SPEC 11) -------------------------------------
  // A row's name as every table shows it: "notify[3]" for an item of a for_each.
  const stepLabel = (s) => (s.item === null || s.item === undefined ? s.name : `${s.name}[${s.item}]`);
  const isGroup = (s) => s.kind === "parallel" || s.kind === "for_each";
  // The run's rows as a tree, like `fluxcelery show` and the Flower tab: each top-level row
  // with its branches ({name, steps}) or its items (in item order) under it.
  function groupSteps(steps) {
    const indexes = new Set(steps.map((s) => s.index));
    const below = new Map();
    const top = [];
    for (const s of steps) {
      const p = s.parent;
      if (p !== null && p !== undefined && p !== s.index && indexes.has(p)) {
        if (!below.has(p)) below.set(p, []);
        below.get(p).push(s);
      } else {
        top.push(s);
      }
    }
    return top.map((s) => {
      const rows = below.get(s.index) || [];
      const branches = [];
      for (const r of rows) {
        if (r.item !== null && r.item !== undefined) continue;
        const name = r.branch ?? "";
        let lane = branches.find((b) => b.name === name);
        if (!lane) branches.push(lane = { name, steps: [] });
        lane.steps.push(r);
      }
      const items = rows.filter((r) => r.item !== null && r.item !== undefined)
        .sort((a, b) => a.item - b.item);
      return { step: s, branches, items };
    });
  }
  // "985 completed, 5 failed"
  function countText(rows) {
    const counts = new Map();
    for (const r of rows) counts.set(r.status, (counts.get(r.status) || 0) + 1);
    const order = ["completed", "running", "suspended", "pending", "skipped", "failed",
      "compensating", "compensated", "compensation_failed"];
    return [...counts].sort((a, b) => order.indexOf(a[0]) - order.indexOf(b[0]))
      .map(([status, n]) => `${n} ${label(status)}`).join(", ");
  }

  // -- URL state (#run=…&workflow=…&status=…) ---------------------------------------------
  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    state.run = p.get("run") || "";
    state.workflow = p.get("workflow") || "";
    state.status = RUN_STATUSES.includes(p.get("status")) ? p.get("status") : "";
  }
  function writeHash() {
    const p = new URLSearchParams();
    if (state.run) p.set("run", state.run);
    if (state.workflow) p.set("workflow", state.workflow);
    if (state.status) p.set("status", state.status);
    const next = p.toString();
    if (location.hash.slice(1) === next) return;
    history.replaceState(null, "", next ? `#${next}` : location.pathname + location.search);
  }

  // -- data -----------------------------------------------------------------------------
  async function getJson(url) {
    const res = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
    const text = await res.text();
    let json = null;
    try { json = JSON.parse(text); } catch (_) { /* shown below */ }
    if (!res.ok && res.status !== 404) {
      throw new Error((json && json.error) || `HTTP ${res.status}`);
    }
    return { status: res.status, text, json };
  }

  async function poll() {
    clearTimeout(state.timer);
    const seq = ++state.seq;
    try {
      const q = new URLSearchParams();
      if (state.workflow) q.set("workflow", state.workflow);
      if (state.status) q.set("status", state.status);
      const runs = await getJson(`/api/runs?${q}`);
      if (seq !== state.seq) return;
      if (runs.text !== state.seen.runs) {
        state.seen.runs = runs.text;
        renderRuns(runs.json);
      }
      if (state.run) {
        const detail = await getJson(`/api/runs/${encodeURIComponent(state.run)}`);
        if (seq !== state.seq) return;
        if (detail.text !== state.seen.detail) {
          state.seen.detail = detail.text;
          if (detail.status === 404) renderMissing(state.run);
          else renderDetail(detail.json);
        }
      } else {
        const eq = new URLSearchParams({ limit: "200" });
        if (state.workflow) eq.set("workflow", state.workflow);
        const recent = await getJson(`/api/events?${eq}`);
        if (seq !== state.seq) return;
        if (recent.text !== state.seen.recent) {
          state.seen.recent = recent.text;
          renderRecent(recent.json);
        }
      }
      setLive(true);
    } catch (err) {
      if (seq === state.seq) setLive(false, err);
    } finally {
      if (seq === state.seq) state.timer = setTimeout(tick, POLL_MS);
    }
  }
  function tick() {
    if (document.hidden) state.timer = setTimeout(tick, POLL_MS);
    else poll();
  }
  function setLive(ok, err) {
    ui.live.classList.toggle("offline", !ok);
    ui.liveText.textContent = ok ? `Live · ${fmtTime(new Date().toISOString())}` : "Offline";
    ui.banner.hidden = ok;
    if (!ok) ui.banner.textContent = `Cannot reach the viewer API (${err.message}); retrying…`;
  }

  // -- runs list and filters ----------------------------------------------------------
  function renderRuns(data) {
    ui.source.replaceChildren(
      h("span", { class: "source-kind", text: data.source.kind === "db" ? "database" : "trace" }),
      h("span", { class: "source-label", text: data.source.label }),
    );
    ui.source.title = data.source.label;
    const names = new Set(data.workflows);
    if (state.workflow) names.add(state.workflow);
    const options = [h("option", { value: "", text: "All workflows" })];
    for (const name of [...names].sort()) options.push(h("option", { value: name, text: name }));
    ui.workflow.replaceChildren(...options);
    ui.workflow.value = state.workflow;
    ui.status.value = state.status;

    const total = Object.values(data.counts).reduce((a, b) => a + b, 0);
    const chips = [h("button", {
      type: "button", class: `chip${state.status ? "" : " active"}`,
      onclick: () => setFilter("status", ""),
    }, "all ", h("b", { text: total }))];
    for (const status of RUN_STATUSES) {
      const n = data.counts[status] || 0;
      if (!n && state.status !== status) continue;
      chips.push(h("button", {
        type: "button", class: `chip st-${status}${state.status === status ? " active" : ""}`,
        onclick: () => setFilter("status", state.status === status ? "" : status),
      }, h("span", { class: "dot" }), `${label(status)} `, h("b", { text: n })));
    }
    ui.counts.replaceChildren(...chips);
    state.runs = data.runs;
    drawRunList();
  }

  function drawRunList() {
    const q = state.query.toLowerCase();
    const runs = q ? state.runs.filter((r) => r.id.toLowerCase().includes(q) ||
      r.workflow.toLowerCase().includes(q)) : state.runs;
    ui.runsTotal.textContent = `${runs.length} shown`;
    ui.runsEmpty.hidden = runs.length > 0;
    ui.runsEmpty.textContent = state.runs.length ? "No run matches the filters." :
      "No runs yet. Run a workflow and it shows up here.";
    ui.runs.replaceChildren(...runs.map((r) => {
      const meta = [shortId(r.id), fmtTime(r.created_at), fmtDuration(r.duration_ms),
        `${r.steps_done}/${r.steps_total} steps`];
      return h("li", {},
        h("button", {
          type: "button", class: `run-item st-${r.status}${r.id === state.run ? " selected" : ""}`,
          data: { runId: r.id }, title: r.id, "aria-current": r.id === state.run ? "true" : null,
          onclick: () => selectRun(r.id),
        },
        h("span", { class: "run-line" },
          h("span", { class: "run-wf", text: r.workflow }), badge(r.status)),
        h("span", { class: "run-meta", text: meta.join(" · ") }),
        r.error ? h("span", { class: "run-error", text: r.error }) : null));
    }));
  }

  // Rows fetched for other filters must not linger while the new ones load.
  function forgetRecent() {
    state.seen.recent = null;
    clear(ui.recent);
  }
  function setFilter(key, value) {
    state[key] = value;
    state.seen.runs = null;
    forgetRecent();
    writeHash();
    poll();
  }
  function selectRun(id) {
    if (id !== state.run) state.collapsed.clear();
    state.run = id;
    state.seen.detail = null;
    forgetRecent();
    writeHash();
    drawRunList();
    ui.runView.hidden = !id;
    ui.overview.hidden = Boolean(id);
    poll();
  }

  // -- one run ------------------------------------------------------------------------
  function renderMissing(id) {
    ui.runView.hidden = false;
    ui.overview.hidden = true;
    ui.runHead.replaceChildren(h("div", { class: "run-title" },
      h("h1", { text: "Run not found" }),
      h("button", { type: "button", class: "close", title: "Back to all runs",
        onclick: () => selectRun("") }, "×")),
    h("p", { class: "muted" }, "No run with id ", h("code", { text: id }), " in this source."));
    for (const node of [ui.path, ui.gantt, ui.timeline, ui.payload, ui.tracebacks]) clear(node);
    ui.tracebacksPanel.hidden = true;
  }

  function renderDetail(d) {
    state.detail = d;
    ui.runView.hidden = false;
    ui.overview.hidden = true;
    renderHead(d.run);
    renderPath(d.steps, d.compensations);
    renderTracebacks(d.steps);
    renderGantt(d.steps);
    renderTimeline(d.events);
    renderPayload(d.run);
  }

  function renderHead(run) {
    const facts = [
      ["Run id", h("code", { class: "run-id", text: run.id })],
      ["Started", fmtDateTime(run.created_at)],
      ["Finished", run.finished_at ? fmtDateTime(run.finished_at) : "—"],
      ["Duration", fmtDuration(run.duration_ms)],
      ["Steps", `${run.steps_done}/${run.steps_total} done`],
      ...(run.items_total ? [["Items", `${run.items_done}/${run.items_total} done`]] : []),
      ["Events", run.events],
    ];
    if (run.version) facts.push(["Version", run.version]);
    if (run.executor) facts.push(["Executor", run.executor]);
    ui.runHead.replaceChildren(
      h("div", { class: "run-title" },
        h("h1", { text: run.workflow }), badge(run.status, "badge-lg"),
        h("button", { type: "button", class: "close", title: "Back to all runs",
          "aria-label": "Close run", onclick: () => selectRun("") }, "×")),
      h("dl", { class: "facts" }, facts.map(([k, v]) =>
        h("div", {}, h("dt", { text: k }), h("dd", {}, v)))),
      // replaceChildren() turns a null argument into the text "null": no callout, no node.
      ...(run.error ? [h("div", { class: "callout" }, h("strong", { text: "Error" }),
        h("span", { text: run.error }))] : []),
    );
  }

  function stepNode(s, i) {
    const retrying = s.status === "pending" && s.attempts > 0;
    const hasMs = s.duration_ms !== null && s.duration_ms !== undefined;
    const kind = s.kind === "commit" ? "commit" : s.kind === "for_each" ? "for each" :
      s.kind === "parallel" ? "parallel" : null;
    return h("div", {
      class: `step-node status-${s.status}${retrying ? " retrying" : ""}`,
      data: { step: stepLabel(s), status: s.status, kind: s.kind }, title: s.error || stepLabel(s),
    },
    h("div", { class: "step-top" },
      h("span", { class: "step-index", text: (s.index ?? i) + 1 }),
      kind ? h("span", { class: "kind", text: kind }) : null),
    h("div", { class: "step-name", text: stepLabel(s) }),
    h("div", { class: "step-status", text: retrying ? "retrying" : label(s.status) }),
    s.attempts || hasMs ? h("div", { class: "step-meta" },
      h("span", { text: s.attempts ? `attempt ${fmtAttempt(s.attempts, s.max_attempts)}` : "" }),
      h("span", { text: hasMs ? fmtMs(s.duration_ms) : "" })) : null,
    s.waiting_for ? h("div", { class: "step-wait", text: `waits for “${s.waiting_for}”` }) : null,
    s.status === "running" && s.progress ? h("div", { class: "step-progress" },
      typeof s.progress.total === "number" && s.progress.total > 0
        ? h("progress", { value: s.progress.done, max: s.progress.total }) : null,
      h("span", { text: fmtProgress(s.progress) })) : null,
    s.task_id ? h("div", { class: "step-task", title: s.task_id,
      text: `task ${shortId(s.task_id)}` }) : null);
  }

  const ITEM_CELLS = 240; // item squares drawn under a for_each; the rest are counted

  // A parallel: its node, then one lane per branch (side by side: they run at once).
  // A for_each: its node, then a square per item coloured by status, and the counts.
  function groupBox(node, i) {
    const s = node.step;
    const box = h("div", { class: `group group-${s.kind} status-${s.status}`,
      data: { group: s.name } }, stepNode(s, i));
    if (node.branches.length) {
      box.append(h("div", { class: "lanes" }, node.branches.map((b) => h("div", {
        class: "lane", data: { branch: b.name },
      },
      h("span", { class: "lane-name", title: `branch ${b.name}`, text: b.name }),
      h("div", { class: "lane-steps" }, b.steps.map((bs, j) => h("div", { class: "path-item" },
        j ? h("span", { class: "arrow", "aria-hidden": "true" }) : null, stepNode(bs, j))))))));
    }
    if (node.items.length) {
      const shown = node.items.slice(0, ITEM_CELLS);
      box.append(h("div", { class: "items" },
        h("div", { class: "items-head" },
          h("span", { class: "items-count", text: `${node.items.length} item${node.items.length === 1 ? "" : "s"}` }),
          h("span", { class: "muted", text: countText(node.items) })),
        h("div", { class: "item-cells" }, shown.map((it) => h("span", {
          class: `item-cell st-${it.status}`, data: { item: it.item, status: it.status },
          title: `${stepLabel(it)} · ${label(it.status)}` +
            (it.duration_ms !== null && it.duration_ms !== undefined ? ` · ${fmtMs(it.duration_ms)}` : "") +
            (it.error ? ` · ${it.error}` : ""),
        })), node.items.length > shown.length ?
          h("span", { class: "muted", text: `+${node.items.length - shown.length} more` }) : null)));
    }
    return box;
  }

  function renderPath(steps, compensations) {
    ui.legend.replaceChildren(...STEP_LEGEND.map((s) =>
      h("span", { class: `legend-item st-${s}` }, h("span", { class: "swatch" }), label(s))));
    const nodes = groupSteps(steps).map((node, i) => {
      const grouped = node.branches.length || node.items.length || isGroup(node.step);
      // An arrow leads into every step but the first, so a wrapped line starts with one.
      return h("div", { class: "path-item" },
        i ? h("span", { class: "arrow", "aria-hidden": "true" }) : null,
        grouped ? groupBox(node, i) : stepNode(node.step, i));
    });
    ui.path.replaceChildren(...nodes);
    ui.path.classList.toggle("has-groups", steps.some((s) => isGroup(s)));
    if (!steps.length) ui.path.append(h("p", { class: "empty", text: "No steps yet." }));

    ui.rollback.hidden = !compensations.length;
    if (compensations.length) {
      const chips = [h("span", { class: "rollback-label", text: "Rollback" })];
      rollbackRuns(compensations).forEach((run, i) => {
        if (i) chips.push(h("span", { class: "rollback-arrow", "aria-hidden": "true", text: "←" }));
        chips.push(h("span", { class: "rollback-chip", title: run.names.join(", "),
          text: run.names.length > 1 ? `${run.base} × ${run.names.length} items` : run.names[0] }));
      });
      chips.push(h("span", { class: "muted", text: "compensated in reverse order" }));
      ui.rollback.replaceChildren(...chips);
    }
  }

  // Consecutive compensations of one for_each's items ("notify[5]", "notify[4]"…): one chip.
  function rollbackRuns(names) {
    const runs = [];
    for (const name of names) {
      const m = /^(.*)\[(\d+)\]$/.exec(name);
      const last = runs[runs.length - 1];
      if (m && last && last.base === m[1] && last.items) last.names.push(name);
      else runs.push({ base: m ? m[1] : name, items: Boolean(m), names: [name] });
    }
    return runs;
  }

  // A failed step's traceback, collapsed; blocks the reader opened stay open on redraws.
  function renderTracebacks(steps) {
    const open = new Set([...ui.tracebacks.querySelectorAll("details[open]")]
      .map((node) => node.dataset.step));
    // A parallel's or for_each's failure is that of its branch step or item: shown once.
    const below = new Set(steps.filter((s) => s.parent !== null && s.parent !== undefined)
      .map((s) => s.traceback));
    const failed = steps.filter((s) => s.traceback && !(isGroup(s) && below.has(s.traceback)));
    ui.tracebacksPanel.hidden = !failed.length;
    ui.tracebacks.replaceChildren(...failed.map((s) => h("details", {
      class: "traceback", data: { step: stepLabel(s) }, open: open.has(stepLabel(s)),
    },
    h("summary", {},
      h("span", { class: "traceback-step", text: stepLabel(s) }),
      h("span", { class: "traceback-error", text: s.error || "" }),
      h("span", { class: "muted", text: `${String(s.traceback).split("\n").length} lines` })),
    h("pre", { class: "traceback-text" }, h("code", { text: s.traceback })))));
  }

  const GANTT_LEGEND = [["out-completed", "succeeded"], ["out-retry", "failed, retried"],
    ["out-failed", "failed"], ["out-compensated phase-compensate", "compensation"]];

  const ITEM_ROWS = 20; // a for_each with more items packs them into lanes
  const MAX_LANES = 24;

  // A bar of row s: its attempt b, with the row's name in its label when the row is a
  // lane of several rows (``short``: the name alone, tried when the label does not fit).
  function ganttBar(s, b, withName, short = false) {
    const what = b.phase === "compensate" ? "compensation" : b.phase === "group" ?
      (s.kind === "parallel" ? "branches" : "items") : "attempt";
    const tip = [`${stepLabel(s)}: ${what} ${fmtAttempt(b.attempt, b.max_attempts)}`,
      OUTCOME_LABEL[b.outcome] || b.outcome, fmtMs(b.duration_ms)];
    if (b.error) tip.push(b.error);
    const name = withName ? `${stepLabel(s)} ` : "";
    const text = b.outcome === "skipped" ? `${name}skipped` : b.phase === "compensate" ?
      `${name}undo ${fmtMs(b.duration_ms)}` : b.phase === "group" ? fmtMs(b.duration_ms) :
        `${name}#${b.attempt ?? "?"} ${fmtMs(b.duration_ms)}`;
    return { s, b, tip: tip.join(" · "), text, short: short ? stepLabel(s) : null };
  }

  // Rows of the attempts chart: a step's own row; under a parallel, one lane per branch with
  // the bars of all its steps (branches side by side, so that their overlap shows); under a
  // for_each, a row per item, or with many items the items packed into as few lanes as
  // their times allow (one lane per item running at once).
  function ganttRows(steps) {
    const rows = [];
    for (const node of groupSteps(steps)) {
      const s = node.step;
      const group = node.branches.length || node.items.length || isGroup(s);
      const collapsed = state.collapsed.has(s.index);
      if (s.attempt_log.length || group) {
        rows.push({ label: s.name, cls: group ? "gantt-group" : "", data: { step: s.name },
          toggle: group && (node.branches.length || node.items.length) ? s.index : null,
          collapsed, bars: s.attempt_log.map((b) => ganttBar(s, b, false)) });
      }
      if (collapsed) continue;
      for (const lane of node.branches) {
        rows.push({ label: lane.name, cls: "gantt-lane", data: { branch: lane.name, parent: s.index },
          title: `branch ${lane.name}: ${lane.steps.map((x) => x.name).join(" → ")}`,
          bars: lane.steps.flatMap((x) => x.attempt_log.map((b) => ganttBar(x, b, true, true))) });
      }
      const ran = node.items.filter((it) => it.attempt_log.length);
      if (ran.length && ran.length <= ITEM_ROWS) {
        for (const it of ran) {
          rows.push({ label: stepLabel(it), cls: "gantt-item",
            data: { item: it.item, parent: s.index },
            bars: it.attempt_log.map((b) => ganttBar(it, b, false)) });
        }
      } else if (ran.length) {
        const lanes = packLanes(ran);
        lanes.slice(0, MAX_LANES).forEach((lane, k) => rows.push({
          label: `items · lane ${k + 1}`, cls: "gantt-item gantt-packed",
          data: { lane: k + 1, parent: s.index },
          title: `${lane.length} items: ${lane.map(stepLabel).join(", ")}`,
          bars: lane.flatMap((it) => it.attempt_log.map((b) => ganttBar(it, b, true))),
        }));
        if (lanes.length > MAX_LANES) {
          const rest = lanes.slice(MAX_LANES).reduce((n, lane) => n + lane.length, 0);
          rows.push({ label: `+${rest} items`, cls: "gantt-item gantt-more", data: { parent: s.index },
            title: `${lanes.length - MAX_LANES} more lanes`, bars: [] });
        }
      }
    }
    return rows;
  }

  // Greedy interval packing: each item (all its bars) goes to the first lane free by then.
  function packLanes(items) {
    const span = (it) => {
      let start = Infinity, end = 0;
      for (const b of it.attempt_log) {
        start = Math.min(start, b.start_ms);
        end = Math.max(end, b.start_ms + (b.duration_ms || 0));
      }
      return [start, end];
    };
    const lanes = [];
    for (const it of items.slice().sort((a, b) => span(a)[0] - span(b)[0] || a.item - b.item)) {
      const [start, end] = span(it);
      const lane = lanes.find((l) => l.end <= start);
      if (lane) { lane.items.push(it); lane.end = end; } else lanes.push({ items: [it], end });
    }
    return lanes.map((l) => l.items);
  }

  function renderGantt(steps) {
    const rows = ganttRows(steps);
    let total = 0;
    for (const r of rows) for (const { b } of r.bars) total = Math.max(total, b.start_ms + (b.duration_ms || 0));
    total = Math.max(total, 1);
    const pct = (v) => `${Math.min(100, (v / total) * 100).toFixed(3)}%`;
    const axis = h("div", { class: "gantt-row gantt-axis" }, h("span", {}),
      h("div", { class: "gantt-track" }, [0, 0.25, 0.5, 0.75, 1].map((f) =>
        h("span", { class: "tick", style: { left: `${f * 100}%` }, text: fmtMs(Math.round(total * f)) }))));
    const drawn = rows.map((r) => h("div", { class: `gantt-row ${r.cls}`.trim(), data: r.data },
      r.toggle !== null && r.toggle !== undefined ? h("button", {
        type: "button", class: "gantt-label gantt-toggle", title: r.collapsed ? "Show the rows under it" :
          "Hide the rows under it", "aria-expanded": r.collapsed ? "false" : "true",
        onclick: () => toggleGroup(r.toggle),
      }, h("span", { class: "caret", "aria-hidden": "true", text: r.collapsed ? "▸" : "▾" }), r.label) :
        h("span", { class: "gantt-label", title: r.title || r.label, text: r.label }),
      h("div", { class: "gantt-track" }, r.bars.map(({ b, tip, text, short }) => h("span", {
        class: `bar out-${b.outcome} phase-${b.phase}`,
        title: tip, data: short ? { short } : null,
        style: { left: pct(b.start_ms), width: pct(b.duration_ms || 0) },
      }, h("span", { class: "bar-label", text }))))));
    ui.gantt.replaceChildren(axis, ...drawn);
    placeBarLabels();
    if (!rows.length) ui.gantt.append(h("p", { class: "empty", text: "No attempts yet." }));
    ui.attemptsNote.replaceChildren(...GANTT_LEGEND.map(([cls, text]) =>
      h("span", { class: `legend-item ${cls}` }, h("span", { class: "swatch solid" }), text)));
  }

  function toggleGroup(index) {
    if (state.collapsed.has(index)) state.collapsed.delete(index);
    else state.collapsed.add(index);
    if (state.detail) renderGantt(state.detail.steps);
  }

  // Each bar's label goes inside it, else right of it, else left of it, whichever fits
  // without touching a neighbour; a branch lane's bar then tries its step's name alone;
  // otherwise the label is hidden (the tooltip still has it).
  function placeBarLabels() {
    for (const track of ui.gantt.querySelectorAll(".gantt-row:not(.gantt-axis) .gantt-track")) {
      const bars = [...track.querySelectorAll(".bar")].map((bar) => {
        bar.classList.remove("label-in", "label-left", "label-none");
        if (bar.dataset.full) bar.firstChild.textContent = bar.dataset.full;
        return { bar, left: bar.offsetLeft, right: bar.offsetLeft + bar.offsetWidth,
          width: bar.firstChild.offsetWidth + 12 };
      }).sort((a, b) => a.left - b.left);
      let used = 0;
      const fit = (x, next) => {
        if (x.right - x.left >= x.width && !x.bar.classList.contains("out-skipped")) return "in";
        if (next - x.right >= x.width) return "right";
        if (x.left - used >= x.width) return "left";
        return "none";
      };
      bars.forEach((x, i) => {
        const next = i + 1 < bars.length ? bars[i + 1].left : track.clientWidth;
        let place = fit(x, next);
        if (place === "none" && x.bar.dataset.short) {
          x.bar.dataset.full = x.bar.firstChild.textContent;
          x.bar.firstChild.textContent = x.bar.dataset.short;
          x.width = x.bar.firstChild.offsetWidth + 12;
          place = fit(x, next);
        }
        if (place === "in") x.bar.classList.add("label-in");
        else if (place === "left") x.bar.classList.add("label-left");
        else if (place === "none") x.bar.classList.add("label-none");
        used = place === "right" ? x.right + x.width : x.right;
      });
    }
  }
  window.addEventListener("resize", placeBarLabels);

  // An event's step: "notify[3]" for an item's, the branch beside a branch step's name.
  function eventStep(e) {
    if (e.step === null || e.step === undefined) return "—";
    const meta = e.meta || {};
    const item = Number.isInteger(meta.item) ? meta.item : null;
    const name = stepLabel({ name: e.step, item });
    return typeof meta.branch === "string" ?
      [name, " ", h("span", { class: "branch-tag", title: "branch", text: meta.branch })] : name;
  }

  function cells(e, withRun) {
    const row = [h("td", { class: "c-time", title: e.ts, text: fmtTime(e.ts) })];
    if (withRun) {
      row.push(h("td", { class: "c-run" }, h("button", {
        type: "button", class: "link", title: e.run_id, text: shortId(e.run_id),
        onclick: () => selectRun(e.run_id),
      })));
      row.push(h("td", { class: "c-wf", text: e.workflow }));
    }
    row.push(
      h("td", { class: "c-event" }, h("span", { class: `ev ${eventClass(e.type)}`, text: e.type })),
      h("td", { class: "c-step" }, eventStep(e)),
      h("td", { class: "c-attempt num", text: fmtAttempt(e.attempt, e.max_attempts) }),
      h("td", { class: "c-duration num", text: fmtMs(e.duration_ms) }),
      h("td", { class: "c-error", text: e.error || "" }),
    );
    return row;
  }

  function renderTimeline(events) {
    ui.timeline.replaceChildren(...events.map((e) =>
      h("tr", { data: { type: e.type } }, cells(e, false))));
    ui.timelineNote.textContent = `${events.length} events, oldest first`;
  }

  function renderPayload(run) {
    const block = (title, value) => h("div", {},
      h("h3", { text: title }),
      value === null || value === undefined ? h("p", { class: "muted", text: "not in this source" }) :
        h("pre", { text: JSON.stringify(value, null, 2) }));
    ui.payload.replaceChildren(block("Input", run.input), block("Data", run.data));
  }

  function renderRecent(data) {
    const events = data.events.slice().reverse();
    ui.recent.replaceChildren(...events.map((e) =>
      h("tr", { data: { type: e.type, runId: e.run_id } }, cells(e, true))));
    ui.recentEmpty.hidden = events.length > 0;
  }

  // -- wiring -------------------------------------------------------------------------
  ui.workflow.addEventListener("change", () => setFilter("workflow", ui.workflow.value));
  ui.status.addEventListener("change", () => setFilter("status", ui.status.value));
  ui.run.addEventListener("input", () => { state.query = ui.run.value.trim(); drawRunList(); });
  ui.run.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && ui.run.value.trim()) selectRun(ui.run.value.trim());
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && state.run && document.activeElement !== ui.run) selectRun("");
  });
  window.addEventListener("hashchange", () => {
    const before = state.run;
    readHash();
    if (state.run !== before) selectRun(state.run);
    else setFilter("workflow", state.workflow);
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });

  readHash();
  ui.runView.hidden = !state.run;
  ui.overview.hidden = Boolean(state.run);
  poll();
})();
