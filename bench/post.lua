-- wrk script for bench.serve: POST the JSON body in the file named by the BODY_FILE environment variable,
-- and collect each response's Server-Timing duration (ms) to print as one line when wrk is done.
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
  bad = 0
end

function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
  end
  local timing = headers["server-timing"] or headers["Server-Timing"]
  if timing then
    local dur = string.match(timing, "dur=([%d%.]+)")
    if dur then
      server_ms[#server_ms + 1] = dur
    end
  end
end

function done(summary, latency, requests)
  local all = {}
  local non200 = 0
  for _, thread in ipairs(threads) do
    local values = thread:get("server_ms")
    for _, v in ipairs(values) do
      all[#all + 1] = v
    end
    non200 = non200 + thread:get("bad")
  end
  io.write(string.format("BENCH non200=%d requests=%d p50=%d p99=%d\n", non200, summary.requests,
    latency:percentile(50), latency:percentile(99)))
  io.write("BENCH server_ms=" .. table.concat(all, ",") .. "\n")
end
