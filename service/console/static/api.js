// HTTP and number formatting shared by the console's modules.

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

// The parsed body of a 2xx answer; otherwise ApiError carrying the API's own words (its `detail`).
export async function api(path, options = {}) {
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

// Numbers as the page shows them: 5 significant digits, no grouping; missing → "–".
export const fmt = (x, digits = 5) =>
  x === null || x === undefined || Number.isNaN(x)
    ? "–"
    : Number(x).toLocaleString("en-US", { maximumSignificantDigits: digits, useGrouping: false });
export const pct = (x) => `${(100 * x).toFixed(1)}%`;
