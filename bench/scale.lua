-- bench/scale.lua — issue 16.6: the scale curve. How genaudit's persist rate,
-- verify and report times and the bytes per row grow with the store, from
-- 10,000 to 1,000,000 rows on SQLite and to 100,000 on PostgreSQL
-- (BENCH_SIZE=small: 1,000 and 5,000 on both).
--
-- For each size N, a store holding N rows is made:
--   SQLite      bench/gen_rows.c fills a freshly migrated store (realistic,
--               sealed rows: 50 templates, 3 models, ~10 KB per row), at a
--               constant RATE rows per day ending now (10,000 a day: N=1M
--               covers 100 days, N=10k one day), as a fleet's table grows:
--               by time, not by density.
--   PostgreSQL  a database created for it on $GENAUDIT_PG_URL's server
--               (dropped afterwards), filled by genaudit's copy (copy.run
--               into an async destination) from the SQLite store of the same
--               size: the same rows, ids and created_at, sealed again in the
--               destination's chains; then ANALYZE (what autovacuum does).
-- Then, on that store, through genaudit:
--   verify        store:verify() of the whole store, once: rows/s
--   report_*      genaudit.report (ms, median of RUNS warm runs):
--                 cost{by=template, since=7d}, repairs{top=3, since=7d},
--                 latency{by=model, since=7d} (windowed: the last 7 days hold
--                 min(N, 7 x RATE) rows), and cost{by=template} over all rows
--   financial     the README's Financial Test SQL through store:query (one
--                 template, all rows; ms)
--   bytes_per_row SQLite: the file (+ -wal) / N; PostgreSQL:
--                 pg_total_relation_size('generation_snapshots') / N (heap,
--                 TOAST and every index)
--   persist       the async persist rate (queue 10,000, batch 100, block):
--                 BATCH rows of bench/common.lua's rows persisted, then
--                 flush(), PROUNDS rounds appended to the store holding N rows
--                 (measured last, so the figures above are at exactly N):
--                 median rows/s. Does inserting cost more as the indexes deepen?
-- Each quantity prints one BENCH line per size, named
-- scale_<store>_<quantity>_<size> (size 1k, 5k, 10k, 100k, 1m), with
-- ratio = the figure at N / the figure at the smallest size of the same run
-- and store (growth; baseline=<store>_<smallest size>:<figure>), and a target:
-- rates (persist, verify) >=0.80, bytes per row <=1.10, times info. Then a
-- table. Stores are deleted as soon as they are measured (1M SQLite rows are
-- ~10 GB: the script checks the free space of $BENCH_TMPDIR first).
-- BENCH_SCALE_PG_MAX (default 100000; small 5000) is the largest PostgreSQL size.
local root = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
package.path = root .. "/?.lua;" .. root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. (rawget(_G, "jit") and "luajit" or "lua54") .. "/?.so;" .. package.cpath

local common = require("bench.common")
local genaudit = require("genaudit")
local report = require("genaudit.report")
local copy = require("genaudit.copy")

local SIZES = common.size{ small = { 1000, 5000 }, full = { 10000, 100000, 1000000 } }
local PG_MAX = tonumber(os.getenv("BENCH_SCALE_PG_MAX") or "") or common.size{ small = 5000, full = 100000 }
local RATE = common.size{ small = 1000, full = 10000 } -- rows per day of the generated stores
local BATCH = common.size{ small = 200, full = 2000 }
local PROUNDS = common.size{ small = 1, full = 3 }
local RUNS = common.size{ small = 2, full = 5 }
local K = 16
local TEMPLATE = "template-07"
local FINANCIAL = "SELECT count(*) AS posts, avg(estimated_cost) AS avg_cost FROM generation_snapshots"
  .. " WHERE template_id = ?"
local now = common.now_us

local BASE = os.getenv("GENAUDIT_PG_URL")
if not BASE or BASE == "" then
  io.stderr:write("bench/scale.lua: GENAUDIT_PG_URL is not set (sh bench/run.sh starts a throwaway server;"
    .. " or GENAUDIT_PG_URL=$(sh tools/pg-test-server.sh start))\n")
  os.exit(1)
end

local rows = common.rows(K)
math.randomseed(os.time() + math.floor(os.clock() * 1e6))
local PREFIX = string.format("gascale_%d_%d", os.time() % 100000, math.random(1, 99999))
local made = {}

