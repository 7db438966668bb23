// The flight panel: a campaign's ledger now (GET /campaigns/{c}) and its pacing history
// (GET /campaigns/{c}/history) as two SVG charts over the whole flight: committed spend against the pacing
// target, the cap and the budget; and the λ the pacer served.

import { fmt } from "./api.js";
import { element, plotArea } from "./chart.js";

const DAY = 86400;

// Time labels: clock time for a flight within a day or two, the date for longer ones.
function timeLabel(seconds, span) {
  const date = new Date(seconds * 1000);
  if (span <= 2 * DAY) return date.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
  return date.toLocaleDateString("en-GB", { day: "numeric", month: "short" });
}

// One chart of `series` ([{ name, className, points: [[t, y], ...] }]) against time from `start` to `end`,
// with horizontal `levels` ([{ value, label, className }]) and the current time marked.
export function drawTimeChart(svg, start, end, series, levels, label, options) {
  const values = [...series.flatMap((s) => s.points.map((p) => p[1])), ...levels.map((l) => l.value)];
  let yLow = options.zero ? 0 : Math.min(...values);
  let yHigh = Math.max(...values);
  if (!Number.isFinite(yLow) || !Number.isFinite(yHigh)) [yLow, yHigh] = [0, 1];
  const pad = 0.06 * (yHigh - yLow || Math.abs(yHigh) || 1);
  yLow = options.zero ? 0 : yLow - pad;
  yHigh += pad;
  const { x, y, margin, width, height, grid } = plotArea(svg, [start, end], [yLow, yHigh], { height: 220, ...options });
  if (options.xAxis) {
    const count = Math.max(2, Math.floor(width / 120));
    for (let i = 0; i <= count; i += 1) {
      const t = start + ((end - start) * i) / count;
      element(grid, "line", { x1: x(t), x2: x(t), y1: margin.top, y2: height - margin.bottom, class: "v" });
      const anchor = i === 0 ? "start" : i === count ? "end" : "middle";
      element(grid, "text", { x: x(t), y: height - margin.bottom + 16, "text-anchor": anchor },
        timeLabel(t, end - start));
    }
  }
  element(svg, "text", { x: margin.left, y: 12, class: "axis-label" }, label);
  for (const level of levels) {
    element(svg, "line", {
      x1: margin.left, x2: width - margin.right, y1: y(level.value), y2: y(level.value), class: level.className,
    });
    element(svg, "text", { x: width - margin.right, y: y(level.value) - 4, "text-anchor": "end",
      class: `${level.className}-label` }, level.label);
  }
  const now = Date.now() / 1000;
  if (now > start && now < end) {
    element(svg, "line", { x1: x(now), x2: x(now), y1: margin.top, y2: height - margin.bottom, class: "now" });
  }
  for (const s of series) {
    if (!s.points.length) continue;
    const d = s.points.map(([t, v], i) => `${i ? "L" : "M"}${x(t).toFixed(2)},${y(v).toFixed(2)}`).join("");
    element(svg, "path", { d, class: `line ${s.className}`, "data-series": s.name, "data-points": s.points.length });
  }
}

// The panel for one campaign: `state` from GET /campaigns/{c}, `history` from GET /campaigns/{c}/history.
export function renderFlight(elements, state, history) {
  const { spend, lambda, facts, note } = elements;
  const cells = {
    "flight-status": state.status,
    "flight-budget": fmt(state.budget),
    "flight-committed": fmt(state.committed),
    "flight-remaining": fmt(state.remaining),
    "flight-target": state.target === null ? "–" : fmt(state.target),
    "flight-lambda": fmt(state.lambda),
  };
  for (const [id, value] of Object.entries(cells)) facts.querySelector(`#${id}`).textContent = value;
  const points = history.points;
  const series = (key) => points.filter((p) => p[key] !== null).map((p) => [p.at, p[key]]);
  drawTimeChart(spend, history.start, history.end, [
    { name: "target", className: "target", points: series("target") },
    { name: "cap", className: "cap", points: series("cap") },
    { name: "committed", className: "committed", points: series("committed") },
  ], [{ value: history.budget, label: `budget ${fmt(history.budget)}`, className: "budget" }],
  "committed spend · pacing target · cap", { xAxis: true, yTicks: 4, zero: true });
  drawTimeChart(lambda, history.start, history.end, [
    { name: "lambda", className: "lambda", points: series("lambda") },
  ], [], "λ served", { xAxis: false, yTicks: 3, zero: false });
  const pacing = state.spec.pacing;
  note.textContent = points.length
    ? `${points.length} pacing step(s), one every ${fmt(history.interval_seconds, 3)} s; pacing "${pacing}"` +
      (state.pace_error === null ? "" : `, pace error ${fmt(100 * state.pace_error, 3)}% of the budget`) + "."
    : `No pacing step yet (pacing "${pacing}", status ${state.status}): the leader records one per step while ` +
      "the flight is active.";
}
