// The operator console: plain JS and SVG over the service's JSON endpoints (no build step, no third-party code).
//
// Reads GET /model, /readyz, /budget/campaigns, /budget/curve, /budget/whatif and /allocations/counts; writes
// only through POST /budget with the admin token typed into the page. The token lives in this script's memory
// (never localStorage, sessionStorage or a cookie), so it is gone when the tab closes.
"use strict";

(() => {
  const REFRESH_MS = 5000; // campaigns, readiness and allocation counts
  const RECENT_WINDOW_MS = 60000; // the "recent allocations" mix covers this much time
  const SVG = "http://www.w3.org/2000/svg";
  const PALETTE = ["#8a94a6", "#3b82c4", "#2f9e6e", "#d9892b", "#c2416b", "#7d5bbf", "#1aa3a3", "#a36a1a"];

  const state = {
    model: null, // GET /model
    campaign: "default",
    curve: null, // GET /budget/curve
    selected: null, // the selected point: one of curve.points, or the campaign's current one
    hover: null, // index into curve.points under the pointer
    campaigns: [],
    snapshots: new Map(), // replica → [{t, counts}] of /allocations/counts, for the recent mix
    pending: null, // the what-if awaiting confirmation
  };
  let adminToken = ""; // only in memory

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------------------------------------------------
  // HTTP

  class ApiError extends Error {
    constructor(status, detail) {
      super(`${status}: ${detail}`);
      this.status = status;
      this.detail = detail;
    }
  }

  async function api(path, options = {}) {
    let response;
    try {
      response = await fetch(path, { cache: "no-store", ...options });
    } catch (error) {
      throw new ApiError(0, `the service did not answer (${error.message})`);
    }
    let body = null;
    const text = await response.text();
    if (text) {
      try {
        body = JSON.parse(text);
      } catch {
        body = null;
      }
    }
    if (!response.ok) {
      const detail = body && typeof body.detail === "string" ? body.detail : text || response.statusText;
      throw new ApiError(response.status, detail);
    }
    return body;
  }

  // ---------------------------------------------------------------------------------------------------------
  // Formatting

  const fmt = (x, digits = 5) =>
    x === null || x === undefined || Number.isNaN(x)
      ? "–"
      : Number(x).toLocaleString("en-US", { maximumSignificantDigits: digits, useGrouping: false });
  const pct = (x) => `${(100 * x).toFixed(1)}%`;

  function text(id, value) {
    $(id).textContent = value;
  }

  function status(message, isError = false) {
    const element = $("status");
    element.textContent = message;
    element.classList.toggle("error", isError);
  }

  function message(content, kind) {
    const element = $("message");
    element.textContent = content;
    element.className = `message ${kind || ""}`;
  }

  function colour(index) {
    return PALETTE[index % PALETTE.length];
  }

  // A stacked bar of treatment shares with a legend: `shares` maps treatment name → share (sums to 1).
  function renderMix(container, shares) {
    container.replaceChildren();
    const bar = document.createElement("div");
    bar.className = "bar";
    const legend = document.createElement("ul");
    legend.className = "legend";
    const names = state.model ? state.model.treatments.map((t) => t.name) : Object.keys(shares || {});
    names.forEach((name, index) => {
      const share = shares ? shares[name] || 0 : 0;
      if (share > 0) {
        const segment = document.createElement("span");
        segment.className = "segment";
        segment.style.width = `${100 * share}%`;
        segment.style.background = colour(index);
        segment.title = `${name}: ${pct(share)}`;
        bar.append(segment);
      }
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colour(index);
      item.append(swatch, `${name} ${shares ? pct(share) : "–"}`);
      legend.append(item);
    });
    container.append(bar, legend);
  }

  // ---------------------------------------------------------------------------------------------------------
  // Model, readiness and campaigns

  async function loadModel() {
    state.model = await api("model");
    text("model-version", state.model.model_version);
    text("model-method", state.model.method);
    text("model-treatments", state.model.treatments.map((t) => t.name).join(", "));
  }

  async function refreshReadiness() {
    const response = await fetch("readyz", { cache: "no-store" });
    const body = await response.json();
    const where = body.store === "in-process" ? "in-process" : `${body.store}, ${body.store_up ? "up" : "DOWN"}`;
    text("store-state", body.ready ? where : `${where} · not ready`);
    $("store-state").classList.toggle("error", !body.ready || !body.store_up);
  }

  async function refreshCampaigns() {
    state.campaigns = await api("budget/campaigns");
    const body = $("campaigns").tBodies[0];
    body.replaceChildren();
    const known = state.campaigns.some((c) => c.campaign === state.campaign);
    const rows = known ? state.campaigns : [...state.campaigns, { campaign: state.campaign, unset: true }];
    for (const record of rows) {
      const row = body.insertRow();
      row.dataset.campaign = record.campaign;
      row.tabIndex = 0;
      row.classList.toggle("active", record.campaign === state.campaign);
      const cells = record.unset
        ? [record.campaign, "–", "no budget yet", "–", "–", "–"]
        : [
            record.campaign,
            fmt(record.lambda),
            fmt(record.budget_per_capita),
            fmt(record.expected_cost_per_capita),
            String(record.version),
            record.source,
          ];
      cells.forEach((value, index) => {
        const cell = row.insertCell();
        cell.textContent = value;
        if (index >= 1 && index <= 4) cell.className = "num";
      });
    }
  }

  function currentRecord() {
    return state.campaigns.find((c) => c.campaign === state.campaign) || null;
  }

  async function selectCampaign(name) {
    state.campaign = name;
    text("curve-campaign", name);
    text("form-campaign", name);
    hideConfirm();
    await refreshCampaigns();
    await loadCurve();
  }

  // ---------------------------------------------------------------------------------------------------------
  // The what-if curve

  function pointsWanted() {
    const value = Number($("points").value);
    return Number.isInteger(value) ? value : 60;
  }

  async function loadCurve() {
    const query = new URLSearchParams({ campaign: state.campaign, points: String(pointsWanted()) });
    // The form is refilled from the new curve: no typing into it until then.
    const form = [$("budget-input"), $("review")];
    form.forEach((input) => { input.disabled = true; });
    try {
      state.curve = await api(`budget/curve?${query}`);
    } catch (error) {
      status(`budget curve: ${error.message}`, true);
      return;
    } finally {
      form.forEach((input) => { input.disabled = false; });
    }
    text("population-size", state.curve.population_size.toLocaleString("en-US"));
    state.selected = state.curve.current || state.curve.points[nearest(state.curve.max_budget_per_capita / 2)];
    drawCharts();
    showSelection();
  }

  function nearest(budget) {
    const points = state.curve.points;
    let best = 0;
    for (let i = 1; i < points.length; i += 1) {
      if (Math.abs(points[i].budget_per_capita - budget) < Math.abs(points[best].budget_per_capita - budget)) best = i;
    }
    return best;
  }

  function niceTicks(low, high, count) {
    const span = high - low || 1;
    const step0 = span / count;
    const magnitude = 10 ** Math.floor(Math.log10(step0));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= step0) || step0;
    const ticks = [];
    for (let t = Math.ceil(low / step) * step; t <= high + 1e-12 * span; t += step) {
      ticks.push(Math.abs(t) < 1e-9 * span ? 0 : t); // no "-0" from rounding
    }
    return ticks;
  }

  function element(parent, name, attributes, content) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
    if (content !== undefined) node.textContent = content;
    parent.append(node);
    return node;
  }

  // One chart: x = budget per capita, y = `value(point)`; returns its scales for the crosshair.
  function drawChart(svg, value, label, options) {
    const width = Math.max(svg.clientWidth, 280);
    const height = svg.clientHeight || 260;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.replaceChildren();
    const margin = { left: 58, right: 14, top: 20, bottom: options.xAxis ? 34 : 14 };
    const points = state.curve.points;
    const xs = points.map((p) => p.budget_per_capita);
    const ys = points.map(value);
    const xLow = state.curve.min_budget_per_capita;
    const xHigh = state.curve.max_budget_per_capita;
    let yLow = Math.min(...ys);
    let yHigh = Math.max(...ys);
    const pad = 0.06 * (yHigh - yLow || 1);
    yLow -= pad;
    yHigh += pad;
    const x = (v) => margin.left + ((v - xLow) / (xHigh - xLow || 1)) * (width - margin.left - margin.right);
    const y = (v) => height - margin.bottom - ((v - yLow) / (yHigh - yLow || 1)) * (height - margin.top - margin.bottom);

    const grid = element(svg, "g", { class: "grid" });
    for (const t of niceTicks(yLow, yHigh, options.yTicks)) {
      element(grid, "line", { x1: margin.left, x2: width - margin.right, y1: y(t), y2: y(t) });
      element(grid, "text", { x: margin.left - 6, y: y(t) + 4, "text-anchor": "end" }, fmt(t, 3));
    }
    if (options.xAxis) {
      for (const t of niceTicks(xLow, xHigh, Math.max(3, Math.floor(width / 110)))) {
        element(grid, "line", { x1: x(t), x2: x(t), y1: margin.top, y2: height - margin.bottom, class: "v" });
        element(grid, "text", { x: x(t), y: height - margin.bottom + 16, "text-anchor": "middle" }, fmt(t, 3));
      }
      element(svg, "text", { x: width - margin.right, y: height - 3, "text-anchor": "end", class: "axis-label" },
        "budget per customer");
    }
    element(svg, "text", { x: margin.left, y: 12, class: "axis-label" }, label);

    const path = points.map((p, i) => `${i ? "L" : "M"}${x(xs[i]).toFixed(2)},${y(ys[i]).toFixed(2)}`).join("");
    element(svg, "path", { d: path, class: `line ${options.className}` });

    const current = state.curve.current;
    if (current && current.budget_per_capita >= xLow && current.budget_per_capita <= xHigh) {
      const cx = x(current.budget_per_capita);
      element(svg, "line", { x1: cx, x2: cx, y1: margin.top, y2: height - margin.bottom, class: "current" });
      if (options.xAxis) {
        element(svg, "text", { x: cx + 4, y: height - margin.bottom - 6, class: "current-label" },
          `current ${fmt(current.budget_per_capita, 3)}`);
      }
    }
    if (options.dots) {
      const dots = element(svg, "g", { class: "points" });
      points.forEach((p, i) => {
        element(dots, "circle", { cx: x(xs[i]), cy: y(ys[i]), r: 3, class: "point", "data-index": i });
      });
    }
    const marks = element(svg, "g", { class: "marks" });
    return { svg, x, y, xLow, xHigh, margin, width, height, value, marks };
  }

  let charts = [];

  function drawCharts() {
    if (!state.curve) return;
    charts = [
      drawChart($("curve"), (p) => p.expected_revenue_per_capita, "expected revenue per customer", {
        xAxis: true, dots: true, className: "revenue", yTicks: 4,
      }),
      drawChart($("lambda-chart"), (p) => p.lambda, "λ* (marginal revenue per unit of budget)", {
        xAxis: false, dots: false, className: "lambda", yTicks: 3,
      }),
    ];
    drawMarks();
  }

  function drawMarks() {
    for (const chart of charts) {
      chart.marks.replaceChildren();
      const hovered = state.hover === null ? null : state.curve.points[state.hover];
      for (const [p, kind] of [[hovered, "hover"], [state.selected, "selected"]]) {
        if (!p) continue;
        const cx = chart.x(p.budget_per_capita);
        element(chart.marks, "line", {
          x1: cx, x2: cx, y1: chart.margin.top, y2: chart.height - chart.margin.bottom, class: `cross ${kind}`,
        });
        element(chart.marks, "circle", { cx, cy: chart.y(chart.value(p)), r: 5, class: `ring ${kind}` });
      }
    }
    const p = state.hover === null ? state.selected : state.curve.points[state.hover];
    if (!p) {
      text("readout", "");
      return;
    }
    const prefix = p === state.curve.current ? "current: " : "";
    text("readout", `${prefix}budget ${fmt(p.budget_per_capita)} → λ* ${fmt(p.lambda)}, expected spend ` +
      `${fmt(p.expected_spend_per_capita)}, revenue ${fmt(p.expected_revenue_per_capita)} per customer`);
  }

  function indexAt(event) {
    const chart = charts.find((c) => c.svg === event.currentTarget);
    if (!chart) return null;
    const box = chart.svg.getBoundingClientRect();
    const px = ((event.clientX - box.left) / box.width) * chart.width;
    const budget = chart.xLow + ((px - chart.margin.left) / (chart.width - chart.margin.left - chart.margin.right)) *
      (chart.xHigh - chart.xLow);
    return nearest(budget);
  }

  function showSelection() {
    const p = state.selected;
    text("sel-budget", p ? fmt(p.budget_per_capita) : "–");
    text("sel-lambda", p ? fmt(p.lambda) : "–");
    text("sel-spend", p ? fmt(p.expected_spend_per_capita) : "–");
    text("sel-revenue", p ? fmt(p.expected_revenue_per_capita) : "–");
    renderMix($("sel-mix"), p ? p.mix : null);
    if (p) $("budget-input").value = String(Number(p.budget_per_capita.toPrecision(6)));
  }

  function select(index) {
    state.selected = state.curve.points[Math.max(0, Math.min(state.curve.points.length - 1, index))];
    hideConfirm();
    drawMarks();
    showSelection();
  }

  // ---------------------------------------------------------------------------------------------------------
  // Setting a budget: what-if first, then a confirmation, then POST /budget

  function hideConfirm() {
    state.pending = null;
    $("confirm").hidden = true;
  }

  async function review(event) {
    event.preventDefault();
    message("");
    adminToken = $("token").value;
    const budget = Number($("budget-input").value);
    const query = new URLSearchParams({ campaign: state.campaign, budget_per_capita: $("budget-input").value });
    try {
      state.pending = await api(`budget/whatif?${query}`);
    } catch (error) {
      hideConfirm();
      message(error.message, "error");
      return;
    }
    state.pending.budget = budget;
    state.pending.key = idempotencyKey(); // one key per confirmed change: a retry after a 504 reuses it
    $("confirm-yes").textContent = "Set budget";
    const { current, proposed } = state.pending;
    text("confirm-campaign", state.campaign);
    text("old-budget", current ? fmt(current.budget_per_capita) : "none");
    text("new-budget", fmt(proposed.budget_per_capita));
    text("old-lambda", current ? fmt(current.lambda) : "–");
    text("new-lambda", fmt(proposed.lambda));
    text("old-spend", current ? fmt(current.expected_spend_per_capita) : "–");
    text("new-spend", fmt(proposed.expected_spend_per_capita));
    text("old-revenue", current ? fmt(current.expected_revenue_per_capita) : "–");
    text("new-revenue", fmt(proposed.expected_revenue_per_capita));
    $("confirm").hidden = false;
    $("confirm-yes").focus();
  }

  function idempotencyKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes); // works on plain http too, unlike crypto.randomUUID
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function confirmBudget() {
    const pending = state.pending;
    if (!pending) return;
    $("confirm-yes").disabled = true;
    try {
      const stored = await api("budget", {
        method: "POST",
        headers: {
          "content-type": "application/json",
          authorization: `Bearer ${adminToken}`,
          "idempotency-key": pending.key,
        },
        body: JSON.stringify({ campaign: state.campaign, budget_per_capita: pending.budget }),
      });
      hideConfirm();
      message(`Budget of ${stored.campaign} set: λ* ${fmt(stored.lambda)} (version ${stored.version}), ` +
        `expected spend ${fmt(stored.expected_cost_per_capita)} per customer.`, "ok");
      await refreshCampaigns();
      await loadCurve();
    } catch (error) {
      if (error.status === 504 || error.status === 0) {
        // Outcome unknown: retrying with the same Idempotency-Key returns the first write or settles it.
        $("confirm-yes").textContent = "Retry the same request";
        message(error.message, "error");
      } else {
        hideConfirm();
        message(error.message, "error");
      }
    } finally {
      $("confirm-yes").disabled = false;
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // Allocation counts: cumulative per replica; differences over RECENT_WINDOW_MS give the recent mix

  function sharesOf(counts) {
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    if (!total) return [null, 0];
    return [Object.fromEntries(Object.entries(counts).map(([k, v]) => [k, v / total])), total];
  }

  async function refreshAllocations() {
    const body = await api("allocations/counts");
    const now = Date.now();
    // Counters are per replica process: behind a load balancer successive readings may come from different
    // replicas, so only readings of the same one are subtracted (and a restart, counts going down, starts over).
    let snapshots = state.snapshots.get(body.replica) || [];
    const last = snapshots[snapshots.length - 1];
    if (last && Object.entries(body.counts).some(([k, v]) => v < (last.counts[k] || 0))) snapshots = [];
    snapshots.push({ t: now, counts: body.counts });
    while (snapshots.length > 2 && now - snapshots[1].t >= RECENT_WINDOW_MS) snapshots.shift();
    state.snapshots.set(body.replica, snapshots);
    const first = snapshots[0];
    const delta = Object.fromEntries(Object.entries(body.counts).map(([k, v]) => [k, v - (first.counts[k] || 0)]));
    const [recent, recentTotal] = sharesOf(delta);
    const seconds = Math.round((now - first.t) / 1000);
    text("recent-summary", seconds < 1
      ? `Replica ${body.replica}. Recent mix: waiting for a second reading…`
      : `Replica ${body.replica}. Last ${seconds} s: ${recentTotal.toLocaleString("en-US")} individuals allocated`);
    renderMix($("recent-mix"), recent);
    const [total, allTotal] = sharesOf(body.counts);
    text("total-summary", `Since this replica started: ${allTotal.toLocaleString("en-US")} individuals`);
    renderMix($("total-mix"), total);
  }

  // ---------------------------------------------------------------------------------------------------------
  // Wiring

  async function refresh() {
    const results = await Promise.allSettled([refreshReadiness(), refreshCampaigns(), refreshAllocations()]);
    const failed = results.find((r) => r.status === "rejected");
    if (failed) status(`refresh failed: ${failed.reason.message}`, true);
    else status(`updated ${new Date().toLocaleTimeString()}`);
    const record = currentRecord();
    const current = state.curve && state.curve.current;
    if (record && (!current || current.version !== record.version)) {
      // Changed elsewhere (another operator, another replica): a confirmation on screen shows a stale "now".
      if (state.pending) {
        hideConfirm();
        message(`The budget of ${record.campaign} was changed elsewhere (now version ${record.version}): ` +
          "review the new budget again.", "error");
      }
      await loadCurve();
    }
  }

  function wire() {
    for (const id of ["curve", "lambda-chart"]) {
      const svg = $(id);
      svg.addEventListener("pointermove", (event) => {
        if (!state.curve) return;
        state.hover = indexAt(event);
        drawMarks();
      });
      svg.addEventListener("pointerleave", () => {
        state.hover = null;
        if (state.curve) drawMarks();
      });
      svg.addEventListener("click", (event) => {
        if (state.curve) select(indexAt(event));
      });
    }
    $("curve").addEventListener("keydown", (event) => {
      if (!state.curve) return;
      const step = { ArrowLeft: -1, ArrowRight: 1 }[event.key];
      if (step) {
        event.preventDefault();
        const at = state.selected ? nearest(state.selected.budget_per_capita) : 0;
        const onCurve = state.selected === state.curve.points[at];
        select(onCurve ? at + step : at);
      }
    });
    $("points").addEventListener("change", () => loadCurve());
    $("campaigns").addEventListener("click", (event) => {
      const row = event.target.closest("tr[data-campaign]");
      if (row) selectCampaign(row.dataset.campaign);
    });
    $("campaigns").addEventListener("keydown", (event) => {
      const row = event.target.closest("tr[data-campaign]");
      if (row && event.key === "Enter") selectCampaign(row.dataset.campaign);
    });
    $("open-campaign").addEventListener("submit", (event) => {
      event.preventDefault();
      const name = $("campaign-name").value.trim();
      if (name) selectCampaign(name);
    });
    $("set-budget").addEventListener("submit", review);
    $("confirm-yes").addEventListener("click", confirmBudget);
    $("confirm-no").addEventListener("click", () => {
      hideConfirm();
      message("Cancelled: nothing was changed.");
    });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(drawCharts, 100);
    });
  }

  async function start() {
    wire();
    try {
      await loadModel();
    } catch (error) {
      status(`model: ${error.message}`, true);
      return;
    }
    await refresh(); // loads the curve too once the campaign's record is known
    if (!state.curve) await loadCurve();
    document.body.dataset.ready = "true"; // for tests and screenshots: the first full render is done
    setInterval(refresh, REFRESH_MS);
  }

  start();
})();
