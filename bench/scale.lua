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
-- Every store is made first; then the stores are measured interleaved,
-- round by round (rotating which goes first), so a change of the machine's
-- load during the run hits every size alike. Through genaudit:
--   verify        store:verify() of the whole store (VROUNDS rounds): rows/s
--   report_*      genaudit.report, once per round (ROUNDS rounds after a
--                 warm-up; ms): cost{by=template, since=7d},
--                 repairs{top=3, since=7d}, latency{by=model, since=7d}
--                 (windowed: the last 7 days hold min(N, 7 x RATE) rows), and
--                 cost{by=template} over all rows
--   financial     the README's Financial Test SQL through store:query (one
--                 template, all rows; ms)
--   bytes_per_row SQLite: the file (+ -wal) / N; PostgreSQL:
--                 pg_total_relation_size('generation_snapshots') / N (heap,
--                 TOAST and every index); measured when the store is made
--   persist       the async persist rate (queue 10,000, batch 100, block):
--                 BATCH rows of bench/common.lua's rows persisted, then
--                 flush(), PROUNDS rounds appended to the store holding N rows
--                 (after the read rounds, so those are at exactly N): rows/s.
--                 Does inserting cost more as the indexes deepen?
-- Figures are medians over the rounds. Each quantity prints one BENCH line
-- per size, named scale_<store>_<quantity>_<size> (1k, 5k, 10k, 100k, 1m),
-- with ratio = the figure at N / the figure at the smallest size of the same
-- run and store (growth; baseline=<store>_<smallest size>:<figure>), and a
-- target: rates (persist, verify) >=0.80, bytes per row <=1.10, times info.
-- Beside the wall-clock figure, this process's CPU time (os.clock: every
-- thread, the async writer's too): cpu_rows_per_s or cpu_ms and cpu_ratio,
-- which a loaded machine disturbs less (on PostgreSQL it leaves out the
-- server's work). Then a table. The stores are deleted at the end (1M SQLite
-- rows are ~10 GB: the script checks the free space of $BENCH_TMPDIR first).
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
local ROUNDS = common.size{ small = 2, full = 5 } -- read rounds: each report once per round
local VROUNDS = common.size{ small = 1, full = 3 } -- the first VROUNDS read rounds verify too
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
local made = {} -- PostgreSQL databases to drop
local scratch -- the SQLite stores' directory

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

local cpu = os.clock -- this process's CPU time, every thread (the async writer's too)

local function count(store)
  return assert(store:query("SELECT count(*) AS n FROM generation_snapshots", {}))[1].n
end

-- Times fn once: wall ms, this process's CPU ms.
local function timed(fn)
  local c0, t0 = cpu(), now()
  fn()
  return (now() - t0) / 1000, (cpu() - c0) * 1000
end

local REPORTS = {
  { "cost_7d", function(s) assert(report.cost(s, { by = "template", since = "7d" })) end },
  { "cost_all", function(s) assert(report.cost(s, { by = "template" })) end },
  { "repairs_7d", function(s) assert(report.repairs(s, { top = 3, since = "7d" })) end },
  { "latency_7d", function(s) assert(report.latency(s, { by = "model", since = "7d" })) end },
  { "financial", function(s) assert(s:query(FINANCIAL, { TEMPLATE })) end },
}

local function add(st, key, wall, c)
  st.wall[key] = st.wall[key] or {}
  st.cpu[key] = st.cpu[key] or {}
  table.insert(st.wall[key], wall)
  table.insert(st.cpu[key], c)
end

-- One read round on store st: verify once when `verify` (rows/s), each report once (ms).
local function read_round(st, warm, verify)
  local store = assert(st.open())
  if warm then
    for _, r in ipairs(REPORTS) do r[2](store) end
  else
    if verify then
      local v
      local w, c = timed(function() v = assert(store:verify()) end)
      assert(v.ok and v.rows == st.n, st.kind .. " " .. label(st.n) .. ": the store does not verify: "
        .. tostring(v.problems[1] and v.problems[1].what))
      add(st, "verify", st.n / (w / 1000), st.n / (c / 1000))
    end
    for _, r in ipairs(REPORTS) do add(st, r[1], timed(function() r[2](store) end)) end
  end
  store:close()
end

