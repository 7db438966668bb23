"""docs/reliability.md from one `python -m bench.faults` run."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# What the findings seen in this suite's runs were, read from schemathesis's reproductions.
KNOWN_FINDINGS = {
    "ST202": "ST202 (schema-valid request rejected): 422s for limits a JSON Schema cannot state: a total budget "
    "whose per-capita value is below the cheapest policy or above the λ = 0 policy of the loaded model, "
    "columnar arrays (`allowed_treatments`, a column) whose length differs from `ids`', and finite features so "
    "extreme that the model's float32 predictions overflow (answered 422 naming the individual).",
    "ST205": "ST205 (Allow header mismatch): `OPTIONS /budget` gets Starlette's 405 whose `Allow` lists only the "
    "first route of the path (POST), not GET as well.",
}


def write_report(path: Path, results: dict[str, Any], memory_limit_mb: int, argv: list[str]) -> None:
    command = " ".join(["python -m bench.faults", *argv])
    load1, load5, _ = os.getloadavg()
    lines = [
        "# Reliability: the fault-and-abuse suite",
        "",
        f"Made by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {results['seconds']} s "
        f"(2-core machine shared with other work; load average {load1:.1f} / {load5:.1f} at the end).",
        "Two `python -m service` replicas on the shipped model and one redis-server (AOF on), all on loopback.",
        "",
        "## Fuzzing every operation (schemathesis, seed 20261201)",
        "",
        "| admin token | test cases | 5xx (other than 503/504) | 503/504 | statuses |",
        "|---|---|---|---|---|",
    ]
    for run in results["fuzz"]:
        statuses = ", ".join(f"{code}: {n}" for code, n in run["statuses"].items())
        lines.append(
            f"| {'yes' if run['token'] else 'no'} | {run['cases']} | {run['server_errors']} | {run['unavailable']} "
            f"| {statuses} |"
        )
    flagged = sorted({item for run in results["fuzz"] for item in run["flagged"]})
    lines += ["", "Other findings schemathesis reported (not 5xx): " + ("; ".join(flagged) or "none") + ".", ""]
    known = [why for code, why in KNOWN_FINDINGS.items() if any(code in item for item in flagged)]
    unexplained = sorted({item.split()[1] for item in flagged} - set(KNOWN_FINDINGS))
    if unexplained:
        known.append(
            f"{', '.join(unexplained)}: not yet looked into; schemathesis prints each reproduction "
            "(rerun it against a replica with the same seed)."
        )
    if known:
        lines += ["What they are:", "", *(f"- {why}" for why in known), ""]
    lines += [
        "## Faults under paced load",
        "",
        "`/allocate` (20 individuals) from 4 threads at 200 requests/s in all, round-robin over both replicas; a",
        "connection error is retried on the other replica (what a Kubernetes Service and a retrying client do).",
        "",
        "| scenario | requests | failed | retried after a connection error |",
        "|---|---|---|---|",
    ]
    for row in results["faults"]:
        lines.append(f"| {row['scenario']} | {row['requests']} | {row['failed']} | {row['retried']} |")
    load = results["load"]
    lines += [
        f"| **whole run** | **{load['requests']}** | **{load['failed']}** | |",
        "",
        f"Statuses over the whole run: {load['statuses']}."
        + (f" Failures: {load['examples']}." if load["examples"] else ""),
        "",
        "## Budgets: every answer means what it says",
        "",
    ]
    budgets = results["budgets"]
    refused = ", ".join(f"{n} × {code}" for code, n in budgets["refused"].items()) or "none"
    lines += [
        f"- Budgets set during the run: {budgets['confirmed']} confirmed (200), refused: {refused} "
        "(503: not applied, never will be; 504: outcome unknown, cannot apply after its deadline).",
        f"- Budgets applied that were not confirmed to their caller: **{len(budgets['phantoms'])}**"
        + (f" ({'; '.join(budgets['phantoms'])})" if budgets["phantoms"] else "")
        + ".",
    ]
    race = results["concurrent_budgets"]
    lines += [
        f"- {race['calls']} concurrent `POST /budget` from 8 clients over both replicas: statuses {race['statuses']}; "
        f"versions of the confirmed writes all distinct: {'yes' if race['distinct_versions'] else 'NO'}; answers "
        f"describing another request's write: **{race['answers_about_another_write']}**; writes applied without "
        f"a 200: **{race['unconfirmed_applied']}**.",
        "",
        "## Abusive bodies and memory",
        "",
    ]
    abuse = results["abuse"]
    for outcome, n in abuse["outcomes"].items():
        lines.append(f"- {n} × {outcome}")
    lines += [
        "- 48 large requests, 16 at a time (10,000-individual batches, and 6 MB arrays of empty objects: the"
        f" largest decoded size a body under the limit can have): statuses {abuse['heavy_statuses']}.",
        f"- **Peak RSS of the replica (VmHWM, whole run): {abuse['peak_rss_mb']:.0f} MiB**, against the "
        f"{memory_limit_mb} MiB each worker process may use (k8s/deployment.yaml: 1 GiB for a 2-worker pod).",
        f"- `/healthz` while those batches ran: p50 {abuse['healthz_p50_ms']:.1f} ms, "
        f"p99 {abuse['healthz_p99_ms']:.1f} ms, max {abuse['healthz_max_ms']:.1f} ms "
        "(large bodies are decoded and scored in a worker thread; the tail is the decoding itself: orjson holds "
        "the GIL for a whole 6 MB body, so the event loop waits for that one C call).",
        "",
    ]
    path.write_text("\n".join(lines))
