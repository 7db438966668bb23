// The what-if charts, drawn as plain SVG (no charting library): x is the budget per customer.

import { fmt } from "./api.js";

const SVG = "http://www.w3.org/2000/svg";

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

export function element(parent, name, attributes, content) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (content !== undefined) node.textContent = content;
  parent.append(node);
  return node;
}

// The frame every chart shares: the SVG sized to its box, margins, linear scales over [xLow, xHigh] and
// [yLow, yHigh], and the horizontal grid with its labels (x ticks are the caller's: budgets or times).
export function plotArea(svg, [xLow, xHigh], [yLow, yHigh], options) {
  const width = Math.max(svg.clientWidth, 280);
  const height = svg.clientHeight || options.height;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const margin = { left: 58, right: 14, top: 20, bottom: options.xAxis ? 34 : 14 };
  const x = (v) => margin.left + ((v - xLow) / (xHigh - xLow || 1)) * (width - margin.left - margin.right);
  const y = (v) => height - margin.bottom - ((v - yLow) / (yHigh - yLow || 1)) * (height - margin.top - margin.bottom);
  const grid = element(svg, "g", { class: "grid" });
  for (const t of niceTicks(yLow, yHigh, options.yTicks)) {
    element(grid, "line", { x1: margin.left, x2: width - margin.right, y1: y(t), y2: y(t) });
    element(grid, "text", { x: margin.left - 6, y: y(t) + 4, "text-anchor": "end" }, fmt(t, 3));
  }
  return { x, y, margin, width, height, grid };
}

// One chart of `curve` (GET /budget/curve): y = `value(point)`, the current budget marked, optionally a dot
// per point. Returns its scales, for the crosshair marks and for reading a budget under the pointer.
export function drawChart(svg, curve, value, label, options) {
  const points = curve.points;
  const xs = points.map((p) => p.budget_per_capita);
  const ys = points.map(value);
  const xLow = curve.min_budget_per_capita;
  const xHigh = curve.max_budget_per_capita;
  const pad = 0.06 * (Math.max(...ys) - Math.min(...ys) || 1);
  const { x, y, margin, width, height, grid } = plotArea(
    svg, [xLow, xHigh], [Math.min(...ys) - pad, Math.max(...ys) + pad], { height: 260, ...options },
  );
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

  const current = curve.current;
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

// Crosshair and ring of each [point, kind] ("hover", "selected") on a chart from `drawChart`.
export function drawMarks(chart, marked) {
  chart.marks.replaceChildren();
  for (const [p, kind] of marked) {
    if (!p) continue;
    const cx = chart.x(p.budget_per_capita);
    element(chart.marks, "line", {
      x1: cx, x2: cx, y1: chart.margin.top, y2: chart.height - chart.margin.bottom, class: `cross ${kind}`,
    });
    element(chart.marks, "circle", { cx, cy: chart.y(chart.value(p)), r: 5, class: `ring ${kind}` });
  }
}

// The budget per customer under a pointer event on a chart from `drawChart`.
export function budgetAt(chart, event) {
  const box = chart.svg.getBoundingClientRect();
  const px = ((event.clientX - box.left) / box.width) * chart.width;
  const share = (px - chart.margin.left) / (chart.width - chart.margin.left - chart.margin.right);
  return chart.xLow + share * (chart.xHigh - chart.xLow);
}
