-- wrk script: POST /detect, cycling through the bodies that benchmarks/service_load.py
-- --bodies FILE wrote (and had answered, so that they are cached). Prints p50/p90/p99.
--
--   python benchmarks/service_load.py --url http://127.0.0.1:8000 --bodies /tmp/bodies.txt
--   WRK_BODIES=/tmp/bodies.txt wrk -t1 -c50 -d15s -s benchmarks/wrk_detect.lua http://127.0.0.1:8000

local bodies = {}
for line in io.lines(os.getenv("WRK_BODIES") or "bodies.txt") do
  bodies[#bodies + 1] = line
end
local headers = {["Content-Type"] = "application/json"}
if os.getenv("LEAF_API_TOKEN") then
  headers["Authorization"] = "Bearer " .. os.getenv("LEAF_API_TOKEN")
end
local i = 0

request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "/detect", headers, bodies[i])
end

done = function(summary, latency, requests)
  io.write(string.format("p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms\n",
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
  local e = summary.errors
  io.write(string.format("%d requests in %.1f s; errors: connect %d, read %d, write %d, " ..
    "status %d, timeout %d\n", summary.requests, summary.duration / 1e6, e.connect, e.read,
    e.write, e.status, e.timeout))
end
