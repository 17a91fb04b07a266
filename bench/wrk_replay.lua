-- wrk script: replay pre-built raw HTTP requests, each one once, in file order.
--
--   wrk -t1 -c64 -d15s --timeout 30s -s bench/wrk_replay.lua http://127.0.0.1:PORT -- PREFIX
--
-- Thread i reads PREFIX.i, a sequence of "<byte length>\n<raw request>". If a thread runs
-- out it starts over (counted in `wraps`; the benchmark then needs a bigger pool).
-- Each 2xx answer's "order_id" is kept so the database can be checked afterwards; done()
-- writes everything to the file named by $WRK_OUT as simple "key value..." lines.

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  file = assert(io.open(args[1] .. "." .. tid, "rb"))
  sent, ok, bad, wraps = 0, 0, 0, 0
  ids, statuses = {}, {}
end

function request()
  local header = file:read("*l")
  if header == nil then
    wraps = wraps + 1
    file:seek("set", 0)
    header = file:read("*l")
  end
  sent = sent + 1
  return file:read(tonumber(header))
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    ok = ok + 1
    ids[ok] = string.match(body, '"order_id":"([^"]*)"') or "?"
  else
    bad = bad + 1
    statuses[status] = (statuses[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("WRK_OUT"), "w"))
  local e = summary.errors
  out:write(string.format("summary %d %d %d\n", summary.requests, summary.duration, summary.bytes))
  out:write(string.format("errors %d %d %d %d %d\n", e.connect, e.read, e.write, e.status, e.timeout))
  out:write(string.format("latency %d %d %d %d %d %d %d\n", latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max, latency.min))
  for _, thread in ipairs(threads) do
    out:write(string.format("thread %d %d %d %d %d\n", thread:get("tid"), thread:get("sent"),
      thread:get("ok"), thread:get("bad"), thread:get("wraps")))
    for code, n in pairs(thread:get("statuses")) do
      out:write(string.format("status %d %d\n", code, n))
    end
    for _, id in ipairs(thread:get("ids")) do
      out:write("id ", id, "\n")
    end
  end
  out:close()
end
