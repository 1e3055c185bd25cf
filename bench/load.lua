-- The bench's load for wrk (Debian's wrk 4, LuaJIT): a constant arrival rate, bodies built cheaply,
-- one status check per response, so the generator costs a fraction of what k6 with load.js does.
--   KIND=mix    80 % POST /v1/events of one event, 20 % GET /v1/usage/{tenant} (every USAGE_EVERY-th)
--   KIND=batch  POST /v1/events of BATCH events (ids unique per request, the same tokens every time)
--   KIND=post   POST of one event, nothing else (bench/floor.py answers only that)
--   KIND=check    GET /v1/usage/{tenant}/check?tokens=10 (issue 12's quota check)
--   KIND=reserve  POST /v1/reservations of 1 token held 1 s (so holds stay few)
-- Settings come from the environment: RATE (requests/s, all threads), SECONDS (the paced window; run
-- wrk for longer: after the window connections stay idle, so no request is in flight when wrk stops),
-- TENANTS (id=key,...), RUN (unique per run), BATCH, USAGE_EVERY, TOKENS (per single event), IDS.
-- IDS=sequential (batch ids `<run>-<thread>-<request>-<index>`: a request's new keys land side by side in
-- the ledger's B-tree) or random (each id led by 8 hex digits drawn for it, as random UUIDs spread
-- their keys: each new key lands in a leaf of its own).
-- Pacing: each thread hands out send times RATE/threads apart; a connection that finishes takes the
-- next one and waits for it. A send time more than SLACK_MS past when a connection gets to it is
-- dropped, as k6 drops an iteration when no VU is free: the generator never catches up in bursts.
-- done() prints one line `FLAGMETER_WRK {json}` for bench/run.py.
local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } flagmeter_timespec;
int clock_gettime(int clock_id, flagmeter_timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("flagmeter_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
  return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
end

local KIND = os.getenv("KIND") or "mix"
local RATE = tonumber(os.getenv("RATE") or "100")
local SECONDS = tonumber(os.getenv("SECONDS") or "10")
local RUN = os.getenv("RUN") or "run"
local BATCH = tonumber(os.getenv("BATCH") or "550")
local USAGE_EVERY = tonumber(os.getenv("USAGE_EVERY") or "5")
local RANDOM_IDS = (os.getenv("IDS") or "sequential") == "random"
local TOKENS = tonumber(os.getenv("TOKENS") or "7")
local THREADS = tonumber(os.getenv("THREADS") or "1") -- wrk tells a thread nothing of its siblings
local SLACK_MS = 10
local IDLE_MS = 60000
local FEATURES = { "chat", "embed", "summarize", "classify", "translate", "code.complete" }

-- main state: one entry per thread, read back in done()
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("thread_index", #threads)
end

-- thread state
local tenants = {}
local interval_ms, next_slot, end_slot
local counter = 0
local template
local pieces -- IDS=random: the batch's JSON around its ids, every even piece an id to fill in
-- what done() reads: sent requests and POSTs, responses by kind, slots dropped
sent, posts, accepted, reads_ok, created, refused, other, dropped = 0, 0, 0, 0, 0, 0, 0, 0

local function parse_tenants()
  for pair in string.gmatch(os.getenv("TENANTS") or "", "[^,]+") do
    local id, key = string.match(pair, "^([^=]+)=(.+)$")
    local headers = { ["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json" }
    tenants[#tenants + 1] = {
      id = id,
      headers = headers,
      usage = wrk.format("GET", "/v1/usage/" .. id, { ["Authorization"] = headers.Authorization }),
      check = wrk.format("GET", "/v1/usage/" .. id .. "/check?tokens=10", { ["Authorization"] = headers.Authorization }),
      reserve = wrk.format("POST", "/v1/reservations", headers, '{"tokens":1,"ttl_seconds":1}'),
    }
  end
  if #tenants == 0 then
    tenants[1] = { id = "floor", headers = { ["Content-Type"] = "application/json" } }
  end
end

local function build_template()
  local parts = {}
  for i = 0, BATCH - 1 do
    parts[#parts + 1] = string.format(
      '{"id":"@-%d","feature":"%s","tokens":%d}', i, FEATURES[i % #FEATURES + 1], i % 1000 + 1
    )
  end
  template = "[" .. table.concat(parts, ",") .. "]"
  pieces = {}
  for piece in string.gmatch(template .. "@", "([^@]*)@") do
    pieces[#pieces + 1] = piece
    pieces[#pieces + 1] = false
  end
  pieces[#pieces] = nil -- after the last piece comes no id
end

-- The batch with every id led by random hex digits: unique by the rest, spread by the lead.
local function random_batch(id)
  for i = 2, #pieces, 2 do
    pieces[i] = string.format("%08x", math.random(0, 0x7fffffff)) .. "-" .. id
  end
  return table.concat(pieces)
end

function init(args)
  parse_tenants()
  if KIND == "batch" then
    build_template()
  end
  math.randomseed(os.time() * 100 + thread_index)
  interval_ms = 1000 * THREADS / RATE
end

function delay()
  local now = now_ms()
  if next_slot == nil then
    next_slot = now + (thread_index - 1) * interval_ms / THREADS
    end_slot = now + SECONDS * 1000
  end
  local slot = next_slot
  while slot < now - SLACK_MS do
    dropped = dropped + 1
    slot = slot + interval_ms
  end
  if slot >= end_slot then
    return IDLE_MS -- the window is over: this connection waits for wrk to stop
  end
  next_slot = slot + interval_ms
  local wait = slot - now
  if wait < 1 then
    return 0
  end
  return math.floor(wait + 0.5)
end

function request()
  if next_slot == nil then
    -- wrk calls request() once on the first thread to check the script: that one is never sent
    return wrk.format("GET", "/")
  end
  counter = counter + 1
  sent = sent + 1
  local tenant = tenants[counter % #tenants + 1]
  if KIND == "mix" and counter % USAGE_EVERY == 0 then
    return tenant.usage
  elseif KIND == "check" then
    return tenant.check
  elseif KIND == "reserve" then
    return tenant.reserve
  end
  posts = posts + 1
  local id = RUN .. "-" .. thread_index .. "-" .. counter
  local body
  if KIND == "batch" and RANDOM_IDS then
    body = random_batch(id)
  elseif KIND == "batch" then
    body = string.gsub(template, "@", id)
  else
    body = '{"id":"' .. id .. '","feature":"' .. FEATURES[counter % #FEATURES + 1] .. '","tokens":' .. TOKENS .. "}"
  end
  return wrk.format("POST", "/v1/events", tenant.headers, body)
end

function response(status, headers, body)
  if status == 202 then
    accepted = accepted + 1
  elseif status == 200 then
    reads_ok = reads_ok + 1
  elseif status == 201 then
    created = created + 1
  elseif status == 429 or status == 503 then
    refused = refused + 1 -- nothing of the request was taken
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local totals = { sent = 0, posts = 0, accepted = 0, reads_ok = 0, created = 0, refused = 0, other = 0, dropped = 0 }
  for _, thread in ipairs(threads) do
    for name, _ in pairs(totals) do
      totals[name] = totals[name] + thread:get(name)
    end
  end
  local fields = {}
  for name, value in pairs(totals) do
    fields[#fields + 1] = string.format('"%s":%d', name, value)
  end
  local errors = summary.errors
  fields[#fields + 1] = string.format(
    '"socket_errors":%d,"timeouts":%d,"completed":%d,"duration_us":%d',
    errors.connect + errors.read + errors.write, errors.timeout, summary.requests, summary.duration
  )
  fields[#fields + 1] = string.format(
    '"latency_us":{"p50":%d,"p95":%d,"p99":%d,"max":%d,"mean":%.1f}',
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, latency.mean
  )
  fields[#fields + 1] = string.format('"events_per_post":%d', KIND == "batch" and BATCH or 1)
  local tokens_per_post = TOKENS
  if KIND == "batch" then
    tokens_per_post = 0
    for i = 0, BATCH - 1 do
      tokens_per_post = tokens_per_post + i % 1000 + 1
    end
  end
  fields[#fields + 1] = string.format('"tokens_per_post":%d', tokens_per_post)
  io.write("FLAGMETER_WRK {" .. table.concat(fields, ",") .. "}\n")
end
