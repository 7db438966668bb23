// The campaigns table: one row per λ* record of GET /budget/campaigns, the selected campaign highlighted.

import { fmt } from "./api.js";

// `records` from GET /budget/campaigns; `selected` gets a "no budget yet" row when it has no record.
export function renderCampaigns(tbody, records, selected) {
  tbody.replaceChildren();
  const known = records.some((c) => c.campaign === selected);
  const rows = known ? records : [...records, { campaign: selected, unset: true }];
  for (const record of rows) {
    const row = tbody.insertRow();
    row.dataset.campaign = record.campaign;
    row.tabIndex = 0;
    row.classList.toggle("active", record.campaign === selected);
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
