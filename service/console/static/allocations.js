// The treatment mix of recent allocations, from readings of GET /allocations/counts (cumulative per replica).

function sharesOf(counts) {
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  if (!total) return [null, 0];
  return [Object.fromEntries(Object.entries(counts).map(([k, v]) => [k, v / total])), total];
}

export class AllocationHistory {
  constructor(windowMs) {
    this.windowMs = windowMs;
    this.readings = new Map(); // replica → [{t, counts}], oldest first, spanning about windowMs
  }

  // Adds a reading taken at `now` (ms); returns the mix over the window and since the replica started.
  add(reading, now) {
    // Counters are per replica process: behind a load balancer successive readings may come from different
    // replicas, so only readings of the same one are subtracted (and a restart, counts going down, starts over).
    let readings = this.readings.get(reading.replica) || [];
    const last = readings[readings.length - 1];
    if (last && Object.entries(reading.counts).some(([k, v]) => v < (last.counts[k] || 0))) readings = [];
    readings.push({ t: now, counts: reading.counts });
    while (readings.length > 2 && now - readings[1].t >= this.windowMs) readings.shift();
    this.readings.set(reading.replica, readings);
    const first = readings[0];
    const delta = Object.fromEntries(Object.entries(reading.counts).map(([k, v]) => [k, v - (first.counts[k] || 0)]));
    const [recent, recentTotal] = sharesOf(delta);
    const [all, total] = sharesOf(reading.counts);
    return { recent, recentTotal, recentSeconds: Math.round((now - first.t) / 1000), all, total };
  }
}