local function label(n)
  if n >= 1000000 and n % 1000000 == 0 then return string.format("%dm", n / 1000000) end
  if n >= 1000 and n % 1000 == 0 then return string.format("%dk", n / 1000) end
  return tostring(n)
end

local function url_of(name)
  local u, n = BASE:gsub("/[^/?]*(%??[^/]*)$", "/" .. name .. "%1", 1)
  assert(n == 1, "cannot tell the database in GENAUDIT_PG_URL")
  return u
end

local function psql(url, sql)
  return common.run("psql -X -q -At -v ON_ERROR_STOP=1 " .. common.quote(url) .. " -c " .. common.quote(sql)
    .. " 2>&1")
end

local function drop(name)
  psql(BASE, "DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)")
  made[name] = nil
end

-- ms of the median of `runs` timed runs of fn (after one warm-up run).
local function time_ms(runs, fn)
  fn()
  local t = {}
  for i = 1, runs do
    local t0 = now()
    fn()
    t[i] = (now() - t0) / 1000
  end
  return common.median(t)
end

local function count(store)
  return assert(store:query("SELECT count(*) AS n FROM generation_snapshots", {}))[1].n
end

-- The figures of one store holding n rows (opened by `open(opts)`); size_of(store) -> bytes.
local function measure(open, n, size_of)
  local r = {}
  local store = assert(open())
  assert(count(store) == n, "the store does not hold the rows it was filled with")
  local v0 = now()
  local v = assert(store:verify())
  r.verify = n / ((now() - v0) / 1e6)
  assert(v.ok and v.rows == n, "the store does not verify: " .. tostring(v.problems[1] and v.problems[1].what))
  r.cost_7d = time_ms(RUNS, function() assert(report.cost(store, { by = "template", since = "7d" })) end)
  r.cost_all = time_ms(RUNS, function() assert(report.cost(store, { by = "template" })) end)
  r.repairs_7d = time_ms(RUNS, function() assert(report.repairs(store, { top = 3, since = "7d" })) end)
  r.latency_7d = time_ms(RUNS, function() assert(report.latency(store, { by = "model", since = "7d" })) end)
  r.financial = time_ms(RUNS, function() assert(store:query(FINANCIAL, { TEMPLATE })) end)
  r.bytes = size_of(store) / n
  store:close()
  -- persist: BATCH rows appended, PROUNDS rounds, each on a freshly opened async store
  local rates = {}
  for round = 1, PROUNDS do
    local s = assert(open({ async = { queue = 10000, batch = 100, on_full = "block" } }))
    local persister = genaudit.persister(s)
    local t0 = now()
    for i = 1, BATCH do assert(persister:persist_generation(rows[(i - 1) % K + 1])) end
    assert(s:flush())
    rates[round] = BATCH / ((now() - t0) / 1e6)
    local st = s:stats()
    assert(st.written == BATCH and st.failed == 0, "the async writer lost rows")
    s:close()
  end
  r.persist = common.median(rates)
  local s = assert(open({ migrate = false }))
  assert(count(s) == n + PROUNDS * BATCH, "persisted rows missing")
  s:close()
  return r
end

local QUANTITIES = {
  { "persist", "rows/s", ">=0.80" }, { "verify", "rows/s", ">=0.80" }, { "report_cost_7d", "ms", "info" },
  { "report_cost_all", "ms", "info" }, { "report_repairs_7d", "ms", "info" }, { "report_latency_7d", "ms", "info" },
  { "financial", "ms", "info" }, { "bytes_per_row", "bytes", "<=1.10" },
}
local FIELD = { report_cost_7d = "cost_7d", report_cost_all = "cost_all", report_repairs_7d = "repairs_7d",
                report_latency_7d = "latency_7d", bytes_per_row = "bytes" }

local results = { sqlite = {}, postgresql = {} }

local function emit(kind, n, r)
  local first = results[kind][1]
  for _, q in ipairs(QUANTITIES) do
    local key = FIELD[q[1]] or q[1]
    common.bench("scale_" .. kind .. "_" .. q[1] .. "_" .. label(n), q[2], {
      { "genaudit", r[key] }, { "rows", n },
      { "baseline", kind .. "_" .. label(first.n) .. ":" .. common.num(first[key]) },
      { "ratio", string.format("%.3f", r[key] / first[key]) }, { "target", q[3] },
    })
  end
end

local function free_bytes(dir)
  local out = common.run("df -Pk " .. common.quote(dir) .. " | tail -n 1")
  return (tonumber(out:match("^%S+%s+%d+%s+%d+%s+(%d+)")) or 0) * 1024
