-- genaudit.report — the analytics over generation_snapshots behind
-- `genaudit report`, `show` and `export`: cost per group (the Financial
-- Test), templates ranked by repairs (the Stability Test), latency
-- percentiles, per-rule counts, one snapshot, and a streaming JSONL/CSV export.
--
-- Reports return { columns = { names in display order }, rows = { {col=v} },
-- counted = { what the report counted, see below } }
-- (rendered as a table, CSV or JSON by genaudit.format)
-- (SQL NULL columns are absent from a row), or nil, "REPORT: message",
-- "REPORT" for bad options; a store failure is passed through as the store's
-- nil, err, code. Misuse (a store or options of the wrong type) raises.
-- User values only ever reach SQL as bound parameters; the only pieces
-- spliced into statements come from the fixed tables below.
local core = require("genaudit.core")
local format = require("genaudit.format")

local M = {}

-- Everything dialect-specific, in one place: one table per store backend
-- (store.backend). Percentiles are nearest-rank: the value at rank
-- ceil(p * n / 100) among the n non-NULL values in ascending order, computed
-- as (n * p + 99) / 100 in integer arithmetic (SQLite 3.40 may lack ceil()).
-- Sums of floats are taken in one order on both stores (ascending), and
-- averages divided out explicitly, so both give the same last digit; text
-- keys sort bytewise on both. Both are plain aggregates of the group (no
-- window sorting every row): SQLite through genaudit's own aggregate
-- functions (csrc/ga_sqlagg.c: quickselect over the group's values),
-- PostgreSQL through percentile_disc (a sorted array_agg for the percentiles
-- it cannot give exactly, below) and sum(... ORDER BY ...).
--   percentiles(col, {p, ...}): text "v1,v2,..." (NULL: no value), split by
--   split_percentiles; sum_asc(col): the REAL sum of col in ascending order.
-- On PostgreSQL, percentile_disc(f) is the value at rank ceil(f * n), f *
-- n computed in double precision: for f the double nearest p/100, that is
-- ceil(p * n / 100) whenever f is not above p/100 (f * n then never exceeds
-- the integer p * n / 100 may be, and stays within n * 2^-54 < 1/100 of it
-- for n < 2^40). PCT_DISC[p]: the integer percentiles p of 1..100 for which
-- that holds (50, 95 and 99 among them; 7, whose nearest double 0.07000...01
-- is above, not), found by the exact decimal expansion of p/100.
local PCT_DISC = {}
for p = 1, 100 do
  local want = string.format("%d.%02d", math.floor(p / 100), p % 100) .. string.rep("0", 58)
  if string.format("%.60f", p / 100) <= want then PCT_DISC[p] = true end
end
local function pg_percentiles(col, ps)
  local fractions = {}
  for i, p in ipairs(ps) do
    if not PCT_DISC[p] then fractions = nil break end
    fractions[i] = string.format("%d.%02d", math.floor(p / 100), p % 100)
  end
  if fractions then -- one ordered-set aggregate (one sort) for every percentile
    return "array_to_string(percentile_disc(CAST(ARRAY[" .. table.concat(fractions, ", ")
      .. "] AS double precision[])) WITHIN GROUP (ORDER BY " .. col .. "), ',')"
  end
  local arr = "(array_agg(" .. col .. " ORDER BY " .. col .. ") FILTER (WHERE " .. col .. " IS NOT NULL))"
  local parts = {}
  for i, p in ipairs(ps) do
    parts[i] = string.format("CAST(%s[(count(%s) * %d + 99) / 100] AS text)", arr, col, p)
  end
  return "NULLIF(concat_ws(',', " .. table.concat(parts, ", ") .. "), '')"
end
local function sqlite_percentiles(col, ps)
  return "genaudit_percentiles(" .. col .. ", " .. table.concat(ps, ", ") .. ")"
end

-- Sets r[names[i]] to the i-th value of the text r[key] (genaudit_percentiles'
-- "v1,v2,..."), as text (as_text: exact integers such as picodollars) or as
-- numbers; all nil when r[key] is NULL. Removes r[key].
local function split_percentiles(r, key, names, as_text)
  local v, i = r[key], 0
  r[key] = nil
  if v == nil then return end
  for part in tostring(v):gmatch("[^,]+") do
    i = i + 1
    if names[i] then r[names[i]] = as_text and part or tonumber(part) end
  end
end
local function desc_nulls_last(col) return col .. " DESC NULLS LAST" end
local function asc_nulls_last(col) return col .. " ASC NULLS LAST" end

local DIALECTS = {
  sqlite = {
    -- created_at >= now - N seconds; the bound argument comes from since_arg
    since = "created_at >= strftime('%Y-%m-%d %H:%M:%f', 'now', ?)",
    until_ago = "created_at < strftime('%Y-%m-%d %H:%M:%f', 'now', ?)",
    since_arg = function(seconds) return string.format("-%d seconds", seconds) end,
    -- an absolute UTC time 'YYYY-MM-DD HH:MM:SS' against the stored text
    at_or_after = "created_at >= ?", before = "created_at < ?",
    at_arg = function(t) return t .. ".000" end,
    day = "substr(created_at, 1, 10)",
    -- one row (column `value`) per element of repair_metrics.repair_types of b
    repair_types = "json_each(b.repair_metrics, '$.repair_types') AS j",
    -- one row per element of repair_metrics.rules of b (none when it is not an array),
    -- and member k of that element as an integer / as text
    rules_each = "json_each(CASE WHEN json_type(b.repair_metrics, '$.rules') = 'array'"
      .. " THEN json_extract(b.repair_metrics, '$.rules') END) AS j",
    rule_int = function(k)
      return "CASE WHEN json_type(j.value, '$." .. k .. "') = 'integer' THEN json_extract(j.value, '$." .. k .. "') END"
    end,
    rule_text = function(k)
      return "CASE WHEN json_type(j.value, '$." .. k .. "') = 'text' THEN json_extract(j.value, '$." .. k .. "') END"
    end,
    -- member k of j as a number (integer or real)
    rule_num = function(k)
      return "CASE WHEN json_type(j.value, '$." .. k .. "') IN ('integer', 'real') THEN json_extract(j.value, '$."
        .. k .. "') END"
    end,
    -- one row per element of b's document `doc` member `calls` (none when it is not an array)
    calls_each = function(doc)
      return "json_each(CASE WHEN json_type(b." .. doc .. ", '$.calls') = 'array' THEN json_extract(b." .. doc
        .. ", '$.calls') END) AS j"
    end,
    -- top-level text member k of b's document `doc`
    doc_text = function(doc, k)
      return "CASE WHEN json_type(b." .. doc .. ", '$." .. k .. "') = 'text' THEN json_extract(b." .. doc .. ", '$."
        .. k .. "') END"
    end,
    -- top-level number member k of the JSON document in column col, else NULL
    doc_num = function(col, k)
      return "CASE WHEN json_type(" .. col .. ", '$." .. k .. "') IN ('integer', 'real') THEN json_extract(" .. col
        .. ", '$." .. k .. "') END"
    end,
    real = function(expr) return "CAST(" .. expr .. " AS REAL)" end,
    bytewise = function(col) return col end, -- SQLite's default collation is BINARY
    -- the table's columns, generated ones included, in table order
    columns = "SELECT name FROM pragma_table_xinfo('generation_snapshots') ORDER BY cid",
    explain = "EXPLAIN QUERY PLAN ", explain_column = "detail",
    fence = "",
  },
  postgresql = {
    since = "created_at >= now() - CAST(? AS interval)",
    until_ago = "created_at < now() - CAST(? AS interval)",
    since_arg = function(seconds) return string.format("%d seconds", seconds) end,
    at_or_after = "created_at >= CAST(? AS timestamptz)", before = "created_at < CAST(? AS timestamptz)",
    at_arg = function(t) return t .. "+00" end,
    day = "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') COLLATE \"C\"",
    repair_types = "json_array_elements_text(b.repair_metrics -> 'repair_types') AS j(value)",
    rules_each = "json_array_elements(CASE WHEN json_typeof(b.repair_metrics -> 'rules') = 'array'"
      .. " THEN b.repair_metrics -> 'rules' END) AS j(value)",
    rule_int = function(k)
      return "CASE WHEN json_typeof(j.value -> '" .. k .. "') = 'number' AND (j.value ->> '" .. k
        .. "') ~ '^-?[0-9]{1,18}$' THEN (j.value ->> '" .. k .. "')::bigint END"
    end,
    rule_text = function(k)
      return "CASE WHEN json_typeof(j.value -> '" .. k .. "') = 'string' THEN (j.value ->> '" .. k .. "') END"
    end,
    rule_num = function(k)
      return "CASE WHEN json_typeof(j.value -> '" .. k .. "') = 'number' THEN (j.value ->> '" .. k
        .. "')::double precision END"
    end,
    calls_each = function(doc)
      return "json_array_elements(CASE WHEN json_typeof(b." .. doc .. " -> 'calls') = 'array' THEN b." .. doc
        .. " -> 'calls' END) AS j(value)"
    end,
    doc_text = function(doc, k)
      return "CASE WHEN json_typeof(b." .. doc .. " -> '" .. k .. "') = 'string' THEN (b." .. doc .. " ->> '" .. k
        .. "') END"
    end,
    doc_num = function(col, k)
      return "CASE WHEN json_typeof(" .. col .. " -> '" .. k .. "') = 'number' THEN (" .. col .. " ->> '" .. k
        .. "')::double precision END"
    end,
    real = function(expr) return "CAST(" .. expr .. " AS double precision)" end,
    bytewise = function(col) return col .. ' COLLATE "C"' end,
    columns = "SELECT attname AS name FROM pg_attribute WHERE attrelid = 'generation_snapshots'::regclass"
      .. " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    explain = "EXPLAIN ", explain_column = "QUERY PLAN",
    -- ends a subquery that must not be pulled up into its parent: its
    -- columns are then computed once per row (latency's time to first token,
    -- parsed from each row's JSON, is used by two aggregates: pulled up, the
    -- planner computes it once for each, twice the JSON parsing)
    fence = " OFFSET 0",
  },
}
DIALECTS.sqlite.percentiles = sqlite_percentiles
DIALECTS.sqlite.sum_asc = function(col) return "genaudit_sum_ordered(" .. col .. ")" end
DIALECTS.postgresql.percentiles = pg_percentiles
DIALECTS.postgresql.sum_asc = function(col)
  return "sum(CAST(" .. col .. " AS double precision) ORDER BY " .. col .. ")"
end
for _, d in pairs(DIALECTS) do
  d.desc_nulls_last, d.asc_nulls_last = desc_nulls_last, asc_nulls_last
end

-- The dialect of a store (a store without `backend` is SQLite).
local function dialect_of(store)
  local d = DIALECTS[store.backend or "sqlite"]
  if not d then error("genaudit.report: no SQL dialect for backend '" .. tostring(store.backend) .. "'", 3) end
  return d
end

local TABLE = "generation_snapshots"
-- The rows a grouped report read (every group's rows: the sum of the
-- groups' counts), on every result row, without reading them twice.
local COUNTED = "CAST(sum(count(*)) OVER () AS bigint) AS counted_rows"

-- report.dialect(store) -> the SQL pieces of the store's backend (for
-- genaudit.metrics, which aggregates in SQL the same way).
function M.dialect(store) return dialect_of(store) end

-- `by` values -> { output column name, SQL expression }
local GROUPS = {
  cost = {
    template = { "template_id", "template_id" },
    model = { "model_identifier", "model_identifier" },
    platform = { "platform", "platform" },
    org = { "org_id", "org_id" },
    day = { "day", function(SQL) return SQL.day end },
  },
  latency = {
    model = { "model_identifier", "model_identifier" },
    template = { "template_id", "template_id" },
    platform = { "platform", "platform" },
    org = { "org_id", "org_id" },
  },
}
local GROUP_NAMES = { cost = "template, model, platform, org, day", latency = "model, template, platform, org" }
-- the --by of a report that names none
local DEFAULT_BY = { cost = "template", latency = "model" }
local STATUSES = { completed = true, failed = true, all = true }

local UNITS = { m = 60, h = 3600, d = 86400, w = 604800 }

local function fail(msg) return nil, "REPORT: " .. msg, "REPORT" end

local function check_args(name, store, opts)
  if type(store) ~= "table" or type(store.query) ~= "function" then
    error("bad argument #1 to '" .. name .. "' (store expected, got " .. type(store) .. ")", 3)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #2 to '" .. name .. "' (table expected, got " .. type(opts) .. ")", 3)
  end
  return opts or {}
end

-- M.parse_duration("7d") -> seconds | nil, "REPORT: bad duration ...", "REPORT".
-- Accepts a positive integer (at most 9 digits) followed by m, h, d or w.
function M.parse_duration(s)
  local n, unit
  if type(s) == "string" then n, unit = s:match("^(%d+)([mhdw])$") end
  if n and #n <= 9 and tonumber(n) > 0 then return math.floor(tonumber(n)) * UNITS[unit] end
  return fail("bad duration '" .. tostring(s) .. "' (use e.g. 30m, 24h, 7d, 2w)")
end

-- Days from 1970-01-01 to y-m-d (proleptic Gregorian; Howard Hinnant's algorithm).
local function days_from_civil(y, m, d)
  local floor = math.floor
  y = m <= 2 and y - 1 or y
  local era = floor(y / 400)
  local yoe = y - era * 400
  local doy = floor((153 * (m > 2 and m - 3 or m + 9) + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function days_in_month(y, m)
  if m == 2 then return (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)) and 29 or 28 end
  return (m == 4 or m == 6 or m == 9 or m == 11) and 30 or 31
end

-- M.parse_time(s, is_until) -> { ago = seconds } | { at = "YYYY-MM-DD HH:MM:SS" }
-- | nil, "REPORT: bad time ...", "REPORT". A duration (30m, 24h, 7d, 2w) is
-- that long before now; a UTC date or date-time (2026-11-01, 2026-11-01T12:00,
-- 2026-11-01 12:00:00, an optional Z) is that instant, except that a bare
-- date given as an upper bound (is_until) means the end of that day.
function M.parse_time(s, is_until)
  local function bad()
    return fail("bad time '" .. tostring(s) .. "' (use e.g. 30m, 24h, 7d, 2w, 2026-11-01 or 2026-11-01T12:00:00)")
  end
  if type(s) ~= "string" then return bad() end
  if s:match("^%d+[mhdw]$") then
    local secs = M.parse_duration(s)
    if not secs then return bad() end
    return { ago = secs }
  end
  local y, mo, d, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$")
  if not y then return bad() end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  local h, mi, sec = 0, 0, 0
  if rest ~= "" then
    local hh, mm, ss = rest:match("^[T ](%d%d):(%d%d):?(%d*)Z?$")
    if not hh or (ss ~= "" and #ss ~= 2) then return bad() end
    h, mi, sec = tonumber(hh), tonumber(mm), tonumber(ss ~= "" and ss or "0")
  end
  if y < 1970 or mo < 1 or mo > 12 or d < 1 or d > days_in_month(y, mo) or h > 23 or mi > 59 or sec > 59 then
    return bad()
  end
  local days = days_from_civil(y, mo, d)
  if is_until and rest == "" then days = days + 1 end
  local t = days * 86400 + h * 3600 + mi * 60 + sec
  return { at = os.date("!%Y-%m-%d %H:%M:%S", t) }
end

local function id_value(name, v)
  if type(v) == "number" and v % 1 == 0 then return string.format("%d", v) end
  if type(v) == "string" and v ~= "" then return v end
  return nil, "REPORT: " .. name .. " must be a non-empty string or an integer"
end

-- What a report counts unless told otherwise: cost, repairs and latency
-- count completed generations that are not replays; rules counts every
-- generation (a broken rule fails drafts) that is not a replay; list and
-- export show every row.
local COUNTED_DEFAULT = {
  cost = { status = "completed" }, repairs = { status = "completed" }, latency = { status = "completed" },
  rules = { status = "all" }, cost_daily = { status = "completed" }, unpriced = { status = "completed" },
  billing = { status = "all" },
}

-- The status and replays a report counts under opts: { status =
-- "completed"|"failed"|"all", replays = "excluded"|"included" } | nil for
-- list and export (which take opts.status as given, default all, replays
-- included).
local function counted_of(report, opts)
  local d = COUNTED_DEFAULT[report]
  if not d then return nil end
  return { status = opts.status == nil and d.status or opts.status,
           replays = opts.include_replays and "included" or "excluded" }
end

-- The WHERE clause for the shared filters (since, until, org, template,
-- status, and for a report the replays) and its bound parameters, or nil,
-- err, code. Every condition starts with its column, so `prefix` ("b.")
-- qualifies them for a join. counted: counted_of(...) (nil: opts.status as
-- given, replays included).
local function filters(opts, SQL, prefix, counted)
  local conds, params = {}, {}
  if opts.include_replays ~= nil and type(opts.include_replays) ~= "boolean" then
    return fail("include_replays must be a boolean, got '" .. tostring(opts.include_replays) .. "'")
  end
  local status = opts.status
  if counted then status = counted.status end
  if opts.org ~= nil then
    local v, err = id_value("org", opts.org)
    if not v then return nil, err, "REPORT" end
    conds[#conds + 1] = "org_id = ?"
    params[#params + 1] = v
  end
  if opts.template ~= nil then
    local v, err = id_value("template", opts.template)
    if not v then return nil, err, "REPORT" end
    conds[#conds + 1] = "template_id = ?"
    params[#params + 1] = v
  end
  if status ~= nil and status ~= "all" then
    if not STATUSES[status] then
      return fail("unknown status '" .. tostring(status) .. "' (use completed, failed or all)")
    end
    conds[#conds + 1] = "status = ?"
    params[#params + 1] = status
  end
  if counted and counted.replays == "excluded" then conds[#conds + 1] = "replay_of IS NULL" end
  for _, bound in ipairs({ "since", "until" }) do
    if opts[bound] ~= nil then
      local t, err, code = M.parse_time(opts[bound], bound == "until")
      if not t then return nil, err, code end
      if t.ago then
        conds[#conds + 1] = bound == "since" and SQL.since or SQL.until_ago
        params[#params + 1] = SQL.since_arg(t.ago)
      else
        conds[#conds + 1] = bound == "since" and SQL.at_or_after or SQL.before
        params[#params + 1] = SQL.at_arg(t.at)
      end
    end
  end
  if prefix then
    for i, c in ipairs(conds) do conds[i] = prefix .. c end
  end
  local where = #conds > 0 and (" WHERE " .. table.concat(conds, " AND ")) or ""
  return where, params
end

local function group_of(report, by, SQL)
  if by == nil then by = DEFAULT_BY[report] end
  local g = GROUPS[report][by]
  if not g then
    return fail("unknown --by column '" .. tostring(by) .. "' for " .. report .. " (use " .. GROUP_NAMES[report] .. ")")
  end
  if type(g[2]) == "function" then return { g[1], g[2](SQL) } end
  return g
end

-- Each builder returns sql, params, columns, fold (optional row post-processing)
-- or nil, err, code.
local builders = {}

-- Costs are read from estimated_cost_picousd (integer picodollars) and
-- summed in SQL, exactly; the sum and the percentiles come back as decimal
-- text (no VM rounds them on the way) and are converted to USD once, with
-- core.usd_from_picousd: total_cost is the double nearest to the exact sum,
-- avg_cost = total_cost / priced_posts, so both stores give the same digits.
local function usd(pico) if pico ~= nil then return core.usd_from_picousd(pico) end end

function builders.cost(opts, SQL)
  local g, err, code = group_of("cost", opts.by, SQL)
  if not g then return nil, err, code end
  local where, params
  where, params, code = filters(opts, SQL, nil, counted_of("cost", opts))
  if not where then return nil, params, code end
  local name = g[1]
  local sql = "WITH base AS (SELECT " .. g[2] .. " AS grp, estimated_cost_picousd AS cost, total_tokens AS tokens FROM "
    .. TABLE .. where .. ")"
    .. " SELECT grp AS " .. name .. ", count(*) AS posts, count(cost) AS priced_posts,"
    .. " CAST(sum(cost) AS TEXT) AS total_pico, " .. SQL.percentiles("cost", { 50, 95 }) .. " AS pcts,"
    .. " sum(tokens) AS total_tokens, " .. SQL.real("sum(tokens)") .. " / count(tokens) AS avg_tokens,"
    .. " " .. COUNTED .. " FROM base GROUP BY grp ORDER BY " .. SQL.desc_nulls_last("sum(cost)") .. ", "
    .. SQL.asc_nulls_last("grp")
  local function fold(rows)
    for _, r in ipairs(rows) do
      split_percentiles(r, "pcts", { "p50_pico", "p95_pico" }, true)
      r.total_cost, r.p50_cost, r.p95_cost = usd(r.total_pico), usd(r.p50_pico), usd(r.p95_pico)
      if r.total_cost ~= nil then r.avg_cost = r.total_cost / r.priced_posts end
      r.total_pico, r.p50_pico, r.p95_pico = nil, nil, nil
    end
    return rows
  end
  return sql, params, { name, "posts", "priced_posts", "total_cost", "avg_cost", "p50_cost", "p95_cost",
    "total_tokens", "avg_tokens" }, fold
end

-- Cost per template per day (UTC), oldest day first, templates bytewise
-- within a day: posts, priced_posts and the exact total_cost (picodollars
-- summed in SQL, converted once), as builders.cost counts them.
function builders.cost_daily(opts, SQL)
  local where, params, code = filters(opts, SQL, nil, counted_of("cost_daily", opts))
  if not where then return nil, params, code end
  local sql = "WITH base AS (SELECT template_id, " .. SQL.day .. " AS day, estimated_cost_picousd AS cost FROM "
    .. TABLE .. where .. ")"
    .. " SELECT day, template_id, count(*) AS posts, count(cost) AS priced_posts,"
    .. " CAST(sum(cost) AS TEXT) AS total_pico, (SELECT count(*) FROM base) AS counted_rows"
    .. " FROM base GROUP BY day, template_id ORDER BY day, " .. SQL.bytewise("template_id") .. " NULLS LAST"
  local function fold(rows)
    for _, r in ipairs(rows) do
      r.total_cost, r.total_pico = usd(r.total_pico), nil
    end
    return rows
  end
  return sql, params, { "day", "template_id", "posts", "priced_posts", "total_cost" }, fold
end

-- The counted generations whose cost is unknown (estimated_cost NULL), per
-- template, model and token_metrics.cost_source (why: unpriced, no_usage,
-- ...), most first: the posts the cost report leaves out of its sums.
function builders.unpriced(opts, SQL)
  local where, params, code = filters(opts, SQL, "b.", counted_of("unpriced", opts))
  if not where then return nil, params, code end
  local source = SQL.doc_text("token_metrics", "cost_source")
  -- one row even when every cost is known (counted_rows: the rows read); fold drops it
  local sql = "WITH base AS (SELECT b.template_id, b.model_identifier, b.estimated_cost_picousd AS cost, " .. source
    .. " AS cost_source FROM " .. TABLE .. " b" .. where .. "),"
    .. " agg AS (SELECT template_id, model_identifier, cost_source, count(*) AS unpriced_posts FROM base"
    .. " WHERE cost IS NULL GROUP BY template_id, model_identifier, cost_source)"
    .. " SELECT agg.template_id, agg.model_identifier, agg.cost_source, agg.unpriced_posts,"
    .. " (SELECT count(*) FROM base) AS counted_rows FROM (SELECT 1 AS one) x LEFT JOIN agg ON 1 = 1"
    .. " ORDER BY agg.unpriced_posts DESC, " .. SQL.bytewise("agg.template_id") .. " NULLS LAST, "
    .. SQL.bytewise("agg.model_identifier") .. " NULLS LAST, " .. SQL.bytewise("agg.cost_source") .. " NULLS LAST"
  local function fold(rows)
    local out = {}
    for _, r in ipairs(rows) do
      if r.unpriced_posts ~= nil then out[#out + 1] = r end
    end
    return out
  end
  return sql, params, { "template_id", "model_identifier", "cost_source", "unpriced_posts" }, fold
end

-- report repairs --by rule_set: repair_metrics.scripts.rule_set_digest of a
-- row, per dialect (rows written without it group as 'unknown', which no
-- 64-hex digest equals).
local RULE_SET_DIGEST = {
  [DIALECTS.sqlite] = "json_extract(repair_metrics, '$.scripts.rule_set_digest')",
  [DIALECTS.postgresql] = "(repair_metrics -> 'scripts' ->> 'rule_set_digest')",
}

-- The repairs report grouped by rule set instead of template: the same
-- figures per rule_set_digest, plus when each rule set was first and last
-- seen, so the effect of a rule change shows as two lines.
local function repairs_by_rule_set(opts, SQL, top)
  local where, params, code = filters(opts, SQL, nil, counted_of("repairs", opts))
  if not where then return nil, params, code end
  params[#params + 1] = math.floor(top)
  local sql = "WITH base AS (SELECT coalesce(" .. RULE_SET_DIGEST[SQL] .. ", 'unknown') AS grp, created_at,"
    .. " repair_count, initial_validation_score, repair_metrics FROM " .. TABLE .. where .. "),"
    .. " top AS (SELECT grp, coalesce(sum(repair_count), 0) AS repairs, count(*) AS posts,"
    .. " count(CASE WHEN repair_count > 0 THEN 1 END) AS repaired_posts,"
    .. " " .. SQL.sum_asc("initial_validation_score") .. " / count(initial_validation_score) AS avg_initial_score,"
    .. " min(created_at) AS first_created_at, max(created_at) AS last_created_at, " .. COUNTED
    .. " FROM base GROUP BY grp"
    .. " ORDER BY repairs DESC, " .. SQL.bytewise("grp") .. " LIMIT ?),"
    .. " types AS (SELECT b.grp, j.value AS slug, count(*) AS n FROM base b JOIN top t ON t.grp = b.grp, "
    .. SQL.repair_types .. " WHERE b.repair_count > 0 GROUP BY b.grp, j.value),"
    .. " ranked AS (SELECT grp, slug, n, row_number() OVER (PARTITION BY grp ORDER BY n DESC, "
    .. SQL.bytewise("slug") .. ") AS r FROM types)"
    .. " SELECT t.grp AS rule_set_digest, t.repairs, t.posts, t.repaired_posts, "
    .. SQL.real("t.repaired_posts") .. " / t.posts AS repair_rate, t.avg_initial_score, t.first_created_at,"
    .. " t.last_created_at, k.slug, k.n, t.counted_rows"
    .. " FROM top t LEFT JOIN ranked k ON k.grp = t.grp AND k.r <= 3"
    .. " ORDER BY t.repairs DESC, " .. SQL.bytewise("t.grp") .. ", k.r"
  local columns = { "rule_set_digest", "repairs", "posts", "repaired_posts", "repair_rate", "avg_initial_score",
    "top_repair_types", "first_created_at", "last_created_at" }
  local function fold(rows)
    local out, last = {}, nil
    for _, r in ipairs(rows) do
      if not last or last.rule_set_digest ~= r.rule_set_digest then
        last = { top_repair_types = {} }
        for _, c in ipairs(columns) do
          if c ~= "top_repair_types" then last[c] = r[c] end
        end
        out[#out + 1] = last
      end
      if r.slug ~= nil then last.top_repair_types[tostring(r.slug)] = r.n end
    end
    return out
  end
  return sql, params, columns, fold
end

-- One statement (one 'now'): the top templates, each joined to its up-to-3
-- most common repair types; fold() turns the 1..3 rows per template into one.
-- by = "rule_set" groups by repair_metrics.scripts.rule_set_digest instead.
function builders.repairs(opts, SQL)
  local top = opts.top == nil and 3 or opts.top
  if type(top) ~= "number" or top % 1 ~= 0 or top < 1 or top > 1e9 then
    return fail("top must be a positive integer, got '" .. tostring(opts.top) .. "'")
  end
  if opts.by == "rule_set" then return repairs_by_rule_set(opts, SQL, top) end
  if opts.by ~= nil and opts.by ~= "template" then
    return fail("unknown --by column '" .. tostring(opts.by) .. "' for repairs (use template, rule_set)")
  end
  local counted = counted_of("repairs", opts)
  local where, params, code = filters(opts, SQL, nil, counted)
  if not where then return nil, params, code end
  local bwhere = filters(opts, SQL, "b.", counted) -- the same filter, on the joined table
  local n_filter = #params
  params[#params + 1] = math.floor(top)
  for i = 1, n_filter do params[#params + 1] = params[i] end -- the filter again, for `types`
  -- base reads only indexed columns (snapshots_time_template covers them); the
  -- JSON of repair_types is read only for repaired rows of the top templates
  local sql = "WITH base AS (SELECT template_id, repair_count, initial_validation_score FROM "
    .. TABLE .. where .. "),"
    .. " top AS (SELECT template_id, coalesce(sum(repair_count), 0) AS repairs, count(*) AS posts,"
    .. " count(CASE WHEN repair_count > 0 THEN 1 END) AS repaired_posts,"
    .. " " .. SQL.sum_asc("initial_validation_score") .. " / count(initial_validation_score) AS avg_initial_score, "
    .. COUNTED .. " FROM base GROUP BY template_id"
    .. " ORDER BY repairs DESC, template_id LIMIT ?),"
    .. " types AS (SELECT b.template_id, j.value AS slug, count(*) AS n FROM " .. TABLE .. " b"
    .. " JOIN top t ON t.template_id = b.template_id, " .. SQL.repair_types
    .. (bwhere ~= "" and (bwhere .. " AND") or " WHERE") .. " b.repair_count > 0"
    .. " GROUP BY b.template_id, j.value),"
    .. " ranked AS (SELECT template_id, slug, n, row_number() OVER (PARTITION BY template_id ORDER BY n DESC, "
    .. SQL.bytewise("slug") .. ")"
    .. " AS r FROM types)"
    .. " SELECT t.template_id, t.repairs, t.posts, t.repaired_posts, "
    .. SQL.real("t.repaired_posts") .. " / t.posts AS repair_rate, t.avg_initial_score, k.slug, k.n,"
    .. " t.counted_rows"
    .. " FROM top t LEFT JOIN ranked k ON k.template_id = t.template_id AND k.r <= 3"
    .. " ORDER BY t.repairs DESC, t.template_id, k.r"
  local function fold(rows)
    local out, last = {}, nil
    for _, r in ipairs(rows) do
      if not last or last.template_id ~= r.template_id then
        last = { template_id = r.template_id, repairs = r.repairs, posts = r.posts, repaired_posts = r.repaired_posts,
                 repair_rate = r.repair_rate, avg_initial_score = r.avg_initial_score, top_repair_types = {} }
        out[#out + 1] = last
      end
      if r.slug ~= nil then last.top_repair_types[tostring(r.slug)] = r.n end
    end
    return out
  end
  return sql, params, { "template_id", "repairs", "posts", "repaired_posts", "repair_rate", "avg_initial_score",
    "top_repair_types" }, fold
end

function builders.latency(opts, SQL)
  local g, err, code = group_of("latency", opts.by, SQL)
  if not g then return nil, err, code end
  local where, params
  where, params, code = filters(opts, SQL, nil, counted_of("latency", opts))
  if not where then return nil, params, code end
  -- f: time to first token, of streamed generations only (NULL for the others)
  local measures = { { "t", "total" }, { "p", "provider" }, { "o", "overhead" }, { "f", "ttft" } }
  local picks, columns, names = {}, { g[1], "posts" }, {}
  for _, m in ipairs(measures) do
    picks[#picks + 1] = SQL.percentiles(m[1], { 50, 95, 99 }) .. " AS pct_" .. m[1]
    names[m[1]] = {}
    for _, p in ipairs({ 50, 95, 99 }) do
      local col = "p" .. p .. "_" .. m[2] .. "_ms"
      names[m[1]][#names[m[1]] + 1] = col
      columns[#columns + 1] = col
    end
  end
  columns[#columns + 1] = "streamed"
  local sql = "WITH base AS (SELECT " .. g[2] .. " AS grp, total_latency_ms AS t, provider_latency_ms AS p,"
    .. " total_latency_ms - provider_latency_ms AS o, "
    .. SQL.doc_num("performance_metrics", "time_to_first_token_ms") .. " AS f FROM " .. TABLE .. where .. SQL.fence
    .. ")"
    .. " SELECT grp AS " .. g[1] .. ", count(*) AS posts, " .. table.concat(picks, ", ") .. ", count(f) AS streamed, "
    .. COUNTED .. " FROM base GROUP BY grp ORDER BY " .. SQL.asc_nulls_last("grp")
  local function fold(rows)
    for _, r in ipairs(rows) do
      for _, m in ipairs(measures) do split_percentiles(r, "pct_" .. m[1], names[m[1]]) end
    end
    return rows
  end
  return sql, params, columns, fold
end

-- Per rule slug, from repair_metrics.rules (one element per rule that judged
-- the generation's drafts: runs, fired, errors, timeouts): the snapshots it
-- judged and the sums. Rows without repair_metrics.rules (written before it)
-- are not counted for any rule; a count missing from an element is unknown,
-- so a sum of unknowns is NULL, never 0.
function builders.rules(opts, SQL)
  local counted = counted_of("rules", opts)
  local bwhere, params, code = filters(opts, SQL, "b.", counted)
  if not bwhere then return nil, params, code end
  local where, params2 = filters(opts, SQL, nil, counted)
  for _, v in ipairs(params2) do params[#params + 1] = v end -- the filter again, for counted_rows
  local slug = SQL.bytewise(SQL.rule_text("slug"))
  local sums = {}
  for _, k in ipairs({ "runs", "fired", "errors", "timeouts" }) do
    sums[#sums + 1] = "sum(" .. SQL.rule_int(k) .. ") AS " .. k
  end
  -- one row even when no rule matched (counted_rows: the rows read, rules or not); fold drops it
  local sql = "WITH agg AS (SELECT " .. slug .. " AS slug, count(DISTINCT b.id) AS snapshots, "
    .. table.concat(sums, ", ") .. " FROM " .. TABLE .. " b, " .. SQL.rules_each .. bwhere
    .. " GROUP BY " .. slug .. ")"
    .. " SELECT agg.slug, agg.snapshots, agg.runs, agg.fired, agg.errors, agg.timeouts,"
    .. " (SELECT count(*) FROM " .. TABLE .. where .. ") AS counted_rows"
    .. " FROM (SELECT 1 AS one) x LEFT JOIN agg ON 1 = 1 ORDER BY " .. SQL.asc_nulls_last("agg.slug")
  local function fold(rows)
    local out = {}
    for _, r in ipairs(rows) do
      if r.snapshots ~= nil then out[#out + 1] = r end
    end
    return out
  end
  return sql, params, { "slug", "snapshots", "runs", "fired", "errors", "timeouts" }, fold
end

-- Per provider (performance_metrics.provider) and model (each call's
-- served_model, else the model it was priced as): how the billed input
-- tokens (the call's prompt_tokens as the provider reported them) compare
-- with the local count of the prompt sent (local_input_tokens, genaudit.tokens).
-- A call is compared when it has both and its usage is the provider's (not
-- usage_source "estimated", whose prompt_tokens is the local count itself).
-- calls: every call of the group; compared, differing (billed ~= local),
-- billed/local input token sums and their difference over compared calls,
-- mean_diff, max_over (largest billed - local), max_under (smallest),
-- estimated (calls whose usage was filled from local counts).
function builders.billing(opts, SQL)
  local counted = counted_of("billing", opts)
  local bwhere, params, code = filters(opts, SQL, "b.", counted)
  if not bwhere then return nil, params, code end
  local where, params2 = filters(opts, SQL, nil, counted)
  for _, v in ipairs(params2) do params[#params + 1] = v end -- the filter again, for counted_rows
  local k = "billed IS NOT NULL AND loc IS NOT NULL AND (src IS NULL OR src <> 'estimated')"
  local sql = "WITH c AS (SELECT " .. SQL.bytewise(SQL.doc_text("performance_metrics", "provider")) .. " AS provider, "
    .. SQL.bytewise("coalesce(" .. SQL.rule_text("served_model") .. ", " .. SQL.rule_text("model") .. ")")
    .. " AS model, "
    .. SQL.rule_int("prompt_tokens") .. " AS billed, " .. SQL.rule_int("local_input_tokens") .. " AS loc, "
    .. SQL.rule_text("usage_source") .. " AS src FROM " .. TABLE .. " b, " .. SQL.calls_each("token_metrics") .. bwhere
    .. "), agg AS (SELECT provider, model, count(*) AS calls,"
    .. " count(CASE WHEN " .. k .. " THEN 1 END) AS compared,"
    .. " count(CASE WHEN " .. k .. " AND billed <> loc THEN 1 END) AS differing,"
    .. " sum(CASE WHEN " .. k .. " THEN billed END) AS billed_input_tokens,"
    .. " sum(CASE WHEN " .. k .. " THEN loc END) AS local_input_tokens,"
    .. " sum(CASE WHEN " .. k .. " THEN billed - loc END) AS diff_tokens,"
    .. " max(CASE WHEN " .. k .. " THEN billed - loc END) AS max_over,"
    .. " min(CASE WHEN " .. k .. " THEN billed - loc END) AS max_under,"
    .. " count(CASE WHEN src = 'estimated' THEN 1 END) AS estimated FROM c GROUP BY provider, model)"
    .. " SELECT agg.*, (SELECT count(*) FROM " .. TABLE .. where .. ") AS counted_rows"
    .. " FROM (SELECT 1 AS one) x LEFT JOIN agg ON 1 = 1 ORDER BY " .. SQL.asc_nulls_last("agg.provider") .. ", "
    .. SQL.asc_nulls_last("agg.model")
  local function fold(rows)
    local out = {}
    for _, r in ipairs(rows) do
      if r.calls ~= nil then
        r.one = nil
        if r.compared > 0 then
          r.differing_pct = 100 * r.differing / r.compared
          r.mean_diff = r.diff_tokens / r.compared
        end
        out[#out + 1] = r
      end
    end
    return out
  end
  return sql, params, { "provider", "model", "calls", "compared", "differing", "differing_pct", "billed_input_tokens",
    "local_input_tokens", "diff_tokens", "mean_diff", "max_over", "max_under", "estimated" }, fold
end

-- " LIMIT ?" and its parameter for opts.limit (default: `default`, nil = none)
local function limit_of(opts, default, params)
  local n = opts.limit
  if n == nil then n = default end
  if n == nil then return "" end
  if type(n) == "string" then n = tonumber(n) or n end
  if type(n) ~= "number" or n % 1 ~= 0 or n < 1 or n > 1e9 then
    return nil, "REPORT: limit must be a positive integer, got '" .. tostring(opts.limit) .. "'"
  end
  params[#params + 1] = math.floor(n)
  return " LIMIT ?"
end

-- Every row, oldest first (created_at is the leading column of the time index).
function builders.export(opts, SQL)
  if opts.format ~= "jsonl" and opts.format ~= "csv" then
    return fail("unknown export format '" .. tostring(opts.format) .. "' (use jsonl or csv)")
  end
  local where, params, code = filters(opts, SQL)
  if not where then return nil, params, code end
  local limit, err = limit_of(opts, nil, params)
  if not limit then return nil, err, "REPORT" end
  return "SELECT * FROM " .. TABLE .. where .. " ORDER BY created_at, id" .. limit, params
end

-- The newest snapshots first, one line each, to find ids.
function builders.list(opts, SQL)
  local where, params, code = filters(opts, SQL)
  if not where then return nil, params, code end
  local limit, err = limit_of(opts, 20, params)
  if not limit then return nil, err, "REPORT" end
  return "SELECT id, created_at, template_id, status, estimated_cost, repair_count FROM " .. TABLE .. where
    .. " ORDER BY created_at DESC, id DESC" .. limit, params,
    { "id", "created_at", "template_id", "status", "estimated_cost", "repair_count" }
end

local function run(name, store, opts)
  opts = check_args(name, store, opts)
  local sql, params, columns, fold = builders[name](opts, dialect_of(store))
  if not sql then return nil, params, columns end
  local rows, err, code = store:query(sql, params)
  if not rows then return nil, err, code end
  local counted = counted_of(name, opts)
  if counted then -- every row carries the same count of the rows the report read
    counted.rows = rows[1] and rows[1].counted_rows or 0
    for _, r in ipairs(rows) do r.counted_rows = nil end
  end
  return { columns = columns, rows = fold and fold(rows) or rows, counted = counted }
end

-- Every report and list take the filters since, until (30m, 24h, 7d, 2w
-- before now, or a UTC date / date-time: see parse_time), org, template and
-- status ("completed", "failed" or "all"). The reports (cost, repairs,
-- latency, rules) also take include_replays (boolean): by default they leave
-- out replays (replay_of set), and cost, repairs and latency count only
-- status "completed" (rules: "all"). Their result says what it counted:
-- result.counted = { status = "completed"|"failed"|"all", replays =
-- "excluded"|"included", rows = <rows read> }. list and export take status
-- as given (default all) and show replays.

-- M.cost(store, { by = "template", <filters>, include_replays }) -> result | nil, err, code.
-- Per group: posts, priced_posts (rows with a known cost), total/avg/p50/p95
-- of the cost over priced rows only (a NULL cost is unknown, not 0; summed
-- exactly in integer picodollars, see builders.cost), total/avg tokens.
function M.cost(store, opts) return run("cost", store, opts) end

-- M.repairs(store, { top = 3, by = "template", <filters>, include_replays }) -> result | nil, err, code.
-- Templates by summed repair_count (ties by template_id), with the share of
-- repaired posts, the mean initial score and the 3 most common repair types
-- (top_repair_types: { slug = count }). by = "rule_set": the same per
-- repair_metrics.scripts.rule_set_digest ("unknown" for rows without one),
-- with first_created_at and last_created_at of each rule set.
function M.repairs(store, opts) return run("repairs", store, opts) end

-- M.latency(store, { by = "model", <filters>, include_replays }) -> result | nil, err, code.
-- Per group (model, template, platform or org): p50/p95/p99 of total,
-- provider and overhead (total - provider) ms.
function M.latency(store, opts) return run("latency", store, opts) end

-- M.rules(store, { <filters>, include_replays }) -> result | nil, err, code.
-- Per rule slug (bytewise order): snapshots (generations it judged), runs
-- (drafts it judged), fired, errors, timeouts — summed from
-- repair_metrics.rules. Counts every status by default (a broken rule fails
-- drafts: those generations are the ones to see), replays excluded.
function M.rules(store, opts) return run("rules", store, opts) end

-- M.cost_daily(store, { <filters>, include_replays }) -> result | nil, err, code.
-- Per UTC day and template (oldest day first): posts, priced_posts and the
-- exact total_cost of the priced ones, counted as M.cost counts.
function M.cost_daily(store, opts) return run("cost_daily", store, opts) end

-- M.unpriced(store, { <filters>, include_replays }) -> result | nil, err, code.
-- The counted generations without a known cost, per template_id,
-- model_identifier and cost_source (unpriced_posts, most first); counted as
-- M.cost counts, so its unpriced_posts add up to posts - priced_posts there.
function M.unpriced(store, opts) return run("unpriced", store, opts) end

-- M.billing(store, { <filters>, include_replays }) -> result | nil, err, code.
-- Per provider and model: billed input tokens against the local count of
-- the prompt sent (see builders.billing). Counts every status by default
-- (a failed generation's calls were billed too), replays excluded.
function M.billing(store, opts) return run("billing", store, opts) end

-- M.list(store, { limit = 20, <filters> }) -> result | nil, err, code: the
-- newest snapshots (id, created_at, template_id, status, estimated_cost,
-- repair_count), newest first.
function M.list(store, opts) return run("list", store, opts) end

-- M.validate(report, opts) -> true | nil, "REPORT: ...", "REPORT": checks the
-- options of a report ("cost", "repairs", "latency", "rules", "list", "export") without a store.
function M.validate(report, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #2 to 'validate' (table expected, got " .. type(opts) .. ")", 2)
  end
  if not builders[report] then return fail("unknown report '" .. tostring(report) .. "'") end
  local sql, err, code = builders[report](opts or {}, DIALECTS.sqlite)
  if not sql then return nil, err, code end
  return true
end

-- M.explain(store, report, opts) -> the EXPLAIN QUERY PLAN details of the
-- statement of that report ("cost", "repairs", "latency", "rules", "export"), one per
-- line | nil, err, code.
function M.explain(store, report, opts)
  opts = check_args("explain", store, opts)
  if not builders[report] then return fail("unknown report '" .. tostring(report) .. "'") end
  local SQL = dialect_of(store)
  local sql, params, code = builders[report](opts, SQL)
  if not sql then return nil, params, code end
  local rows, err
  rows, err, code = store:query(SQL.explain .. sql, params)
  if not rows then return nil, err, code end
  local lines = {}
  for _, r in ipairs(rows) do lines[#lines + 1] = r[SQL.explain_column] end
  return table.concat(lines, "\n")
end

-- M.columns(store) -> the snapshot table's column names in table order
-- (generated columns included) | nil, err, code.
function M.columns(store)
  check_args("columns", store)
  local rows, err, code = store:query(dialect_of(store).columns, {})
  if not rows then return nil, err, code end
  local names = {}
  for i, r in ipairs(rows) do names[i] = r.name end
  return names
end

-- M.show(store, id) -> row (every column; NULLs absent), columns | nil,
-- "NOT_FOUND: no snapshot with id 'X'", "NOT_FOUND".
-- Ids are ULIDs, upper case; a lower-case one (typed by hand) is the same id.
function M.show(store, id)
  check_args("show", store)
  if type(id) ~= "string" then error("bad argument #2 to 'show' (string expected, got " .. type(id) .. ")", 2) end
  local rows, err, code = store:query("SELECT * FROM " .. TABLE .. " WHERE id = ?",
    { id:match("^%w+$") and id:upper() or id })
  if not rows then return nil, err, code end
  if not rows[1] then return nil, "NOT_FOUND: no snapshot with id '" .. id .. "'", "NOT_FOUND" end
  return rows[1], M.columns(store)
end

-- ---- output encodings: genaudit.format (kept here under their old names) ----

M.json_value, M.json_object, M.report_value = format.json_value, format.json_object, format.report_value
M.to_json, M.csv_field, M.csv_record = format.json, format.csv_field, format.csv_record

-- M.export(store, { format = "jsonl"|"csv", limit, <filters>, out, progress })
-- -> rows written | nil, err, code. Streams rows with store:each (constant
-- memory), oldest first; out is a file handle, or anything whose :write(s)
-- returns a true value on success and nil, err on failure (which raises).
-- progress(done, total), when given, is called every 1000 rows and at the
-- end (total: the rows matching when the export started).
function M.export(store, opts)
  opts = check_args("export", store, opts)
  local sql, params, code = builders.export(opts, dialect_of(store))
  if not sql then return nil, params, code end
  local out = opts.out
  if out == nil or (type(out) ~= "table" and type(out) ~= "userdata") then
    error("bad argument #2 to 'export' (out: file handle expected, got " .. type(out) .. ")", 2)
  end
  local columns, err
  columns, err, code = M.columns(store)
  if not columns then return nil, err, code end
  local function put(s)
    local ok, werr = out:write(s)
    if not ok then error("export: write failed: " .. tostring(werr), 0) end
  end
  local total
  if opts.progress then
    local counted
    counted, err, code = store:query("SELECT count(*) AS n FROM (" .. sql .. ") AS x", params)
    if not counted then return nil, err, code end
    total = counted[1].n
  end
  local record
  if opts.format == "csv" then
    local header = {}
    for _, c in ipairs(columns) do header[c] = c end
    put(format.csv_record(header, columns))
    record = function(row) put(format.csv_record(row, columns)) end
  else
    record = function(row) put(format.json_object(row, columns, true) .. "\n") end
  end
  local done = 0
  local each_row = record
  if opts.progress then
    local progress = opts.progress
    each_row = function(row)
      record(row)
      done = done + 1
      if done % 1000 == 0 then progress(done, total) end
    end
  end
  local n
  n, err, code = store:each(sql, params, each_row)
  if not n then return nil, err, code end
  if opts.progress then opts.progress(n, total) end
  return n
end

return M