-- One persist round on store st: BATCH rows through a freshly opened async store, then flush().
local function persist_round(st)
  local s = assert(st.open({ async = { queue = 10000, batch = 100, on_full = "block" } }))
  local persister = genaudit.persister(s)
  local w, c = timed(function()
    for i = 1, BATCH do assert(persister:persist_generation(rows[(i - 1) % K + 1])) end
    assert(s:flush())
  end)
  local stats = s:stats()
  assert(stats.written == BATCH and stats.failed == 0, "the async writer lost rows")
  s:close()
  add(st, "persist", BATCH / (w / 1000), BATCH / (c / 1000))
end

local QUANTITIES = {
  { "persist", "rows/s", ">=0.80" }, { "verify", "rows/s", ">=0.80" }, { "report_cost_7d", "ms", "info" },
  { "report_cost_all", "ms", "info" }, { "report_repairs_7d", "ms", "info" }, { "report_latency_7d", "ms", "info" },
  { "financial", "ms", "info" }, { "bytes_per_row", "bytes", "<=1.10" },
}
local FIELD = { report_cost_7d = "cost_7d", report_cost_all = "cost_all", report_repairs_7d = "repairs_7d",
                report_latency_7d = "latency_7d", bytes_per_row = "bytes" }

-- The BENCH lines of store kind `kind` (its stores, smallest first).
local function emit(list)
  local first = list[1]
  for _, st in ipairs(list) do
    for _, q in ipairs(QUANTITIES) do
      local key = FIELD[q[1]] or q[1]
      local fields
      if key == "bytes" then
        fields = { { "genaudit", st.bytes }, { "rows", st.n },
                   { "baseline", st.kind .. "_" .. label(first.n) .. ":" .. common.num(first.bytes) },
                   { "ratio", string.format("%.3f", st.bytes / first.bytes) }, { "target", q[3] } }
      else
        local w, c = common.median(st.wall[key]), common.median(st.cpu[key])
        local w1, c1 = common.median(first.wall[key]), common.median(first.cpu[key])
        fields = { { "genaudit", w }, { "rows", st.n }, { "baseline", st.kind .. "_" .. label(first.n) .. ":"
          .. common.num(w1) }, { "ratio", string.format("%.3f", w / w1) }, { "target", q[3] },
          { q[2] == "ms" and "cpu_ms" or "cpu_rows_per_s", c }, { "cpu_ratio", string.format("%.3f", c / c1) },
          { "runs", #st.wall[key] } }
        st[key] = w
        st["cpu_" .. key] = c
      end
      common.bench("scale_" .. st.kind .. "_" .. q[1] .. "_" .. label(st.n), q[2], fields)
    end
  end
end

local function free_bytes(dir)
  local out = common.run("df -Pk " .. common.quote(dir) .. " | tail -n 1")
  return (tonumber(out:match("^%S+%s+%d+%s+%d+%s+(%d+)")) or 0) * 1024
end

-- The stores in round `round`'s order (rotating, so no store is always measured first).
local function rotated(list, round)
  local out = {}
  for i = 1, #list do out[i] = list[(i + round - 2) % #list + 1] end
  return out
end

local function main()
  common.title("scale curve: persist, verify, reports and bytes per row from " .. label(SIZES[1]) .. " to "
    .. label(SIZES[#SIZES]) .. " rows (SQLite; PostgreSQL to " .. label(PG_MAX) .. ")")
  local dir = common.tmpdir("scale")
  scratch = dir
  local need = 0
  for _, n in ipairs(SIZES) do need = need + n * 11000 end
  local free = free_bytes(dir)
  if free < need + 2e9 then
    error(string.format("%s has %.1f GB free; the stores need about %.1f GB (and 2 GB to spare)", dir, free / 1e9,
      need / 1e9), 0)
  end
  common.say("%d read round(s) (each report once per round, verify in the first %d) after one warm-up, then %d"
    .. " persist round(s) of %d rows appended; stores interleaved in every round; generated stores hold %d rows a"
    .. " day ending now", ROUNDS, VROUNDS, PROUNDS, BATCH, RATE)
  local all, by_kind = {}, { sqlite = {}, postgresql = {} }
  local function keep(st)
    st.wall, st.cpu = {}, {}
    all[#all + 1] = st
    table.insert(by_kind[st.kind], st)
  end
  for _, n in ipairs(SIZES) do
    local db = dir .. "/scale-" .. label(n) .. ".db"
    assert(genaudit.open("sqlite:" .. db)):close()
    local days = math.max(1, math.ceil(n / RATE))
    local g = common.kv(common.run(table.concat({ common.tool("gen_rows"), common.quote(db), string.format("%d", n),
      string.format("%d", days) }, " ")))
    assert(g.rows == n, "gen_rows wrote " .. tostring(g.rows) .. " rows")
    assert(genaudit.open("sqlite:" .. db)):close() -- the migration step analyzes the new rows
    common.say("%s: gen_rows wrote %d rows over %d day(s) at %s rows/s", label(n), n, days, common.num(g.rows_per_s))
    keep({ kind = "sqlite", n = n, db = db, bytes = (common.file_size(db) + common.file_size(db .. "-wal")) / n,
           open = function(extra)
             local opts = { synchronous = "normal" }
             for k, v in pairs(extra or {}) do opts[k] = v end
             return genaudit.open("sqlite:" .. db, opts)
           end })
    if n <= PG_MAX then
      local name = PREFIX .. "_" .. label(n)
      psql(BASE, "DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)")
      psql(BASE, "CREATE DATABASE " .. name)
      made[name] = true
      local url = url_of(name)
      local from = assert(genaudit.open("sqlite:" .. db, { readonly = true, migrate = false }))
      local to = assert(genaudit.open(url, { async = { queue = 10000, batch = 500, on_full = "block" } }))
      local t0 = now()
      local c = assert(copy.run(from, to))
      local secs = (now() - t0) / 1e6
      assert(c.copied == n and c.failed == 0, "copy into PostgreSQL lost rows")
      from:close()
      to:close()
      psql(url, "ANALYZE")
      local s = assert(genaudit.open(url))
      local b = assert(s:query("SELECT pg_total_relation_size('generation_snapshots') AS b", {}))[1].b
      s:close()
      common.say("%s: copy.run into PostgreSQL: %d rows in %.1f s (%s rows/s); then ANALYZE", label(n), c.copied,
        secs, common.num(c.copied / secs))
      keep({ kind = "postgresql", n = n, name = name, bytes = b / n,
             open = function(extra) return genaudit.open(url, extra or {}) end })
    end
  end
  for _, st in ipairs(all) do read_round(st, true) end
  for round = 1, ROUNDS do
    for _, st in ipairs(rotated(all, round)) do read_round(st, false, round <= VROUNDS) end
  end
  for round = 1, PROUNDS do
    for _, st in ipairs(rotated(all, round)) do persist_round(st) end
  end
  for _, st in ipairs(all) do
    local s = assert(st.open({ migrate = false }))
    assert(count(s) == st.n + PROUNDS * BATCH, "persisted rows missing")
    s:close()
  end
  emit(by_kind.sqlite)
  emit(by_kind.postgresql)
  for _, st in ipairs(all) do
    if st.db then common.rmdb(st.db) else drop(st.name) end
  end
  common.rm(dir)

  common.say("")
  common.say("%-10s %5s %10s %10s %6s %8s %8s %8s %9s %9s %6s", "store", "rows", "persist/s", "verify/s", "in 7d",
    "cost7d", "cost_all", "repair7d", "latency7d", "financial", "B/row")
  for _, kind in ipairs({ "sqlite", "postgresql" }) do
    for _, st in ipairs(by_kind[kind]) do
      common.say("%-10s %5s %10s %10s %6d %8.1f %8.1f %8.1f %9.1f %9.2f %6d", st.kind, label(st.n),
        common.num(st.persist), common.num(st.verify), math.min(st.n, 7 * RATE), st.cost_7d, st.cost_all,
        st.repairs_7d, st.latency_7d, st.financial, math.floor(st.bytes + 0.5))
    end
  end
  common.say("(wall-clock medians, times in ms; \"in 7d\": the generated rows the 7-day reports read, %d a day;"
    .. " cpu_* fields: this process's CPU, which on PostgreSQL leaves out the server's)", RATE)
end

local ok, err = pcall(main)
for name in pairs(made) do pcall(drop, name) end -- the databases and stores go, whatever happened
common.rm(scratch)
if not ok then
  io.stderr:write("bench/scale.lua: " .. tostring(err) .. "\n")
  os.exit(1)
end