end

local function main()
  common.title("scale curve: persist, verify, reports and bytes per row from " .. label(SIZES[1]) .. " to "
    .. label(SIZES[#SIZES]) .. " rows (SQLite; PostgreSQL to " .. label(PG_MAX) .. ")")
  local dir = common.tmpdir("scale")
  local need = SIZES[#SIZES] * 11000
  local free = free_bytes(dir)
  if free < need then
    error(string.format("%s has %.1f GB free; the %s-row store needs about %.1f GB", dir, free / 1e9,
      label(SIZES[#SIZES]), need / 1e9), 0)
  end
  common.say("async persist: %d rows x %d round(s) appended to the store holding N rows; reports %d warm runs"
    .. " (median); generated stores hold %d rows a day ending now", BATCH, PROUNDS, RUNS, RATE)
  for _, n in ipairs(SIZES) do
    local db = dir .. "/scale-" .. label(n) .. ".db"
    assert(genaudit.open("sqlite:" .. db)):close()
    local days = math.max(1, math.ceil(n / RATE))
    local g = common.kv(common.run(table.concat({ common.tool("gen_rows"), common.quote(db), string.format("%d", n),
      string.format("%d", days) }, " ")))
    assert(g.rows == n, "gen_rows wrote " .. tostring(g.rows) .. " rows")
    common.say("%s: gen_rows wrote %d rows over %d day(s) at %s rows/s", label(n), n, days, common.num(g.rows_per_s))
    local function open_sqlite(extra)
      local opts = { synchronous = "normal" }
      for k, v in pairs(extra or {}) do opts[k] = v end
      return genaudit.open("sqlite:" .. db, opts)
    end
    -- PostgreSQL first: its store gets exactly the N generated rows
    local name, url
    if n <= PG_MAX then
      name = PREFIX .. "_" .. label(n)
      psql(BASE, "DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)")
      psql(BASE, "CREATE DATABASE " .. name)
      made[name] = true
      url = url_of(name)
      local from = assert(genaudit.open("sqlite:" .. db, { readonly = true, migrate = false }))
      local to = assert(genaudit.open(url, { async = { queue = 10000, batch = 500, on_full = "block" } }))
      local t0 = now()
      local c = assert(copy.run(from, to))
      local secs = (now() - t0) / 1e6
      assert(c.copied == n and c.failed == 0, "copy into PostgreSQL lost rows")
      from:close()
      to:close()
      psql(url, "ANALYZE")
      common.say("%s: copy.run into PostgreSQL: %d rows in %.1f s (%s rows/s); then ANALYZE", label(n), c.copied,
        secs, common.num(c.copied / secs))
    end
    local r = measure(open_sqlite, n, function() return common.file_size(db) + common.file_size(db .. "-wal") end)
    r.n = n
    results.sqlite[#results.sqlite + 1] = r
    emit("sqlite", n, r)
    common.rmdb(db)
    if url then
      local p = measure(function(extra) return genaudit.open(url, extra or {}) end, n, function(store)
        return assert(store:query("SELECT pg_total_relation_size('generation_snapshots') AS b", {}))[1].b
      end)
      p.n = n
      results.postgresql[#results.postgresql + 1] = p
      emit("postgresql", n, p)
      drop(name)
    end
  end
  common.rm(dir)

  common.say("")
  common.say("%-10s %8s %10s %10s %8s %9s %9s %9s %9s %9s %7s", "store", "rows", "persist/s", "verify/s", "in 7d",
    "cost7d", "cost_all", "repair7d", "latency7d", "financial", "B/row")
  for _, kind in ipairs({ "sqlite", "postgresql" }) do
    for _, r in ipairs(results[kind]) do
      common.say("%-10s %8s %10s %10s %8d %9.1f %9.1f %9.1f %9.1f %9.2f %7d", kind, label(r.n), common.num(r.persist),
        common.num(r.verify), math.min(r.n, 7 * RATE), r.cost_7d, r.cost_all, r.repairs_7d, r.latency_7d, r.financial,
        math.floor(r.bytes + 0.5))
    end
  end
  common.say("(times in ms; \"in 7d\": the generated rows the 7-day reports read, %d a day)", RATE)
end

local ok, err = pcall(main)
for name in pairs(made) do pcall(drop, name) end
if not ok then
  io.stderr:write("bench/scale.lua: " .. tostring(err) .. "\n")
  os.exit(1)
end
