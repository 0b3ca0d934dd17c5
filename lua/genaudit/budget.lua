-- genaudit.budget — spending limits per org and/or template per UTC day or
-- month, read from a Lua script (sandboxed, time-limited and hot-reloaded
-- like rules: genaudit.scripts). Before a generation calls its provider, the
-- pipeline asks check(ctx, estimate): the spend so far in each limit's scope
-- and period (one indexed query per scope over generation_snapshots, cached
-- for cache_ttl_ms) plus the pre-flight estimate, against the limit. A limit
-- with action "refuse" stops the generation (BUDGET_EXCEEDED, stored as a
-- failed snapshot, no provider request); "warn" lets it go on with the
-- warning recorded. README "Budgets".
--
-- Amounts are exact: decimal strings of integer picodollars (1e-12 USD) are
-- added and compared digit by digit, never rounded through a double.
local core = require("genaudit.core")
local scripts = require("genaudit.scripts")

local M = {}

M.DEFAULT_CACHE_TTL_MS = 5000
M.PERIODS = { day = true, month = true }
M.ACTIONS = { refuse = true, warn = true }
local MAX_LIMITS = 1000
local MAX_NAME_BYTES = 200

-- ---- exact decimal amounts (non-negative integers as digit strings) ----

local function trim(d)
  d = d:gsub("^0+", "")
  return d == "" and "0" or d
end

