-- spec/report_aggregates_spec.lua
-- Owns: the SQLite aggregate functions genaudit_percentiles and
-- genaudit_sum_ordered (csrc/ga_sqlagg.c), their PostgreSQL counterparts in
-- genaudit.report's dialect (a sorted array_agg, sum(... ORDER BY ...)), the
-- reports built on them (cost, latency, repairs: the same numbers on both
-- stores), and the SQL-function path of audit.verify() on SQLite
-- (genaudit_record_hash, payload statuses computed in SQL: csrc/ga_store.c).
-- Every expected answer is brute force in Lua over the same values: sort,
-- take rank ceil(p * n / 100), add up in ascending order.
local genaudit = require("genaudit")
local core = require("genaudit.core")
local report = require("genaudit.report")
local pg = require("spec.support.pg")
local stores = require("spec.support.stores")
local tmp = require("spec.support.tmp")
local util = require("spec.support.util")
local q = util.q

-- ---- brute force ----

-- The rank ceil(p * n / 100) (1-based), in exact integer steps.
local function rank(p, n)
  local r = math.floor(p * n / 100)
  if r * 100 < p * n then r = r + 1 end
  return r
end

-- Values are { v = number, real = boolean } (real: stored as a REAL), or
-- false for NULL. Returns the non-NULL ones, ascending, and whether any is real.
local function non_null_sorted(vals)
  local out, any_real = {}, false
  for _, x in ipairs(vals) do
    if x then
      out[#out + 1] = x.v
      any_real = any_real or x.real
    end
  end
  table.sort(out)
  return out, any_real
end

local function fmt_real(v) return string.format("%.17g", v) end
local function fmt_int(v) return string.format("%d", v) end

-- What genaudit_percentiles(x, ps...) must answer for vals: "v1,v2,..." or nil.
local function expect_pcts(vals, ps)
  local s, any_real = non_null_sorted(vals)
  if #s == 0 then return nil end
  local parts = {}
  for i, p in ipairs(ps) do
    local v = s[rank(p, #s)]
    parts[i] = any_real and fmt_real(v) or fmt_int(v)
  end
  return table.concat(parts, ",")
end

-- The non-NULL values added up in ascending order, as doubles (nil: none).
local function expect_sum(vals)
  local s = non_null_sorted(vals)
  if #s == 0 then return nil end
  local sum = 0.0
  for _, v in ipairs(s) do sum = sum + (v + 0.0) end
  return sum
end

-- JSON text of vals for json_each / json_array_elements: a real always with
-- a point or an exponent (so SQLite reads it as a REAL), NULL as null.
local function json_of(vals)
  local parts = {}
  for i, x in ipairs(vals) do
    if not x then
      parts[i] = "null"
    elseif x.real then
      local s = fmt_real(x.v)
      if not s:find("[.eEn]") then s = s .. ".0" end
      parts[i] = s
    else
      parts[i] = fmt_int(x.v)
    end
  end
  return "[" .. table.concat(parts, ",") .. "]"
end

local function ints(list)
  local out = {}
  for i, v in ipairs(list) do out[i] = { v = v } end
  return out
end
local function reals(list)
  local out = {}
  for i, v in ipairs(list) do out[i] = { v = v, real = true } end
  return out
end

-- Percentile lists: every p from 1 to 100 in chunks of at most 16, ascending,
-- then the same chunks in a shuffled (non-ascending) order.
local P_CHUNKS = {}
do
  local rnd = util.lcg(7)
  local all = {}
  for p = 1, 100 do all[p] = p end
  for i = 1, 100, 16 do
    local c = {}
    for p = i, math.min(i + 15, 100) do c[#c + 1] = p end
    P_CHUNKS[#P_CHUNKS + 1] = c
  end
  for i = 100, 2, -1 do
    local j = rnd.int(1, i)
    all[i], all[j] = all[j], all[i]
  end
  for i = 1, 100, 16 do
    local c = {}
    for k = i, math.min(i + 15, 100) do c[#c + 1] = all[k] end
    P_CHUNKS[#P_CHUNKS + 1] = c
  end
  P_CHUNKS[#P_CHUNKS + 1] = { 95, 50 }
  P_CHUNKS[#P_CHUNKS + 1] = { 100, 1, 100, 1 }
  P_CHUNKS[#P_CHUNKS + 1] = { 50, 50, 49, 51 }
end
local P_FEW = { { 50, 95 }, { 50, 95, 99 }, { 99, 95, 50 }, { 1, 100 } }

-- Input shapes, n values each (ints unless real): quickselect's bad cases
-- (sorted, reverse, all equal, organ pipe, few distinct, sawtooth) and random.
local function shapes(n, seed)
  local rnd = util.lcg(seed)
  local list = {}
  local function add(name, f, real)
    local v = {}
    for i = 1, n do v[i] = f(i) end
    list[#list + 1] = { name = name .. " n=" .. n, vals = real and reals(v) or ints(v) }
  end
  add("random", function() return rnd.int(-1000000, 1000000) end)
  add("random duplicates", function() return rnd.int(-3, 3) end)
  add("sorted", function(i) return i end)
  add("reverse-sorted", function(i) return n - i end)
  add("all equal", function() return 42 end)
  add("organ pipe", function(i) return i <= n / 2 and i or n - i end)
  add("sawtooth", function(i) return i % 7 end)
  add("negative reals", function() return -rnd.int(1, 1000000) / 7 end, true)
  add("sorted reals", function(i) return i / 3 end, true)
  local mixed = {}
  for i = 1, n do
    mixed[i] = rnd.int(1, 2) == 1 and { v = rnd.int(-500, 500) } or { v = rnd.int(-500000, 500000) / 1000, real = true }
  end
  list[#list + 1] = { name = "mixed integers and reals n=" .. n, vals = mixed }
  local holes = {}
  for i = 1, n do holes[i] = rnd.int(1, 3) ~= 1 and { v = rnd.int(0, 99) } or false end
  list[#list + 1] = { name = "with NULLs n=" .. n, vals = holes }
  return list
end

local SIZES = { 1, 2, 3, 100, 1000 }
do
  local rnd = util.lcg(4242)
  for _ = 1, 6 do SIZES[#SIZES + 1] = rnd.int(4, 2500) end
end

-- "a,b" -> { "a", "b" }
local function split(s)
  local out = {}
  for part in tostring(s):gmatch("[^,]+") do out[#out + 1] = part end
  return out
end

-- Decimal integer strings compared as integers (no leading zeros).
local function dec_lt(a, b)
  if a == b then return false end
  local na, nb = a:sub(1, 1) == "-", b:sub(1, 1) == "-"
  if na ~= nb then return na end
  local ma, mb = na and a:sub(2) or a, nb and b:sub(2) or b
  local lt = #ma ~= #mb and #ma < #mb or (#ma == #mb and ma < mb)
  if na then return not lt end
  return lt
end

-- Values near +-2^62 and the int64 extremes, as decimal text (exact on both engines).
local HUGE = { "4611686018427387904", "4611686018427387905", "4611686018427387903", "4611686018427387906",
  "-4611686018427387904", "-4611686018427387905", "9223372036854775807", "-9223372036854775808",
  "4611686018427387905", "4611686018427387904", "1", "0", "-1", "9223372036854775806" }

-- ---- the SQLite functions, called directly ----

describe("genaudit_percentiles / genaudit_sum_ordered (SQLite, through store:query)", function()
  local dir, store
  setup(function()
    dir = tmp.dir()
    store = stores.sqlite(dir)
  end)
  teardown(function()
    store:close()
    tmp.rm(dir)
  end)

  local function pcts_sql(ps) return "genaudit_percentiles(x, " .. table.concat(ps, ", ") .. ")" end
  local FROM = " FROM (SELECT value AS x FROM json_each(?))"

  local function one(sql, params)
    local rows, err = store:query(sql, params or {})
    assert(rows, err)
    return rows[1]
  end

  it("answer the nearest rank of every p, and the ascending sum bit for bit, for every size and shape", function()
    local checked = 0
    for _, n in ipairs(SIZES) do
      for _, c in ipairs(shapes(n, 1000 + n)) do
        local js = json_of(c.vals)
        for _, ps in ipairs(P_CHUNKS) do
          local r = one("SELECT " .. pcts_sql(ps) .. " AS p, count(x) AS n" .. FROM, { js })
          assert.equal(expect_pcts(c.vals, ps), r.p, c.name .. " p=" .. table.concat(ps, ","))
          checked = checked + 1
        end
        local r = one("SELECT genaudit_sum_ordered(x) AS s" .. FROM, { js })
        local want = expect_sum(c.vals)
        assert.equal(want, r.s, c.name)
        if want then assert.equal(fmt_real(want), fmt_real(r.s), c.name) end
      end
    end
    assert.is_true(checked > 1000, checked)
  end)

  it("survive quickselect's bad inputs at 20000 values (sorted, reverse, equal, organ pipe, alternating)", function()
    local n = 20000
    local cases = {
      sorted = function(i) return i end, reverse = function(i) return n - i end, equal = function() return 7 end,
      organ = function(i) return i <= n / 2 and i or n - i end, alternating = function(i) return i % 2 * n + i end,
      two = function(i) return i % 2 end,
    }
    for name, f in pairs(cases) do
      local v = {}
      for i = 1, n do v[i] = f(i) end
      local vals = ints(v)
      local ps = { 1, 25, 50, 75, 95, 99, 100, 50, 1 }
      local r = one("SELECT " .. pcts_sql(ps) .. " AS p, genaudit_sum_ordered(x) AS s" .. FROM, { json_of(vals) })
      assert.equal(expect_pcts(vals, ps), r.p, name)
      assert.equal(expect_sum(vals), r.s, name)
    end
  end)

  it("give one answer per group, NULL for a group whose values are all NULL (and for no rows)", function()
    local groups = { a = { { v = 3 }, false, { v = 1 }, { v = 2 } }, b = { false, false }, c = reals({ 2.5 }),
      d = { { v = -5 }, { v = 5, real = true }, { v = -5 } } }
    local parts = {}
    for g, vals in pairs(groups) do
      for _, x in ipairs(vals) do
        parts[#parts + 1] = "[" .. q(g):gsub("'", '"') .. "," .. json_of({ x }):sub(2, -2) .. "]"
      end
    end
    local rows = assert(store:query("SELECT g, genaudit_percentiles(x, 50, 95, 1) AS p, genaudit_sum_ordered(x) AS s,"
      .. " count(*) AS n FROM (SELECT json_extract(value, '$[0]') AS g, json_extract(value, '$[1]') AS x"
      .. " FROM json_each(?)) GROUP BY g ORDER BY g", { "[" .. table.concat(parts, ",") .. "]" }))
    assert.equal(4, #rows)
    for _, r in ipairs(rows) do
      assert.equal(expect_pcts(groups[r.g], { 50, 95, 1 }), r.p, r.g)
      assert.equal(expect_sum(groups[r.g]), r.s, r.g)
    end
    assert.same({ n = 2 }, one("SELECT genaudit_percentiles(x, 50) AS p, genaudit_sum_ordered(x) AS s,"
      .. " count(*) AS n" .. FROM, { "[null, null]" }))
    assert.same({ n = 0 }, one("SELECT genaudit_percentiles(x, 50) AS p, genaudit_sum_ordered(x) AS s,"
      .. " count(*) AS n" .. FROM, { "[]" }))
    -- mixed: every value a double once a real joins (2 prints as 2, 2.5 as 2.5)
    assert.same({ p = "-5,5,-5" }, one("SELECT genaudit_percentiles(x, 50, 100, 1) AS p" .. FROM,
      { "[-5, 5.0, -5]" }))
    assert.same({ p = "1,2,2.5" }, one("SELECT genaudit_percentiles(x, 33, 34, 100) AS p" .. FROM, { "[2.5, 1, 2]" }))
    assert.same({ p = "0.10000000000000001,0.30000000000000004" },
      one("SELECT genaudit_percentiles(x, 1, 100) AS p" .. FROM, { "[0.30000000000000004, 0.1]" }))
  end)

  it("keep huge 64-bit integers exact as text, in any percentile order", function()
    local sorted = {}
    for i, s in ipairs(HUGE) do sorted[i] = s end
    table.sort(sorted, dec_lt)
    local js = "[" .. table.concat(HUGE, ",") .. "]"
    for _, ps in ipairs(P_CHUNKS) do
      local want = {}
      for i, p in ipairs(ps) do want[i] = sorted[rank(p, #sorted)] end
      assert.equal(table.concat(want, ","), one("SELECT " .. pcts_sql(ps) .. " AS p" .. FROM, { js }).p)
    end
    -- neighbours of 2^62 stay apart (a double would merge them)
    assert.same({ p = "4611686018427387903,4611686018427387904,4611686018427387905" },
      one("SELECT genaudit_percentiles(x, 1, 50, 100) AS p" .. FROM,
        { "[4611686018427387905, 4611686018427387903, 4611686018427387904]" }))
    -- their sum: the doubles of the ascending values added up
    local sum = 0.0
    for _, s in ipairs(sorted) do sum = sum + (tonumber(s) + 0.0) end
    assert.equal(fmt_real(sum), fmt_real(one("SELECT genaudit_sum_ordered(x) AS s" .. FROM, { js }).s))
  end)

  it("add in ascending order: the same bits for any order the rows come in, not the naive sum", function()
    local base = { 1e16, 1, 1, 1, 1, 1, 1, 1, 1, -1e16, 0.5, 3.25, 1e-3, 7 }
    local rnd = util.lcg(99)
    local want = expect_sum(reals(base))
    local naive = 0.0
    for _, v in ipairs(base) do naive = naive + v end
    assert.are_not.equal(naive, want) -- the data set tells the orders apart
    for _ = 1, 20 do
      for i = #base, 2, -1 do
        local j = rnd.int(1, i)
        base[i], base[j] = base[j], base[i]
      end
      assert.equal(fmt_real(want), fmt_real(one("SELECT genaudit_sum_ordered(x) AS s" .. FROM,
        { json_of(reals(base)) }).s))
    end
  end)

  it("refuse bad percentiles with an error, not a crash, and the store goes on", function()
    local bad = { "0", "101", "-1", "50.5", "50.0", "'50'", "NULL", "x'3530'",
      "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17", "50, 0", "9223372036854775807" }
    for _, args in ipairs(bad) do
      local rows, err, code = store:query("SELECT genaudit_percentiles(x, " .. args .. ") AS p" .. FROM, { "[1, 2]" })
      assert.is_nil(rows, args)
      assert.equal("SQLITE", code, args)
      assert.matches("genaudit_percentiles: ", err, 1, true)
    end
    local rows, err = store:query("SELECT genaudit_percentiles(x) AS p" .. FROM, { "[1, 2]" })
    assert.is_nil(rows)
    assert.matches("from 1 to 16 percentiles", err, 1, true)
    -- 16 is the most
    assert.equal(("1,"):rep(15) .. "2", one("SELECT genaudit_percentiles(x, 50, 50, 50, 50, 50, 50, 50, 50, 50, 50,"
      .. " 50, 50, 50, 50, 50, 100) AS p" .. FROM, { "[1, 2]" }).p)
    -- wrong arity and window use are refused when the statement is prepared
    for _, sql in ipairs({ "SELECT genaudit_sum_ordered(x, x) AS s" .. FROM,
      "SELECT genaudit_sum_ordered() AS s" .. FROM,
      "SELECT genaudit_percentiles(x, 50) OVER () AS p" .. FROM,
      "SELECT genaudit_sum_ordered(x) OVER (ORDER BY x) AS s" .. FROM }) do
      local r2, e2 = store:query(sql, { "[1, 2]" })
      assert.is_nil(r2, sql)
      assert.is_string(e2)
    end
    -- an error in one group's first row aborts the statement cleanly
    local r3, e3 = store:query("SELECT genaudit_percentiles(x, CASE WHEN x > 5 THEN 0 ELSE 50 END) AS p"
      .. " FROM (SELECT value AS x FROM json_each(?)) GROUP BY x > 5", { "[1, 9, 2, 10]" })
    assert.is_nil(r3)
    assert.matches("integer from 1 to 100", e3, 1, true)
    assert.same({ p = "2" }, one("SELECT genaudit_percentiles(x, 50) AS p" .. FROM, { "[3, 1, 2]" }))
  end)

  it("refuse a value that is not a number (text, blob) with an error, never a zero; numeric text counts", function()
    -- json_each gives text for a JSON string: '7' reads as the integer 7, 'abc' as nothing
    for _, fn in ipairs({ "genaudit_percentiles(x, 50)", "genaudit_sum_ordered(x)" }) do
      for _, vals in ipairs({ '[1, "abc", 3]', '["", 2]', '[2.5, "1e", 4]' }) do
        local rows, err, code = store:query("SELECT " .. fn .. " AS v" .. FROM, { vals })
        assert.is_nil(rows, fn .. " " .. vals)
        assert.equal("SQLITE", code)
        assert.matches(fn:match("^[%w_]+") .. ": a value is not a number (text or blob)", err, 1, true)
      end
      local rows, err = store:query("SELECT " .. fn .. " AS v FROM (SELECT 1 AS x UNION ALL SELECT x'00')")
      assert.is_nil(rows)
      assert.matches("a value is not a number", err, 1, true)
    end
    assert.equal("3,7", one("SELECT genaudit_percentiles(x, 50, 100) AS p" .. FROM, { '[3, "7", 1]' }).p)
    assert.equal(11.5, one("SELECT genaudit_sum_ordered(x) AS s" .. FROM, { '[3, "7", 1.5]' }).s)
    -- the store goes on
    assert.same({ p = "2" }, one("SELECT genaudit_percentiles(x, 50) AS p" .. FROM, { "[3, 1, 2]" }))
  end)
end)

-- ---- the dialect's percentiles and sum_asc on both stores ----

-- value[i] of the dialect: JSON array elements as rows (g, x) of type `ty`
-- ("int" or "real").
local function values_sql(store, ty)
  if store.backend == "postgresql" then
    return "(SELECT CAST(e ->> 0 AS text) AS g, CAST(e ->> 1 AS " .. (ty == "int" and "bigint" or "double precision")
      .. ") AS x FROM json_array_elements(CAST(? AS json)) AS t(e)) AS b"
  end
  return "(SELECT json_extract(value, '$[0]') AS g, json_extract(value, '$[1]') AS x FROM json_each(?)) AS b"
end

-- [[g, v], ...] JSON of named groups of values
local function grouped_json(groups)
  local parts = {}
  for _, gr in ipairs(groups) do
    for _, x in ipairs(gr.vals) do
      parts[#parts + 1] = '["' .. gr.g .. '",' .. json_of({ x }):sub(2, -2) .. "]"
    end
  end
  return "[" .. table.concat(parts, ",") .. "]"
end

local dialect_results = {}

local function dialect_suite(name, open, describe_fn)
  describe_fn(name, function()
    local dir, store
    local results = {}
    dialect_results[#dialect_results + 1] = results
    setup(function()
      dir = tmp.dir()
      store = open(dir)
    end)
    teardown(function()
      store:close()
      tmp.rm(dir)
      pg.drop_schemas()
    end)

    local function run(groups, ty, ps)
      local SQL = report.dialect(store)
      local rows = assert(store:query("SELECT g, " .. SQL.percentiles("x", ps) .. " AS p, " .. SQL.sum_asc("x")
        .. " AS s, count(*) AS n FROM " .. values_sql(store, ty) .. " GROUP BY g ORDER BY g", { grouped_json(groups) }))
      return rows
    end

    it("give the nearest-rank percentiles and the ascending sum of every group, as brute force does", function()
      local n_checked = 0
      for _, n in ipairs(SIZES) do
        local groups = {}
        for i, c in ipairs(shapes(n, 2000 + n)) do
          local mixed = false
          for _, x in ipairs(c.vals) do mixed = mixed or (x and x.real) end
          -- PostgreSQL columns have one type: the real and mixed shapes go as doubles
          if not mixed then groups[#groups + 1] = { g = string.format("g%02d", i), vals = c.vals, name = c.name } end
        end
        groups[#groups + 1] = { g = "zz-null", vals = { false, false, false }, name = "all NULL" }
        for _, ps in ipairs(P_FEW) do
          local rows = run(groups, "int", ps)
          assert.equal(#groups, #rows)
          for i, r in ipairs(rows) do
            local gr = groups[i]
            assert.equal(gr.g, r.g)
            local want = expect_pcts(gr.vals, ps)
            assert.equal(want, r.p, gr.name .. " " .. table.concat(ps, ","))
            assert.equal(expect_sum(gr.vals), r.s, gr.name)
            n_checked = n_checked + 1
          end
          results[#results + 1] = rows
        end
        -- reals: compared as numbers (PostgreSQL prints the shortest digits, SQLite 17)
        local rgroups = {}
        for i, c in ipairs(shapes(n, 3000 + n)) do
          local v = {}
          for k, x in ipairs(c.vals) do v[k] = x and { v = x.v + 0.0, real = true } or false end
          rgroups[i] = { g = string.format("r%02d", i), vals = v, name = c.name }
        end
        local rows = run(rgroups, "real", { 50, 95, 99 })
        for i, r in ipairs(rows) do
          local want = expect_pcts(rgroups[i].vals, { 50, 95, 99 })
          if want then
            local w, got = {}, {}
            for k, part in ipairs(split(want)) do w[k] = tonumber(part) end
            for k, part in ipairs(split(r.p)) do got[k] = tonumber(part) end
            assert.same(w, got, rgroups[i].name)
          else
            assert.is_nil(r.p, rgroups[i].name)
          end
          local ws = expect_sum(rgroups[i].vals)
          assert.equal(ws, r.s, rgroups[i].name)
          if ws then assert.equal(fmt_real(ws), fmt_real(r.s), rgroups[i].name) end
          n_checked = n_checked + 1
        end
        for _, r in ipairs(rows) do
          local w = {}
          for k, part in ipairs(split(r.p or "")) do w[k] = tonumber(part) end
          r.p = w
        end
        results[#results + 1] = rows
      end
      assert.is_true(n_checked > 200, n_checked)
    end)

    it("keep 64-bit integers near 2^62 exact, in any percentile order", function()
      local sorted = {}
      for i, s in ipairs(HUGE) do sorted[i] = s end
      table.sort(sorted, dec_lt)
      local parts = {}
      for i, s in ipairs(HUGE) do parts[i] = '["h",' .. s .. "]" end
      local js = "[" .. table.concat(parts, ",") .. "]"
      local SQL = report.dialect(store)
      for _, ps in ipairs({ { 1, 50, 100 }, { 100, 50, 1 }, { 7, 8, 93, 94 }, { 95, 50 } }) do
        local want = {}
        for i, p in ipairs(ps) do want[i] = sorted[rank(p, #sorted)] end
        local rows = assert(store:query("SELECT " .. SQL.percentiles("x", ps) .. " AS p, " .. SQL.sum_asc("x")
          .. " AS s FROM " .. values_sql(store, "int"), { js }))
        assert.equal(table.concat(want, ","), rows[1].p)
        local sum = 0.0
        for _, v in ipairs(sorted) do sum = sum + (tonumber(v) + 0.0) end
        assert.equal(fmt_real(sum), fmt_real(rows[1].s))
        results[#results + 1] = rows
      end
    end)
  end)
end

stores.both("report dialect aggregates", dialect_suite)

pg.describe("report dialect aggregates on both stores #postgresql", function()
  it("answer alike on SQLite and PostgreSQL", function()
    assert.equal(2, #dialect_results)
    assert.is_true(#dialect_results[1] > 10)
    assert.same(dialect_results[1], dialect_results[2])
  end)
end)

-- ---- the reports over persisted rows, on both stores ----

-- Rows with chosen costs (exact picodollars), latencies, times to first
-- token and scores, in groups of 1, 2, 3, 100 and 1000 rows plus shaped ones.
local function report_rows()
  local rnd = util.lcg(31337)
  local rows = {}
  local function add(template, i, shape)
    local r = { template_id = template }
    local pico
    if shape == "equal" then pico = 123456789 elseif shape == "sorted" then pico = i * 1000003
    elseif shape == "reverse" then pico = (1000 - i) * 999983
    elseif shape ~= "none" and rnd.int(1, 8) ~= 1 then
      pico = rnd.int(1, 9) == 1 and 5000000 or rnd.int(1, 2147483646) * rnd.int(1, 4000)
    end
    r.pico = pico
    r.provider_ms = rnd.int(1, 60000) / rnd.pick({ 1, 3, 7, 10 })
    r.total_ms = r.provider_ms + rnd.int(0, 9000) / rnd.pick({ 1, 3, 100 })
    if shape == "equal" then r.provider_ms, r.total_ms = 250.5, 1000.25 end
    if shape ~= "none" and rnd.int(1, 3) ~= 1 then
      -- mixed: whole milliseconds (JSON integers) and fractions
      r.ttft = rnd.int(1, 2) == 1 and rnd.int(0, 400) or rnd.int(0, 400000) / 1000
    end
    if shape ~= "none" and rnd.int(1, 5) ~= 1 then
      local d = rnd.pick({ 100, 3, 7 })
      r.score = rnd.int(0, 100 * d) / d
    end
    r.repairs = rnd.int(0, 3)
    r.prompt_tokens, r.completion_tokens = rnd.int(1, 5000), rnd.int(0, 900)
    rows[#rows + 1] = r
  end
  for _, g in ipairs({ { "n0001", 1 }, { "n0002", 2 }, { "n0003", 3 }, { "n0100", 100 }, { "n1000", 1000 },
    { "none", 4, "none" }, { "sorted", 60, "sorted" }, { "reverse", 60, "reverse" }, { "equal", 40, "equal" } }) do
    for i = 1, g[2] do add(g[1], i, g[3]) end
  end
  -- interleave the groups (a row order that is not the group order)
  for i = #rows, 2, -1 do
    local j = rnd.int(1, i)
    rows[i], rows[j] = rows[j], rows[i]
  end
  return rows
end

local function persist_rows(store, rows)
  for i, r in ipairs(rows) do
    local tu = { prompt_tokens = r.prompt_tokens, completion_tokens = r.completion_tokens }
    if r.pico then
      tu.estimated_cost_picousd = r.pico
      tu.estimated_cost = core.usd_from_picousd(r.pico)
    end
    local perf = { total_latency_ms = r.total_ms, provider_latency_ms = r.provider_ms, model_identifier = "m",
      time_to_first_token_ms = r.ttft }
    assert(store:persist_generation{ org_id = "org", user_id = "u" .. i, platform = "x", template_id = r.template_id,
      final_system_prompt = "s", final_user_prompt = "p" .. i, content = "c",
      token_usage = tu, performance = perf,
      repair_info = { repair_count = r.repairs, repair_types = r.repairs > 0 and { "fix" } or {},
        initial_validation_score = r.score } })
  end
end

-- The expected report rows, brute force from rows: cost, latency, repairs keyed by template.
local function expected_reports(rows)
  local by = {}
  local order = {}
  for _, r in ipairs(rows) do
    local g = by[r.template_id]
    if not g then
      g = { pico = {}, t = {}, p = {}, o = {}, f = {}, score = {}, n = 0, repairs = 0, repaired = 0, tokens = 0 }
      by[r.template_id] = g
      order[#order + 1] = r.template_id
    end
    g.n = g.n + 1
    if r.pico then g.pico[#g.pico + 1] = { v = r.pico } end
    g.t[#g.t + 1] = { v = r.total_ms + 0.0, real = true }
    g.p[#g.p + 1] = { v = r.provider_ms + 0.0, real = true }
    g.o[#g.o + 1] = { v = (r.total_ms + 0.0) - (r.provider_ms + 0.0), real = true }
    if r.ttft then g.f[#g.f + 1] = { v = r.ttft + 0.0, real = true } end -- compared as numbers
    if r.score then g.score[#g.score + 1] = { v = r.score + 0.0, real = true } end
    g.repairs = g.repairs + r.repairs
    if r.repairs > 0 then g.repaired = g.repaired + 1 end
    g.tokens = g.tokens + r.prompt_tokens + r.completion_tokens
  end
  local function nums(s)
    if not s then return {} end
    local out = {}
    for i, part in ipairs(split(s)) do out[i] = tonumber(part) end
    return out
  end
  local cost, latency, repairs = {}, {}, {}
  for _, name in ipairs(order) do
    local g = by[name]
    local pc = expect_pcts(g.pico, { 50, 95 })
    local total
    if #g.pico > 0 then
      local s = 0
      for _, x in ipairs(g.pico) do s = s + x.v end
      total = core.usd_from_picousd(s)
    end
    cost[name] = { posts = g.n, priced_posts = #g.pico, total_cost = total,
      avg_cost = total and total / #g.pico, p50_cost = pc and core.usd_from_picousd(split(pc)[1]),
      p95_cost = pc and core.usd_from_picousd(split(pc)[2]), total_tokens = g.tokens }
    local l = { posts = g.n, streamed = #g.f }
    for _, m in ipairs({ { "t", "total" }, { "p", "provider" }, { "o", "overhead" }, { "f", "ttft" } }) do
      local v = nums(expect_pcts(g[m[1]], { 50, 95, 99 }))
      l["p50_" .. m[2] .. "_ms"], l["p95_" .. m[2] .. "_ms"], l["p99_" .. m[2] .. "_ms"] = v[1], v[2], v[3]
    end
    latency[name] = l
    local ssum = expect_sum(g.score)
    repairs[name] = { repairs = g.repairs, posts = g.n, repaired_posts = g.repaired,
      avg_initial_score = ssum and ssum / #g.score }
  end
  return cost, latency, repairs, #rows
end

local report_results = {}

local function report_suite(name, open, describe_fn)
  describe_fn(name, function()
    local dir, store
    local rows = report_rows()
    local out = {}
    report_results[#report_results + 1] = out
    local cost, latency, repairs, n_rows = expected_reports(rows)
    setup(function()
      dir = tmp.dir()
      store = open(dir)
      persist_rows(store, rows)
    end)
    teardown(function()
      store:close()
      tmp.rm(dir)
      pg.drop_schemas()
    end)

    it("cost: p50/p95 of the exact picodollars, totals and averages, as brute force", function()
      local res = assert(report.cost(store, { by = "template" }))
      out.cost = res
      assert.same({ status = "completed", replays = "excluded", rows = n_rows }, res.counted)
      assert.equal(9, #res.rows)
      for _, r in ipairs(res.rows) do
        local want = cost[r.template_id]
        for k, v in pairs(want) do assert.equal(v, r[k], r.template_id .. " " .. k) end
        if want.priced_posts == 0 then
          assert.is_nil(r.p50_cost, r.template_id)
          assert.is_nil(r.total_cost, r.template_id)
        end
      end
      -- one template: the window's count is the rows read, whatever the group
      local one = assert(report.cost(store, { template = "n0003" }))
      assert.same({ status = "completed", replays = "excluded", rows = 3 }, one.counted)
      out.cost_one = one
    end)

    it("latency: p50/p95/p99 of total, provider, overhead and time to first token, as brute force", function()
      local res = assert(report.latency(store, { by = "template" }))
      out.latency = res
      assert.equal(n_rows, res.counted.rows)
      assert.equal(9, #res.rows)
      for _, r in ipairs(res.rows) do
        local want = latency[r.template_id]
        for _, k in ipairs(res.columns) do
          if k ~= "template_id" then assert.equal(want[k], r[k], r.template_id .. " " .. k) end
        end
      end
      assert.is_nil(latency.none.p50_ttft_ms)
    end)

    it("repairs: the mean initial score from the ascending sum, bit for bit; counted rows past the top", function()
      local res = assert(report.repairs(store, { top = 100 }))
      out.repairs = res
      assert.equal(n_rows, res.counted.rows)
      assert.equal(9, #res.rows)
      for _, r in ipairs(res.rows) do
        local want = repairs[r.template_id]
        for k, v in pairs(want) do assert.equal(v, r[k], r.template_id .. " " .. k) end
        if want.avg_initial_score then
          assert.equal(fmt_real(want.avg_initial_score), fmt_real(r.avg_initial_score), r.template_id)
        end
      end
      local top2 = assert(report.repairs(store, { top = 2 }))
      assert.equal(2, #top2.rows)
      assert.equal(n_rows, top2.counted.rows) -- every group's rows, not only the top two's
      out.repairs_top2 = top2
      local rs = assert(report.repairs(store, { by = "rule_set", top = 5 }))
      assert.equal(n_rows, rs.counted.rows)
      out.repairs_rule_set = { rows = { { repairs = rs.rows[1].repairs, posts = rs.rows[1].posts,
        avg_initial_score = rs.rows[1].avg_initial_score } }, counted = rs.counted }
    end)
  end)
end

stores.both("reports on the aggregates", report_suite)

pg.describe("reports on the aggregates, SQLite against PostgreSQL #postgresql", function()
  it("give identical numbers for the same rows", function()
    assert.equal(2, #report_results)
    local a, b = report_results[1], report_results[2]
    local n = 0
    for k, res in pairs(a) do
      n = n + 1
      assert.same(res.rows, b[k].rows, k)
      assert.same(res.counted, b[k].counted, k)
    end
    assert.equal(6, n)
  end)
end)

-- ---- verify() on SQLite: the record hash and payload statuses in SQL ----

describe("audit.verify on SQLite: the SQL-function path", function()
  local dir
  local n_db = 0
  setup(function() dir = tmp.dir() end)
  teardown(function() tmp.rm(dir) end)

  local function sh(cmd) return pg.sh(cmd) end
  local function sqlite3(path, sql) return sh("env -u LD_PRELOAD sqlite3 -bail " .. q(path) .. " " .. q(sql)) end
  -- sql run with every trigger of the two tables dropped, then created again (one transaction)
  local function unguarded(path, sql)
    local defs, ok = sqlite3(path, "SELECT sql || ';' FROM sqlite_master WHERE type = 'trigger'"
      .. " AND tbl_name IN ('generation_snapshots', 'chains') ORDER BY name")
    assert(ok, defs)
    local drops = {}
    for name in sqlite3(path, "SELECT name FROM sqlite_master WHERE type = 'trigger'"
      .. " AND tbl_name IN ('generation_snapshots', 'chains')"):gmatch("[^\n]+") do
      drops[#drops + 1] = "DROP TRIGGER " .. name .. ";"
    end
    local o, okk = sqlite3(path, "BEGIN;\n" .. table.concat(drops, "\n") .. "\n" .. sql .. ";\n" .. defs .. "\nCOMMIT;")
    assert(okk, o)
  end

  -- A fresh store: 2 old rows (purged: payloads gone, digests kept) and 3 new
  -- ones, one chain; returns store, path, ids in chain order.
  local function fresh()
    n_db = n_db + 1
    local path = dir .. "/v" .. n_db .. ".db"
    local store = assert(genaudit.open("sqlite:" .. path))
    local ids = {}
    for i = 1, 5 do
      ids[i] = assert(store:persist_generation{ org_id = "org", user_id = "u" .. i, platform = "x",
        template_id = "t", final_system_prompt = "system", final_user_prompt = "user " .. i,
        content = i ~= 4 and ("post " .. i) or nil, created_at = i <= 2 and "2020-01-0" .. i .. " 00:00:00.000" or nil,
        token_usage = { prompt_tokens = 1, completion_tokens = 1 },
        performance = { total_latency_ms = 2, provider_latency_ms = 1 }, repair_info = {} })
    end
    assert.equal(2, assert(store:purge("2021-01-01 00:00:00")))
    return store, path, ids
  end

  local ARGS = {}
  for _, f in ipairs(core.record_fields()) do ARGS[#ARGS + 1] = f.payload and (f.name .. "_sha256") or f.name end
  local CALC = "genaudit_record_hash(" .. table.concat(ARGS, ", ") .. ")"

  local function first_problem(store)
    local r = assert(store:verify())
    assert.is_false(r.ok, "verify passed")
    return r.problems[1], r
  end

  it("genaudit_record_hash gives every row's record_hash, purged rows included, as core.record_hash does", function()
    local store, _, ids = fresh()
    local rows = assert(store:query("SELECT *, " .. CALC .. " AS calc FROM generation_snapshots ORDER BY chain_seq"))
    assert.equal(5, #rows)
    for _, r in ipairs(rows) do
      local f = {}
      for _, d in ipairs(core.record_fields()) do
        if d.payload then f[d.name .. "_sha256"] = r[d.name .. "_sha256"] else f[d.name] = r[d.name] end
      end
      assert.equal(r.record_hash, r.calc, r.id)
      assert.equal(r.record_hash, (core.record_hash(f)), r.id)
    end
    assert.is_nil(rows[1].content)
    assert.is_string(rows[1].content_sha256)
    assert.is_nil(rows[4].content_sha256) -- no content, no digest: an unset field
    assert.is_true(assert(store:verify()).ok)
    assert.equal(ids[1], rows[1].id)
    store:close()
  end)

  it("genaudit_record_hash: NULL for an integer outside chain_seq or a digest of the wrong length, an error"
    .. " for the wrong number of fields; a BLOB hashes as its bytes", function()
    local store = fresh()
    local function calc(replace)
      local a = {}
      for i, v in ipairs(ARGS) do a[i] = replace[v] or v end
      local rows, err = store:query("SELECT record_hash, genaudit_record_hash(" .. table.concat(a, ", ")
        .. ") AS c FROM generation_snapshots WHERE chain_seq = 3")
      assert(rows, err)
      return rows[1].c, rows[1].record_hash
    end
    local c, h = calc({})
    assert.equal(h, c)
    assert.is_nil((calc({ user_id = "42" })))
    assert.is_nil((calc({ content_sha256 = "substr(content_sha256, 2)" })))
    assert.is_nil((calc({ content_sha256 = "content_sha256 || 'a'" })))
    assert.is_nil((calc({ final_user_prompt_sha256 = "''" })))
    local up = calc({ content_sha256 = "upper(content_sha256)" })
    assert.is_string(up)
    assert.are_not.equal(h, up)
    assert.equal(h, (calc({ user_id = "CAST(user_id AS BLOB)", chain_seq = "CAST(chain_seq AS TEXT)" })))
    assert.are_not.equal(h, (calc({ chain_seq = "CAST(chain_seq AS REAL)" })))
    local rows, err = store:query("SELECT genaudit_record_hash(" .. table.concat(ARGS, ", ", 1, 20)
      .. ") AS c FROM generation_snapshots")
    assert.is_nil(rows)
    assert.is_string(err)
    store:close()
  end)

  -- Each edit of row `row` (1, 2: purged; 3, 5: with content; 4: no content)
  -- and what verify() must say of it first.
  local CASES = {
    { "a purged row's digest in upper case", 1, "content_sha256 = upper(content_sha256)",
      "^content_sha256 is not a digest$" },
    { "a purged row's digest one character short", 2, "final_user_prompt_sha256 = substr(final_user_prompt_sha256, 2)",
      "^final_user_prompt_sha256 is not a digest$" },
    { "a purged row's digest stored as a BLOB of the same hex", 1, "content_sha256 = CAST(content_sha256 AS BLOB)",
      "not text" },
    { "a present payload's digest in upper case", 3, "content_sha256 = upper(content_sha256)",
      "^content does not match its digest %(edited%)$" },
    { "a present payload's digest one character long", 5, "content_sha256 = content_sha256 || '0'",
      "^content does not match its digest %(edited%)$" },
    { "a digest added to a row without content", 4, "content_sha256 = '" .. ("a"):rep(64) .. "'",
      "^content is missing without a purge$" },
    { "a hashed field stored as a BLOB of the same bytes (the hash alone would pass)", 3,
      "org_id = CAST(org_id AS BLOB)", "not text" },
    { "chain_seq stored as a BLOB of its digits", 3, "chain_seq = CAST(chain_seq AS BLOB)",
      "^chain_seq 3 is not a chain position$", moves = true },
    { "chain_seq stored as text", 3, "chain_seq = '0x3'", "^chain_seq 0x3 is not a chain position$", moves = true },
    -- length() and GLOB stop at a NUL: the digest passes for one in SQL, its bytes do not
    { "a purged row's digest followed by a NUL and more bytes", 1,
      "content_sha256 = content_sha256 || char(0) || 'zz'", "^cannot be hashed %(" },
    { "the record hash stored as a BLOB", 5, "record_hash = CAST(record_hash AS BLOB)", "not text" },
    { "the record hash in upper case", 5, "record_hash = upper(record_hash)",
      "^record hash does not match the row %(a field was edited%)$" },
    { "a purged row's payload put back", 2, "content = 'post 2'", "^purged, but content is still there$" },
  }
  for _, c in ipairs(CASES) do
    it("catches " .. c[1] .. ", naming the row", function()
      local store, path, ids = fresh()
      unguarded(path, "UPDATE generation_snapshots SET " .. c[3] .. " WHERE id = '" .. ids[c[2]] .. "'")
      -- the row itself first, or (where SQLite sorts it to the end) the row after the gap it leaves
      local p, r = first_problem(store)
      assert.truthy(p.id == ids[c[2]] or (c.moves and p.id == ids[c[2] + 1]), p.what)
      local named
      for _, x in ipairs(r.problems) do
        if x.id == ids[c[2]] and x.what:match(c[4]) then named = x end
      end
      assert.truthy(named, p.what)
      store:close()
    end)
  end

  it("the BLOB org_id: its SQL record hash still matches, the type check is what catches it", function()
    local store, path, ids = fresh()
    unguarded(path, "UPDATE generation_snapshots SET org_id = CAST(org_id AS BLOB) WHERE id = '" .. ids[3] .. "'")
    local r = assert(store:query("SELECT typeof(org_id) AS t, record_hash = " .. CALC .. " AS same"
      .. " FROM generation_snapshots WHERE id = ?", { ids[3] }))[1]
    assert.same({ t = "blob", same = 1 }, r)
    store:close()
  end)

  it("an UPDATE that writes chain_seq as the text '3' changes nothing (INTEGER affinity): still clean", function()
    local store, path, ids = fresh()
    unguarded(path, "UPDATE generation_snapshots SET chain_seq = '3' WHERE id = '" .. ids[3] .. "'")
    assert.same({ { t = "integer" } }, assert(store:query("SELECT typeof(chain_seq) AS t FROM generation_snapshots"
      .. " WHERE id = ?", { ids[3] })))
    local r = assert(store:verify())
    assert.same({}, r.problems)
    store:close()
  end)
end)
