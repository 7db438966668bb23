-- wrk script for bench.serve: POST the JSON body in the file named by the BODY_FILE environment variable,
-- and collect each response's Server-Timing durations (app and cpu, ms) to print when wrk is done.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local file = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.body = file:read("*a")
file:close()

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  server_ms = {}
  cpu_ms = {}
  bad = 0
end

function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
  end
  local timing = headers["server-timing"] or headers["Server-Timing"]
  if timing then
    local dur = string.match(timing, "app;dur=([%d%.]+)")
    if dur then
      server_ms[#server_ms + 1] = dur
    end
    local cpu = string.match(timing, "cpu;dur=([%d%.]+)")
    if cpu then
      cpu_ms[#cpu_ms + 1] = cpu
    end
  end
end

function done(summary, latency, requests)
  local all = {}
  local cpu = {}
  local non200 = 0
  for _, thread in ipairs(threads) do
    for _, v in ipairs(thread:get("server_ms")) do
      all[#all + 1] = v
    end
    for _, v in ipairs(thread:get("cpu_ms")) do
      cpu[#cpu + 1] = v
    end
    non200 = non200 + thread:get("bad")
  end
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("BENCH non200=%d errors=%d requests=%d duration_us=%d p50_us=%d p99_us=%d\n", non200,
    errors, summary.requests, summary.duration, latency:percentile(50), latency:percentile(99)))
  io.write("BENCH server_ms=" .. table.concat(all, ",") .. "\n")
  io.write("BENCH cpu_ms=" .. table.concat(cpu, ",") .. "\n")
end