-- M.dec_add(a, b) -> a + b (digit strings)
function M.dec_add(a, b)
  local out, carry = {}, 0
  local i, j = #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local s = carry + (i > 0 and a:byte(i) - 48 or 0) + (j > 0 and b:byte(j) - 48 or 0)
    out[#out + 1] = string.char(48 + s % 10)
    carry = s >= 10 and 1 or 0
    i, j = i - 1, j - 1
  end
  return trim(string.reverse(table.concat(out)))
end

-- M.dec_cmp(a, b) -> -1, 0, 1
function M.dec_cmp(a, b)
  a, b = trim(a), trim(b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  if a == b then return 0 end
  return a < b and -1 or 1
end

-- M.pico_of_usd("5.00" | 5) -> digit string of picodollars | nil, err.
-- At most 12 decimal places (a picodollar); numbers are read as written by
-- %.12f (a limit given as a number is as exact as that).
function M.pico_of_usd(v)
  if type(v) == "number" then
    if v ~= v or v < 0 or v >= 1e15 then return nil, "must be a non-negative amount of USD below 1e15" end
    v = string.format("%.12f", v)
  end
  if type(v) ~= "string" then return nil, "must be a decimal string of USD (\"5.00\") or a number" end
  local int, frac = v:match("^(%d+)%.?(%d*)$")
  if not int or #int > 15 then
    return nil, "must be a decimal string of USD (\"5.00\"), got '" .. scripts.text(v) .. "'"
  end
  if #frac > 12 then return nil, "has more than 12 decimal places (a picodollar): '" .. v .. "'" end
  return trim(int .. frac .. string.rep("0", 12 - #frac))
end

-- M.usd_of_pico("5000000000000") -> "5.00": the exact decimal USD (at least
-- two decimal places, trailing zeros dropped beyond them).
function M.usd_of_pico(p)
  p = trim(p)
  if #p <= 12 then p = string.rep("0", 13 - #p) .. p end
  local int, frac = p:sub(1, #p - 12), p:sub(#p - 11)
  frac = frac:gsub("0+$", "")
  if #frac < 2 then frac = frac .. string.rep("0", 2 - #frac) end
  return int .. "." .. frac
end

-- ---- the script ----

local function id_string(v)
  if type(v) == "number" and v % 1 == 0 then return string.format("%d", v) end
  if type(v) == "string" and v ~= "" then return v end
  return nil
end

-- One limit, checked and copied into host values (read raw: the script's
-- tables may carry metatables). Returns the copy | nil, err.
local function check_limit(t, i)
  if type(t) ~= "table" then return nil, "limit " .. i .. " is a " .. type(t) .. ", not a table" end
  local where = "limit " .. i
  local org, template = rawget(t, "org"), rawget(t, "template")
  local out = { period = rawget(t, "period"), action = rawget(t, "action") }
  if org ~= nil then
    out.org = id_string(org)
    if not out.org then return nil, where .. ": org must be a non-empty string or an integer" end
  end
  if template ~= nil then
    out.template = type(template) == "string" and template ~= "" and template or nil
    if not out.template then return nil, where .. ": template must be a non-empty string" end
  end
  if out.org == nil and out.template == nil then return nil, where .. ": names no org and no template" end
  if not M.PERIODS[out.period] then
    return nil, where .. ": period must be 'day' or 'month', got '" .. scripts.text(out.period) .. "'"
  end
  if out.action == nil then out.action = "refuse" end
  if not M.ACTIONS[out.action] then
    return nil, where .. ": action must be 'refuse' or 'warn', got '" .. scripts.text(out.action) .. "'"
  end
  local pico, err = M.pico_of_usd(rawget(t, "limit_usd"))
  if not pico then return nil, where .. ": limit_usd " .. err end
  out.limit_pico = pico
  local name = rawget(t, "name")
  if name ~= nil and (type(name) ~= "string" or #name > MAX_NAME_BYTES) then
    return nil, where .. ": name must be a string of at most " .. MAX_NAME_BYTES .. " bytes"
  end
  out.name = name or ((out.org and ("org " .. out.org) or "") .. (out.org and out.template and ", " or "")
    .. (out.template and ("template " .. out.template) or "") .. " per " .. out.period)
  return out
end

-- A list of limits (the script's value, or what its function returned) ->
-- host copies | nil, err.
local function check_limits(v)
  if type(v) ~= "table" then return nil, "a budget must be a table of limits, got a " .. type(v) end
  local out = {}
  local n = 0
  while rawget(v, n + 1) ~= nil and n <= MAX_LIMITS do n = n + 1 end
  if n > MAX_LIMITS then return nil, "at most " .. MAX_LIMITS .. " limits" end
  for i = 1, n do
    local l, err = check_limit(rawget(v, i), i)
    if not l then return nil, err end
    out[i] = l
  end
  return out
end

-- The script's value: a table of limits, or a function(ctx) returning one.
local function validate(v)
  if type(v) == "function" then return { fn = v } end
  local limits, err = check_limits(v)
  if not limits then return nil, err end
  return { limits = limits }
end

local Budget = {}
Budget.__index = Budget

-- budget.new{ path, store, sandbox = true, script_timeout_ms = 1000,
--   cache_ttl_ms = 5000, now = os.time } -> budget. now: the clock that
-- says which UTC day and month it is (a spec can move it).
function M.new(opts)
  if type(opts) ~= "table" then error("bad argument #1 to 'budget' (table expected, got " .. type(opts) .. ")", 2) end
  if type(opts.path) ~= "string" then error("bad argument #1 to 'budget' (path: string expected)", 2) end
  if type(opts.store) ~= "table" or type(opts.store.query) ~= "function" then
    error("bad argument #1 to 'budget' (store expected)", 2)
  end
  local ttl = opts.cache_ttl_ms
  if ttl == nil then ttl = M.DEFAULT_CACHE_TTL_MS end
  if type(ttl) ~= "number" or ttl < 0 then
    error("bad argument #1 to 'budget' (cache_ttl_ms: number >= 0 expected)", 2)
  end
  return setmetatable({
    path = opts.path, store = opts.store, cache_ttl_ms = ttl, now = opts.now or os.time,
    loader = scripts.loader{ sandbox = opts.sandbox, limit_ms = opts.script_timeout_ms, validate = validate },
    cache = {}, -- scope key -> { at_us, since = { day = , month = }, pico = { day, month }, unknown = {...} }
    queries = 0, -- spend queries sent to the store (the cache's effect shows here)
  }, Budget)
end

-- budget:script() -> { path, source, digest } of the active budget script, or nil
function Budget:script() return self.loader:script(self.path) end

-- The limits for ctx: the script's table, or what its function returns for a
-- copy of ctx (time-limited). -> limits | nil, err, code
function Budget:limits(ctx)
  local v, err = self.loader:load(self.path)
  if not v then return nil, "BUDGET: " .. tostring(err), "BUDGET" end
  self.load_error = err -- a newer version that failed to load (the previous one is in force)
  if v.limits then return v.limits end
  local ok, res = self.loader:call(v.fn, scripts.copy(ctx))
  if not ok then return nil, "BUDGET: " .. self.path .. ": " .. res, "BUDGET" end
  local limits, lerr = check_limits(res)
  if not limits then return nil, "BUDGET: " .. self.path .. ": " .. lerr, "BUDGET" end
  return limits
end

local function applies(l, org, template)
  return (l.org == nil or l.org == org) and (l.template == nil or l.template == template)
end

-- The UTC starts of today and of this month, 'YYYY-MM-DD HH:MM:SS'.
function Budget:period_starts()
  local t = self.now()
  return { day = os.date("!%Y-%m-%d 00:00:00", t), month = os.date("!%Y-%m-01 00:00:00", t) }
end

local function scope_key(l) return (l.org and ("o" .. #l.org .. ":" .. l.org) or "") .. "|" .. (l.template or "") end

-- budget:spend_sql(limit, starts) -> the spend query of a limit's scope and
-- its parameters: the sums since the day's and the month's start.
function Budget:spend_sql(l, starts)
  local SQL = require("genaudit.report").dialect(self.store)
  local day = SQL.at_or_after
  local conds, params = {}, { SQL.at_arg(starts.day), SQL.at_arg(starts.day) }
  if l.org then conds[#conds + 1] = "org_id = ?"; params[#params + 1] = l.org end
  if l.template then conds[#conds + 1] = "template_id = ?"; params[#params + 1] = l.template end
  conds[#conds + 1] = SQL.at_or_after
  params[#params + 1] = SQL.at_arg(starts.month)
  local sql = "SELECT CAST(sum(CASE WHEN " .. day .. " THEN estimated_cost_picousd END) AS TEXT) AS day_pico,"
    .. " CAST(sum(estimated_cost_picousd) AS TEXT) AS month_pico,"
    .. " count(CASE WHEN " .. day .. " AND estimated_cost_picousd IS NULL THEN 1 END) AS day_unknown,"
    .. " count(*) - count(estimated_cost_picousd) AS month_unknown"
    .. " FROM generation_snapshots WHERE " .. table.concat(conds, " AND ")
  return sql, params
end

-- The spend of a scope this day and this month: one query (an index on
-- org_id or template_id, then created_at, covers it), cached for
-- cache_ttl_ms. -> entry | nil, err, code
function Budget:spend(l, starts)
  local key = scope_key(l)
  local e = self.cache[key]
  local now_us = core.monotonic_us()
  if e and e.since.day == starts.day and e.since.month == starts.month
     and now_us - e.at_us < self.cache_ttl_ms * 1000 then
    return e, true
  end
  local sql, params = self:spend_sql(l, starts)
  self.queries = self.queries + 1
  local rows, err, code = self.store:query(sql, params)
  if not rows then return nil, err, code end
  local r = rows[1] or {}
  e = { at_us = now_us, since = starts, org = l.org, template = l.template,
        pico = { day = trim(tostring(r.day_pico or "0")), month = trim(tostring(r.month_pico or "0")) },
        unknown = { day = tonumber(r.day_unknown) or 0, month = tonumber(r.month_unknown) or 0 } }
  self.cache[key] = e
  return e, false
end

-- budget:check(ctx, estimate_pico) -> record | nil, err, code.
-- estimate_pico: the generation's worst-case cost (digit string of
-- picodollars) or nil when unknown (counted as 0, and said so).
-- record = { script, digest, decision = "pass"|"warn"|"refuse", estimate_usd
-- (nil: unknown), checks = { { name, org, template, period, since, limit_usd,
-- spent_usd, unpriced_rows, action, exceeded, cached } }, refused_by = name
-- of the first refusing limit, warnings = { names } }. Only the limits that
-- apply to ctx's org and template are checked and listed.
function Budget:check(ctx, estimate_pico)
  local limits, err, code = self:limits(ctx)
  if not limits then return nil, err, code end
  local org, template = id_string(ctx.org_id), ctx.template_id
  local starts = self:period_starts()
  local est = estimate_pico or "0"
  local src = self:script()
  local rec = { script = self.path, digest = src and src.digest or nil, decision = "pass", checks = {},
                estimate_usd = estimate_pico and M.usd_of_pico(estimate_pico) or nil }
  for _, l in ipairs(limits) do
    if applies(l, org, template) then
      local e, cached, scode = self:spend(l, starts)
      if not e then return nil, cached, scode end
      local spent = e.pico[l.period]
      local exceeded = M.dec_cmp(M.dec_add(spent, est), l.limit_pico) > 0
      rec.checks[#rec.checks + 1] = {
        name = l.name, org = l.org, template = l.template, period = l.period, since = starts[l.period],
        limit_usd = M.usd_of_pico(l.limit_pico), spent_usd = M.usd_of_pico(spent),
        unpriced_rows = e.unknown[l.period], action = l.action, exceeded = exceeded, cached = cached,
      }
      if exceeded then
        if l.action == "refuse" then
          if rec.decision ~= "refuse" then rec.decision, rec.refused_by = "refuse", l.name end
        else
          rec.warnings = rec.warnings or {}
          rec.warnings[#rec.warnings + 1] = l.name
          if rec.decision == "pass" then rec.decision = "warn" end
        end
      end
    end
  end
  return rec
end

-- budget:add_spend(ctx, pico) -> the cost of a generation just persisted
-- (integer picodollars, or nil when unknown) added to the cached spends of
-- the scopes it belongs to, so this process sees its own spending at once;
-- an unknown cost drops those cache entries (the next check asks the store).
function Budget:add_spend(ctx, pico)
  local org, template = id_string(ctx.org_id), ctx.template_id
  for key, e in pairs(self.cache) do
    if applies(e, org, template) then
      if type(pico) == "number" and pico % 1 == 0 and pico >= 0 and pico < 2 ^ 53 then
        local d = string.format("%d", pico)
        e.pico.day, e.pico.month = M.dec_add(e.pico.day, d), M.dec_add(e.pico.month, d)
      else
        self.cache[key] = nil
      end
    end
  end
end

return M
