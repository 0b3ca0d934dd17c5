-- genaudit.nginx_metrics — genaudit's Prometheus metrics counted live inside
-- nginx: every snapshot a worker persists updates counters and histograms in
-- one lua_shared_dict (so the figures are summed across workers and survive
-- a reload), and a content handler renders the dict as the text exposition
-- format 0.0.4. The families, labels, buckets, help and number formatting
-- are genaudit.metrics' (`genaudit metrics` computes the same families from
-- the store in SQL), plus the writer's figures, which only a running worker
-- knows. Recording is O(1) per sample: incr() and safe_add() on the dict,
-- never an allocation that evicts another series (safe_add fails instead of
-- evicting); a sample the full dict cannot take is counted in
-- genaudit_metrics_dropped_total and the request goes on.
local metrics = require("genaudit.metrics")
local core = require("genaudit.core")

local M = {}

M.DICT = "genaudit_metrics" -- the lua_shared_dict used when none is named

local TOKEN, DURATION = metrics.TOKEN_BUCKETS, metrics.DURATION_BUCKETS
local GENAI = { "gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_response_model" }

-- Every family kept in the dict, in the order they are written: name, kind
-- ("cost" is a counter kept as two exact parts), label names; histograms
-- also their bounds, the scale of the stored sum (its units per bound unit)
-- and `per`, the observed value's units per bound unit.
local FAMILIES = {
  { "genaudit_generations_total", "counter", { "status", "template" } },
  { "genaudit_replays_total", "counter", { "status", "template" } },
  { "genaudit_cost_usd_total", "cost", { "template", "model" } },
  { "genaudit_unpriced_generations_total", "counter", { "template", "model" } },
  { "genaudit_repairs_total", "counter", { "template" } },
  { "genaudit_repair_types_total", "counter", { "template", "type" } },
  { "genaudit_rule_errors_total", "counter", { "rule", "kind" } },
  { "gen_ai_client_token_usage", "histogram", { GENAI[1], GENAI[2], GENAI[3], "gen_ai_token_type" }, TOKEN, 1,
    per = 1 },
  -- durations: observed in milliseconds (as stored), summed in integer microseconds
  { "gen_ai_client_operation_duration_seconds", "histogram", GENAI, DURATION, 1e6, per = 1000 },
  { "genaudit_generation_duration_seconds", "histogram", { "template" }, DURATION, 1e6, per = 1000 },
  { "genaudit_writer_queue_depth", "gauge", { "worker" },
    help = "Snapshots queued in this worker's writer thread, not yet committed (sampled every interval)." },
  { "genaudit_writer_rows_written_total", "counter", { "worker" },
    help = "Snapshots this worker's writer committed to the store." },
  { "genaudit_writer_rows_failed_total", "counter", { "worker" },
    help = "Snapshots this worker's writer gave up on (the store refused them or shutdown ran out of retries)." },
  { "genaudit_writer_retries_total", "counter", { "worker" },
    help = "Batches this worker's writer tried again after a failed commit." },
  { "genaudit_persist_failures_total", "counter", { "code" },
    help = "Snapshots the store did not take, by error code (FULL: the writer's queue was full; STOPPED, INVALID,"
      .. " ...)." },
  { "genaudit_metrics_dropped_total", "counter", {},
    help = "Metric updates lost because the shared dict was full (its series stay as they were)." },
}
local BY_NAME = {}
for _, f in ipairs(FAMILIES) do BY_NAME[f[1]] = f end

local DROPPED = "genaudit_metrics_dropped_total|"

-- The dict key of a series: the family name, "|", then each label value as
-- <length>:<bytes> (any bytes, unambiguous); a histogram's bucket index or
-- "s" (its sum), or a cost's "u" or "p", follows as "|" .. suffix. At most
-- four labels, given in the family's order (no varargs: this is the hot path).
local function key(name, a, b, c, d)
  local k = name .. "|"
  if a then k = k .. #a .. ":" .. a end
  if b then k = k .. #b .. ":" .. b end
  if c then k = k .. #c .. ":" .. c end
  if d then k = k .. #d .. ":" .. d end
  return k
end

