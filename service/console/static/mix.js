// Treatment mixes as a stacked bar with a legend (one colour per treatment, in manifest order).

import { pct } from "./api.js";

const PALETTE = ["#8a94a6", "#3b82c4", "#2f9e6e", "#d9892b", "#c2416b", "#7d5bbf", "#1aa3a3", "#a36a1a"];

const colour = (index) => PALETTE[index % PALETTE.length];

// `shares` maps treatment name → share (summing to 1), or null for "no data yet"; `names` fixes the order.
export function renderMix(container, shares, names) {
  container.replaceChildren();
  const bar = document.createElement("div");
  bar.className = "bar";
  const legend = document.createElement("ul");
  legend.className = "legend";
  names.forEach((name, index) => {
    const share = shares ? shares[name] || 0 : 0;
    if (share > 0) {
      const segment = document.createElement("span");
      segment.className = "segment";
      segment.style.width = `${100 * share}%`; // CSSOM, which the Content-Security-Policy allows
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
