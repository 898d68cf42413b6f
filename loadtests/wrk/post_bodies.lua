-- wrk script: POST JSON bodies read from a file (one body per line), cycling through them.
-- Usage: wrk -s post_bodies.lua URL -- BODIES_FILE [OFFSET]
-- Every thread starts at a different offset so threads do not send the same body in step.
-- `done` prints one JSON line (prefixed "WRK_JSON ") that the bench parses.
local bodies = {}
local position = 0
local headers = { ["Content-Type"] = "application/json" }
local thread_index = 0
local threads = {}

function setup(thread)
  thread:set("thread_index", thread_index)
  thread_index = thread_index + 1
  table.insert(threads, thread)
end

function init(args)
  local path = args[1]
  for line in io.lines(path) do
    if #line > 0 then
      bodies[#bodies + 1] = line
    end
  end
  if #bodies == 0 then
    error("no request bodies in " .. tostring(path))
  end
  local offset = tonumber(args[2] or "0") or 0
  position = (offset + (thread_index or 0) * 7919) % #bodies
end

function request()
  position = position % #bodies + 1
  return wrk.format("POST", nil, headers, bodies[position])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