-- key() backwards: name, { values }, suffix | nil for a key that is not ours.
local function parse(k)
  local bar = k:find("|", 1, true)
  if not bar then return nil end
  local f = BY_NAME[k:sub(1, bar - 1)]
  if not f then return nil end
  local pos, values = bar + 1, {}
  for i = 1, #f[3] do
    local len, at = k:match("^(%d+):()", pos)
    if not len then return nil end
    values[i] = k:sub(at, at + tonumber(len) - 1)
    pos = at + tonumber(len)
  end
  local suffix = k:match("^|(.+)$", pos)
  if pos <= #k and not suffix then return nil end
  return f, values, suffix
end

local Recorder = {}
Recorder.__index = Recorder

-- A recorder keeps the keys it built (a worker's label values repeat: the
-- same templates, models and rules request after request) and which series
-- it has seen in the dict, so that a request builds no key strings and a
-- zero sample of a series already there (a rule's error count, mostly 0)
-- costs no dict operation. Label values come from rows, so the cache is
-- bounded: past KEY_CACHE keys it starts afresh.
local KEY_CACHE = 4096
local NONE = {} -- a missing label in the cache's nested tables

-- The series key of name and labels a.. d (key()), with its suffixes:
-- recorder:key(...) -> entry { [""] = key, [suffix] = key .. "|" .. suffix }.
local function level(t, v)
  if v == nil then v = NONE end
  local nt = t[v]
  if not nt then
    nt = {}
    t[v] = nt
  end
  return nt
end

function Recorder:key(name, a, b, c, d)
  local t = level(level(level(level(self.keys, name), a), b), c)
  local dk = d == nil and NONE or d
  local e = t[dk]
  if not e then
    if self.nkeys >= KEY_CACHE then
      self.keys, self.seen, self.nkeys = {}, {}, 0
      return self:key(name, a, b, c, d)
    end
    self.nkeys = self.nkeys + 1
    e = { [""] = key(name, a, b, c, d) }
    t[dk] = e
  end
  return e
end

-- The dict key of an entry's suffix ("" for the series itself).
local function sub(e, suffix)
  local k = e[suffix]
  if not k then
    k = e[""] .. "|" .. suffix
    e[suffix] = k
  end
  return k
end

-- Adds n to a series: incr() when it exists, else safe_add() (which fails
-- rather than evict another series when the dict is full); a lost update
-- counts in genaudit_metrics_dropped_total. Returns true | false. Adding 0
-- to a series this recorder has counted already does nothing (it is there:
-- safe_add never evicts).
function Recorder:bump(k, n)
  if n == 0 and self.seen[k] then return true end
  local dict = self.dict
  if dict:incr(k, n) then
    self.seen[k] = true
    return true
  end
  local ok, err = dict:safe_add(k, n)
  if ok or (err == "exists" and dict:incr(k, n)) then
    self.seen[k] = true
    return true
  end
  dict:incr(DROPPED, 1)
  return false
end

-- A label value from a row: strings as they are, anything else "" (what SQL
-- reads as NULL: the empty value genaudit.metrics writes).
local function str(v) return type(v) == "string" and v or "" end
local function tab(v) return type(v) == "table" and v or {} end
local function integer(v) return type(v) == "number" and v == math.floor(v) and v >= 0 and v < 2 ^ 53 end

-- The row's exact cost as decimal picodollars, or nil when unknown (as the
-- store's estimated_cost_picousd column derives it).
local math_type = rawget(math, "type") -- Lua 5.4: integers up to 2^63 are exact; LuaJIT: doubles
local function picousd(tu)
  local v = tu.estimated_cost_picousd
  if math_type and math_type(v) == "integer" then
    if v >= 0 then return string.format("%d", v) end
    return nil
  end
  if type(v) == "number" and integer(v) then return string.format("%.0f", v) end
  if type(v) == "userdata" then -- an exact integer beyond 2^53 (genaudit.rawjson)
    local s = tostring(v)
    if s:match("^%d+$") then return s end
  end
  if v == nil and type(tu.estimated_cost) == "number" and tu.estimated_cost >= 0 then
    return string.format("%.0f", math.floor(tu.estimated_cost * 1e12 + 0.5))
  end
  return nil
end

-- One observation of histogram name with labels a.. d: its bucket
-- (non-cumulative: one incr) and its sum (sum_units: the value in the
-- family's stored units).
function Recorder:observe(name, v, sum_units, a, b, c, d)
  local f = BY_NAME[name]
  local bounds, per = f[4], f.per
  local i = #bounds + 1
  for j = 1, #bounds do
    if v <= bounds[j] * per then i = j break end -- the comparison genaudit.metrics' SQL makes
  end
  local e = self:key(name, a, b, c, d)
  self:bump(sub(e, i), 1)
  self:bump(sub(e, "s"), sum_units)
end

local function us(ms) return math.floor(ms * 1000 + 0.5) end

-- recorder:generation(row): counts one persisted snapshot (the row given to
-- persist_generation), as `genaudit metrics` would count its stored row.
function Recorder:generation(row)
  local tmpl, status = str(row.template_id), str(row.status)
  local replay = type(row.replay_of) == "string"
  self:bump(self:key(replay and "genaudit_replays_total" or "genaudit_generations_total", status, tmpl)[""], 1)
  local tu, perf, ri = tab(row.token_usage), tab(row.performance), tab(row.repair_info)
  local model = str(perf.model_identifier)
  local pico = picousd(tu)
  if pico then
    -- kept in two parts, each an exact double for any realistic total:
    -- whole microdollars (exact up to 2^53 of them, 9e9 USD), and the
    -- picodollars below one microdollar (each add < 1e6: exact for 9e9 rows)
    local lo = tonumber(pico:sub(-6))
    local hi = #pico > 6 and tonumber(pico:sub(1, -7)) or 0
    local e = self:key("genaudit_cost_usd_total", tmpl, model)
    self:bump(sub(e, "u"), hi)
    self:bump(sub(e, "p"), lo)
  else
    self:bump(self:key("genaudit_unpriced_generations_total", tmpl, model)[""], 1)
  end
  if integer(ri.repair_count) and ri.repair_count > 0 then
    self:bump(self:key("genaudit_repairs_total", tmpl)[""], ri.repair_count)
  end
  for _, t in ipairs(tab(ri.repair_types)) do
    if type(t) == "string" then self:bump(self:key("genaudit_repair_types_total", tmpl, t)[""], 1) end
  end
  for _, r in ipairs(tab(ri.rules)) do
    if type(r) == "table" and type(r.slug) == "string" then
      self:bump(self:key("genaudit_rule_errors_total", r.slug, "error")[""], integer(r.errors) and r.errors or 0)
      self:bump(self:key("genaudit_rule_errors_total", r.slug, "timeout")[""],
        integer(r.timeouts) and r.timeouts or 0)
    end
  end
  local provider = str(perf.provider)
  for _, c in ipairs(tab(tu.calls)) do
    if type(c) == "table" then
      local served = str(c.served_model)
      if integer(c.prompt_tokens) then
        self:observe("gen_ai_client_token_usage", c.prompt_tokens, c.prompt_tokens, "chat", provider, served, "input")
      end
      if integer(c.completion_tokens) then
        self:observe("gen_ai_client_token_usage", c.completion_tokens, c.completion_tokens, "chat", provider, served,
          "output")
      end
    end
  end
  for _, c in ipairs(tab(perf.calls)) do
    if type(c) == "table" and type(c.wait_ms) == "number" and c.wait_ms >= 0 then
      self:observe("gen_ai_client_operation_duration_seconds", c.wait_ms, us(c.wait_ms), "chat", provider, model)
    end
  end
  if not replay and type(perf.total_latency_ms) == "number" and perf.total_latency_ms >= 0 then
    self:observe("genaudit_generation_duration_seconds", perf.total_latency_ms, us(perf.total_latency_ms), tmpl)
  end
end

-- recorder:persist_failed(code): a snapshot the store did not take.
function Recorder:persist_failed(code)
  self:bump(self:key("genaudit_persist_failures_total", type(code) == "string" and code or "UNKNOWN")[""], 1)
end

local WRITER = { written = "genaudit_writer_rows_written_total", failed = "genaudit_writer_rows_failed_total",
                 retries = "genaudit_writer_retries_total" }

-- recorder:writer(stats, worker): publishes this worker's writer figures
-- (store:stats()): the queue depth as a gauge, and what the counters grew
-- by since the last call (so they keep growing across worker restarts).
function Recorder:writer(stats, worker)
  local w = tostring(worker)
  local ok, err = self.dict:safe_set(key("genaudit_writer_queue_depth", w), tonumber(stats.pending) or 0)
  if not ok and err then self.dict:incr(DROPPED, 1) end
  for field, name in pairs(WRITER) do
    local now = tonumber(stats[field]) or 0
    local delta = now - (self.published[field] or 0)
    if delta >= 0 and self:bump(key(name, w), delta) then self.published[field] = now end
  end
end

-- nginx_metrics.recorder(dict) -> recorder over an ngx.shared dict.
function M.recorder(dict)
  if type(dict) ~= "table" and type(dict) ~= "userdata" then
    error("bad argument #1 to 'recorder' (ngx.shared dict expected, got " .. type(dict) .. ")", 2)
  end
  dict:safe_add(DROPPED, 0) -- first, so a full dict can still be counted
  return setmetatable({ dict = dict, published = {}, keys = {}, seen = {}, nkeys = 0 }, Recorder)
end

-- The cost series' USD value from its two parts: the double nearest the
-- exact sum (core.usd_from_picousd, as genaudit.metrics converts SQL's sum).
local function usd(u, p)
  local carry = math.floor(p / 1e6)
  local hi, lo = u + carry, p - carry * 1e6
  local dec = hi > 0 and string.format("%.0f%06d", hi, lo) or string.format("%.0f", lo)
  return core.usd_from_picousd(dec)
end

local function pairs_of(f, values)
  local l = {}
  for i, name in ipairs(f[3]) do
    l[#l + 1] = name
    l[#l + 1] = values[i]
  end
  return l
end

-- nginx_metrics.render(dict) -> text: every family in the dict as the text
-- exposition format 0.0.4 (families with no series yet still get their HELP
-- and TYPE). get_keys(0) holds the dict's lock while it lists the keys: with
-- low-cardinality labels that is a few hundred keys, microseconds.
function M.render(dict)
  local series = {} -- family name -> id -> { values, sort, suffix -> value }
  for _, k in ipairs(dict:get_keys(0)) do
    local f, values, suffix = parse(k)
    local v = f and dict:get(k)
    if type(v) == "number" then
      local id = k:sub(1, #k - (suffix and #suffix + 1 or 0))
      local fam = series[f[1]] or {}
      series[f[1]] = fam
      local s = fam[id] or { values = values, sort = table.concat(values, "\0"), parts = {} }
      fam[id] = s
      s.parts[suffix or ""] = v
    end
  end
  local out = {}
  for _, f in ipairs(FAMILIES) do
    local name, kind = f[1], f[2]
    metrics.family(out, name, kind == "cost" and "counter" or kind, f.help)
    local list = {}
    for _, s in pairs(series[name] or {}) do list[#list + 1] = s end
    table.sort(list, function(a, b) return a.sort < b.sort end)
    if kind == "histogram" then
      local rows, cols = {}, {}
      for i, label in ipairs(f[3]) do cols[i] = { label } end
      for _, s in ipairs(list) do
        local r, n = {}, 0
        for i, label in ipairs(f[3]) do r[label] = s.values[i] end
        for b = 1, #f[4] do
          n = n + (s.parts[tostring(b)] or 0)
          r["b" .. b] = n
        end
        r.n = n + (s.parts[tostring(#f[4] + 1)] or 0)
        r.s = s.parts.s or 0
        rows[#rows + 1] = r
      end
      metrics.histogram(out, name, rows, f[4], cols, f[5])
    else
      for _, s in ipairs(list) do
        local v = s.parts[""]
        if kind == "cost" then v = usd(s.parts.u or 0, s.parts.p or 0) end
        if v then out[#out + 1] = name .. metrics.labels(pairs_of(f, s.values)) .. " " .. metrics.number(v) end
      end
    end
  end
  return table.concat(out, "\n") .. "\n"
end

M.CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

return M
