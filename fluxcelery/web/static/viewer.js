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
    if (t === "step:suspend" || t === "signal:received") return "ev-wait";
    if (t.includes("compensate") || t.includes("rollback")) return "ev-comp";
    if (t === "step:skipped" || t === "workflow:cancel") return "ev-muted";
    return "ev-info";
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

  function renderPath(steps, compensations) {
    ui.legend.replaceChildren(...STEP_LEGEND.map((s) =>
      h("span", { class: `legend-item st-${s}` }, h("span", { class: "swatch" }), label(s))));
    const nodes = steps.map((s, i) => {
      const retrying = s.status === "pending" && s.attempts > 0;
      const hasMs = s.duration_ms !== null && s.duration_ms !== undefined;
      const node = h("div", {
        class: `step-node status-${s.status}${retrying ? " retrying" : ""}`,
        data: { step: s.name, status: s.status }, title: s.error || s.name,
      },
      h("div", { class: "step-top" },
        h("span", { class: "step-index", text: (s.index ?? i) + 1 }),
        s.kind === "commit" ? h("span", { class: "kind", text: "commit" }) : null),
      h("div", { class: "step-name", text: s.name }),
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
      // An arrow leads into every step but the first, so a wrapped line starts with one.
      return h("div", { class: "path-item" },
        i ? h("span", { class: "arrow", "aria-hidden": "true" }) : null, node);
    });
    ui.path.replaceChildren(...nodes);
    if (!steps.length) ui.path.append(h("p", { class: "empty", text: "No steps yet." }));

    ui.rollback.hidden = !compensations.length;
    if (compensations.length) {
      const chips = [h("span", { class: "rollback-label", text: "Rollback" })];
      compensations.forEach((name, i) => {
        if (i) chips.push(h("span", { class: "rollback-arrow", "aria-hidden": "true", text: "←" }));
        chips.push(h("span", { class: "rollback-chip", text: name }));
      });
      chips.push(h("span", { class: "muted", text: "compensated in reverse order" }));
      ui.rollback.replaceChildren(...chips);
    }
  }

  // A failed step's traceback, collapsed; blocks the reader opened stay open on redraws.
  function renderTracebacks(steps) {
    const open = new Set([...ui.tracebacks.querySelectorAll("details[open]")]
      .map((node) => node.dataset.step));
    const failed = steps.filter((s) => s.traceback);
    ui.tracebacksPanel.hidden = !failed.length;
    ui.tracebacks.replaceChildren(...failed.map((s) => h("details", {
      class: "traceback", data: { step: s.name }, open: open.has(s.name),
    },
    h("summary", {},
      h("span", { class: "traceback-step", text: s.name }),
      h("span", { class: "traceback-error", text: s.error || "" }),
      h("span", { class: "muted", text: `${String(s.traceback).split("\n").length} lines` })),
    h("pre", { class: "traceback-text" }, h("code", { text: s.traceback })))));
  }

  const GANTT_LEGEND = [["out-completed", "succeeded"], ["out-retry", "failed, retried"],
    ["out-failed", "failed"], ["out-compensated phase-compensate", "compensation"]];

  function renderGantt(steps) {
    const bars = steps.flatMap((s) => s.attempt_log);
    let total = 0;
    for (const b of bars) total = Math.max(total, b.start_ms + (b.duration_ms || 0));
    total = Math.max(total, 1);
    const pct = (v) => `${Math.min(100, (v / total) * 100).toFixed(3)}%`;
    const axis = h("div", { class: "gantt-row gantt-axis" }, h("span", {}),
      h("div", { class: "gantt-track" }, [0, 0.25, 0.5, 0.75, 1].map((f) =>
        h("span", { class: "tick", style: { left: `${f * 100}%` }, text: fmtMs(Math.round(total * f)) }))));
    const rows = steps.filter((s) => s.attempt_log.length).map((s) => h("div", { class: "gantt-row" },
      h("span", { class: "gantt-label", title: s.name, text: s.name }),
      h("div", { class: "gantt-track" }, s.attempt_log.map((b) => {
        const what = b.phase === "compensate" ? "compensation" : "attempt";
        const tip = [`${s.name}: ${what} ${fmtAttempt(b.attempt, b.max_attempts)}`,
          OUTCOME_LABEL[b.outcome] || b.outcome, fmtMs(b.duration_ms)];
        if (b.error) tip.push(b.error);
        return h("span", {
          class: `bar out-${b.outcome} phase-${b.phase}`,
          title: tip.join(" · "),
          style: { left: pct(b.start_ms), width: pct(b.duration_ms || 0) },
        }, h("span", { class: "bar-label",
          text: b.outcome === "skipped" ? "skipped" : b.phase === "compensate" ?
            `undo ${fmtMs(b.duration_ms)}` : `#${b.attempt ?? "?"} ${fmtMs(b.duration_ms)}` }));
      }))));
    ui.gantt.replaceChildren(axis, ...rows);
    placeBarLabels();
    if (!rows.length) ui.gantt.append(h("p", { class: "empty", text: "No attempts yet." }));
    ui.attemptsNote.replaceChildren(...GANTT_LEGEND.map(([cls, text]) =>
      h("span", { class: `legend-item ${cls}` }, h("span", { class: "swatch solid" }), text)));
  }

  // Each bar's label goes inside it, else right of it, else left of it, whichever fits
  // without touching a neighbour; otherwise it is hidden (the tooltip still has it).
  function placeBarLabels() {
    for (const track of ui.gantt.querySelectorAll(".gantt-row:not(.gantt-axis) .gantt-track")) {
      const bars = [...track.querySelectorAll(".bar")].map((bar) => {
        bar.classList.remove("label-in", "label-left", "label-none");
        return { bar, left: bar.offsetLeft, right: bar.offsetLeft + bar.offsetWidth,
          width: bar.firstChild.offsetWidth + 12 };
      }).sort((a, b) => a.left - b.left);
      let used = 0;
      bars.forEach((x, i) => {
        const next = i + 1 < bars.length ? bars[i + 1].left : track.clientWidth;
        if (x.right - x.left >= x.width && !x.bar.classList.contains("out-skipped")) {
          x.bar.classList.add("label-in");
          used = x.right;
        } else if (next - x.right >= x.width) {
          used = x.right + x.width;
        } else if (x.left - used >= x.width) {
          x.bar.classList.add("label-left");
          used = x.right;
        } else {
          x.bar.classList.add("label-none");
          used = x.right;
        }
      });
    }
  }
  window.addEventListener("resize", placeBarLabels);

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
      h("td", { class: "c-step", text: e.step ?? "—" }),
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
