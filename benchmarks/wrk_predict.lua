-- wrk script for benchmarks/serving.py: POST one SST-2 dev sentence per request, in turn.
--   wrk -t1 -c8 -d12s --latency -s benchmarks/wrk_predict.lua URL -- SENTENCES_FILE [KEY] [RUNTIME]
-- SENTENCES_FILE: one sentence a line. At the end, one JSON line: requests, seconds, rps,
-- p50_ms, p90_ms, p99_ms, non_2xx, status_429, socket_errors.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local function json_string(s)
  s = s:gsub('\\', '\\\\'):gsub('"', '\\"'):gsub('[%c]', function(c)
    return string.format('\\u%04x', string.byte(c))
  end)
  return '"' .. s .. '"'
end

local bodies = {}
local next_body = 0
status_429 = 0

function init(args)
  local path, key, runtime = args[1], args[2], args[3]
  local extra = ""
  if runtime and runtime ~= "" then extra = ', "runtime": ' .. json_string(runtime) end
  for line in io.lines(path) do
    if line ~= "" then
      bodies[#bodies + 1] = '{"inputs": [' .. json_string(line) .. ']' .. extra .. '}'
    end
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if key and key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end
end

function request()
  next_body = next_body % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[next_body])
end

function response(status, headers, body)
  if status == 429 then status_429 = status_429 + 1 end
end

function done(summary, latency, requests)
  local refused = 0
  for _, thread in ipairs(threads) do refused = refused + (thread:get("status_429") or 0) end
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "rps": %.1f, "p50_ms": %.3f, "p90_ms": %.3f, ' ..
    '"p99_ms": %.3f, "non_2xx": %d, "status_429": %d, "socket_errors": %d}\n',
    summary.requests, seconds, summary.requests / seconds, latency:percentile(50) / 1000,
    latency:percentile(90) / 1000, latency:percentile(99) / 1000, e.status, refused,
    e.connect + e.read + e.write + e.timeout))
end
