"""Campaigns (DESIGN.md §9): a total budget over a flight, a hard cap shared by every replica, and pacing.

- `spec`: the campaign record an operator writes (budget, flight, pacing mode, audience, paused) and what
  follows from it at a moment (status, target share of the budget).
- `ledger`: the spend ledger. Redis keys (campaign name in a hash tag so one campaign stays on one Cluster
  slot): `<prefix>:campaign:{<c>}` (hash: spec, budget, cap, committed, reserved, presumed, realized,
  covered), `<prefix>:campaign:{<c>}:slices` (hash replica → held slice), `<prefix>:campaign:{<c>}:leases`
  (zset replica → lease expiry, ms), `<prefix>:campaign:{<c>}:presumed` (hash replica → reclaimed slice
  charged as spent), and the set `<prefix>:campaigns:managed`. An in-process ledger has the same semantics.
- `wallet`: the slice a replica holds, spent by /allocate without a round trip (thread-safe), and the cap
  applied to a batch's chosen treatments.
- `slices`: the background task that reports spend, renews leases and refills slices; returns them on shutdown.
- `pacing`: the control law, and the leader loop (lease `<prefix>:campaign:{<c>}:leader`, state
  `<prefix>:campaign:{<c>}:pace`) that publishes each new λ as a versioned λ record through `LambdaStore.put`,
  and appends the ledger at that step to `<prefix>:campaign:{<c>}:history` (a capped list the console draws).
- `operations`: the plain functions under `service/routes/campaigns.py`.
"""
