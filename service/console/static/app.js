// The operator console: plain JS modules and SVG over the service's JSON endpoints (no build step, no third-party
// code). This module holds the page's state and wiring; `api.js`, `chart.js` and `mix.js` the parts it draws with.
//
// Reads GET /model, /readyz, /budget/campaigns, /budget/curve, /budget/whatif, /allocations/counts and, for a
// campaign with a ledger, /campaigns, /campaigns/{c} and /campaigns/{c}/history; writes
// only through POST /budget with the admin token typed into the page. The token lives in this script's memory
// (never localStorage, sessionStorage or a cookie), so it is gone when the tab closes.
import { AllocationHistory } from "./allocations.js";
import { api, fmt } from "./api.js";
import { renderCampaigns } from "./campaigns.js";
import { budgetAt, drawChart, drawMarks } from "./chart.js";
import { renderFlight } from "./flight.js";
import { renderMix } from "./mix.js";

const REFRESH_MS = 5000; // campaigns, readiness and allocation counts
const RECENT_WINDOW_MS = 60000; // the "recent allocations" mix covers this much time

const state = {
  model: null, // GET /model
  campaign: "default",
  curve: null, // GET /budget/curve
  selected: null, // the selected point: one of curve.points, or the campaign's current one
  hover: null, // index into curve.points under the pointer
  campaigns: [],
  flight: null, // [GET /campaigns/{c}, GET /campaigns/{c}/history] of the selected campaign, if it has a ledger
  pending: null, // the what-if awaiting confirmation
};
const allocations = new AllocationHistory(RECENT_WINDOW_MS);
let adminToken = ""; // only in memory

const $ = (id) => document.getElementById(id);
const treatmentNames = () => (state.model ? state.model.treatments.map((t) => t.name) : []);

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
  renderCampaigns($("campaigns").tBodies[0], state.campaigns, state.campaign);
}

function currentRecord() {
  return state.campaigns.find((c) => c.campaign === state.campaign) || null;
}

async function selectCampaign(name) {
  state.campaign = name;
  state.flight = null;
  text("curve-campaign", name);
  text("form-campaign", name);
  hideConfirm();
  await refreshCampaigns();
  await loadCurve();
  await refreshFlight();
}

// ---------------------------------------------------------------------------------------------------------
// The flight of a campaign with a ledger (PUT /campaigns/{c}): spend against target, λ over time

async function refreshFlight() {
  const campaign = state.campaign;
  const managed = await api("campaigns"); // listed first: a plain budget's 404 would be a console error
  if (campaign !== state.campaign) return; // another campaign was selected meanwhile
  if (!managed.some((c) => c.campaign === campaign)) {
    state.flight = null;
    $("flight-panel").hidden = true;
    return;
  }
  const path = `campaigns/${encodeURIComponent(campaign)}`;
  const [ledger, history] = await Promise.all([api(path), api(`${path}/history`)]);
  if (campaign !== state.campaign) return;
  state.flight = [ledger, history];
  text("flight-campaign", campaign);
  $("flight-panel").hidden = false;
  drawFlight();
}

function drawFlight() {
  if (!state.flight) return;
  const elements = {
    spend: $("spend-chart"), lambda: $("pace-lambda-chart"), facts: $("flight-facts"), note: $("flight-note"),
  };
  renderFlight(elements, ...state.flight);
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

let charts = [];

function drawCharts() {
  if (!state.curve) return;
  charts = [
    drawChart($("curve"), state.curve, (p) => p.expected_revenue_per_capita, "expected revenue per customer", {
      xAxis: true, dots: true, className: "revenue", yTicks: 4,
    }),
    drawChart($("lambda-chart"), state.curve, (p) => p.lambda, "λ* (marginal revenue per unit of budget)", {
      xAxis: false, dots: false, className: "lambda", yTicks: 3,
    }),
  ];
  showMarks();
}

function showMarks() {
  const hovered = state.hover === null ? null : state.curve.points[state.hover];
  for (const chart of charts) drawMarks(chart, [[hovered, "hover"], [state.selected, "selected"]]);
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
  return chart ? nearest(budgetAt(chart, event)) : null;
}

function showSelection() {
  const p = state.selected;
  text("sel-budget", p ? fmt(p.budget_per_capita) : "–");
  text("sel-lambda", p ? fmt(p.lambda) : "–");
  text("sel-spend", p ? fmt(p.expected_spend_per_capita) : "–");
  text("sel-revenue", p ? fmt(p.expected_revenue_per_capita) : "–");
  renderMix($("sel-mix"), p ? p.mix : null, treatmentNames());
  if (p) $("budget-input").value = String(Number(p.budget_per_capita.toPrecision(6)));
}

function select(index) {
  state.selected = state.curve.points[Math.max(0, Math.min(state.curve.points.length - 1, index))];
  hideConfirm();
  showMarks();
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
// Allocation counts

async function refreshAllocations() {
  const body = await api("allocations/counts");
  const mix = allocations.add(body, Date.now());
  text("recent-summary", mix.recentSeconds < 1
    ? `Replica ${body.replica}. Recent mix: waiting for a second reading…`
    : `Replica ${body.replica}. Last ${mix.recentSeconds} s: ${mix.recentTotal.toLocaleString("en-US")} individuals ` +
      "allocated");
  renderMix($("recent-mix"), mix.recent, treatmentNames());
  text("total-summary", `Since this replica started: ${mix.total.toLocaleString("en-US")} individuals`);
  renderMix($("total-mix"), mix.all, treatmentNames());
}

// ---------------------------------------------------------------------------------------------------------
// Wiring

async function refresh() {
  const results = await Promise.allSettled([
    refreshReadiness(), refreshCampaigns(), refreshAllocations(), refreshFlight(),
  ]);
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
      showMarks();
    });
    svg.addEventListener("pointerleave", () => {
      state.hover = null;
      if (state.curve) showMarks();
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
    resizeTimer = setTimeout(() => {
      drawCharts();
      drawFlight();
    }, 100);
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
