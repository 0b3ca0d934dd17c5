-- bench/analytics.lua — issue 7.4: the seed's acceptance queries at scale.
--
-- bench/gen_rows.c fills a store with N realistic snapshots (1,000,000 at full
-- size: 50 templates of skewed popularity, 90 days of created_at, costs from
-- list prices, per-template repair rates; ~10 KB per row with its prompts).
-- Or BENCH_ANALYTICS_DB names an existing such store (make bench shares one
-- with bench/memory.lua). Then, each a median of several warm runs:
--   Financial Test  avg(estimated_cost) of one template: store:query with the
--                   README's SQL, and genaudit.report.cost{template=...}
--   Stability Test  top 3 templates by repair_count over 7 days: store:query
--                   with the README's SQL, and genaudit.report.repairs
-- beside the naive way: json_extract(token_metrics, '$.estimated_cost') (and
-- '$.repair_count') over a full table scan (NOT INDEXED: no index at all).
-- "before": the store as gen_rows left it, opened read-only (no statistics,
-- as a store that was never analyzed); "after": opened by genaudit.open, whose
-- migration step now runs ANALYZE (analysis_limit=400) when the snapshots
-- table has no statistics (csrc/ga_store.c refresh_stats).
local root = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
package.path = root .. "/?.lua;" .. root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. (rawget(_G, "jit") and "luajit" or "lua54") .. "/?.so;" .. package.cpath

local common = require("bench.common")
local genaudit = require("genaudit")
local report = require("genaudit.report")

local N = common.size{ small = 5000, full = 1000000 }
local RUNS = common.size{ small = 3, full = 7 }
local NAIVE_RUNS = common.size{ small = 1, full = 2 }
local TEMPLATE = "template-07"
local now = common.now_us

local FINANCIAL = "SELECT count(*) AS posts, avg(estimated_cost) AS avg_cost FROM generation_snapshots"
  .. " WHERE template_id = ?"
local STABILITY = "SELECT template_id, sum(repair_count) AS repairs, count(*) AS posts FROM generation_snapshots"
  .. " WHERE created_at >= strftime('%Y-%m-%d %H:%M:%f', 'now', '-7 days')"
  .. " GROUP BY template_id ORDER BY repairs DESC, template_id LIMIT 3"
-- The reports' answers in bare SQL (SQLite 3.40's built-ins only), reading
-- the same rows through the same indexes: what a user would write by hand
-- for the same figures. Percentiles nearest-rank by window functions (3.40
-- has no percentile aggregate); the floor is the same rows aggregated with
-- no percentile at all (one index scan).
local COUNTED = "status = 'completed' AND replay_of IS NULL"
local BARE_COST = "WITH b AS (SELECT estimated_cost_picousd AS c, total_tokens AS t FROM generation_snapshots"
  .. " WHERE template_id = ? AND " .. COUNTED .. "),"
  .. " r AS (SELECT c, t, row_number() OVER (ORDER BY c IS NULL, c) AS rc,"
  .. " count(c) OVER () AS nc FROM b) SELECT count(*) AS posts, count(c) AS priced, sum(c) AS total, sum(t) AS tokens,"
  .. " max(CASE WHEN rc = (nc * 50 + 99) / 100 THEN c END) AS p50, max(CASE WHEN rc = (nc * 95 + 99) / 100 THEN c END)"
  .. " AS p95 FROM r"
local FLOOR_COST = "SELECT count(*) AS posts, count(estimated_cost_picousd) AS priced, sum(estimated_cost_picousd)"
  .. " AS total, sum(total_tokens) AS tokens FROM generation_snapshots WHERE template_id = ? AND " .. COUNTED
local SINCE7 = "created_at >= strftime('%Y-%m-%d %H:%M:%f', 'now', '-7 days')"
local BARE_REPAIRS = "WITH top AS (SELECT template_id, sum(repair_count) AS repairs, count(*) AS posts,"
  .. " avg(initial_validation_score) AS score FROM generation_snapshots WHERE " .. SINCE7 .. " AND " .. COUNTED
  .. " GROUP BY template_id ORDER BY repairs DESC, template_id LIMIT 3)"
  .. " SELECT t.template_id, t.repairs, t.posts, t.score, j.value AS slug, count(*) AS n FROM top t"
  .. " JOIN generation_snapshots b ON b.template_id = t.template_id AND b." .. SINCE7 .. " AND b.status = 'completed'"
  .. " AND b.replay_of IS NULL AND b.repair_count > 0, json_each(b.repair_metrics, '$.repair_types') AS j"
  .. " GROUP BY t.template_id, j.value"
local TTFT = "CASE WHEN json_type(performance_metrics, '$.time_to_first_token_ms') IN ('integer', 'real')"
  .. " THEN json_extract(performance_metrics, '$.time_to_first_token_ms') END"
local function bare_latency_sql()
  local cols, ranks, picks = {}, {}, {}
  for _, m in ipairs({ { "t", "total_latency_ms" }, { "p", "provider_latency_ms" },
                       { "o", "total_latency_ms - provider_latency_ms" }, { "f", TTFT } }) do
    cols[#cols + 1] = m[2] .. " AS " .. m[1]
    ranks[#ranks + 1] = ("row_number() OVER (PARTITION BY g ORDER BY %s IS NULL, %s) AS r%s,"
      .. " count(%s) OVER (PARTITION BY g) AS n%s"):format(m[1], m[1], m[1], m[1], m[1])
    for _, pc in ipairs({ 50, 95, 99 }) do
      picks[#picks + 1] = ("max(CASE WHEN r%s = (n%s * %d + 99) / 100 THEN %s END)"):format(m[1], m[1], pc, m[1])
    end
  end
  return "WITH b AS (SELECT model_identifier AS g, " .. table.concat(cols, ", ") .. " FROM generation_snapshots WHERE "
    .. COUNTED .. "), r AS (SELECT g, t, p, o, f, " .. table.concat(ranks, ", ") .. " FROM b)"
    .. " SELECT g, count(*) AS posts, " .. table.concat(picks, ", ") .. " FROM r GROUP BY g ORDER BY g"
end
local BARE_LATENCY = bare_latency_sql()
local FLOOR_LATENCY = "SELECT model_identifier AS g, count(*) AS posts, sum(total_latency_ms),"
  .. " sum(provider_latency_ms), sum(" .. TTFT .. ") FROM generation_snapshots WHERE " .. COUNTED
  .. " GROUP BY model_identifier"
local NAIVE_FINANCIAL = "SELECT count(*) AS posts, avg(json_extract(token_metrics, '$.estimated_cost')) AS avg_cost"
  .. " FROM generation_snapshots NOT INDEXED WHERE template_id = ?"
local NAIVE_STABILITY = "SELECT template_id, sum(json_extract(repair_metrics, '$.repair_count')) AS repairs,"
  .. " count(*) AS posts FROM generation_snapshots NOT INDEXED"
  .. " WHERE created_at >= strftime('%Y-%m-%d %H:%M:%f', 'now', '-7 days')"
  .. " GROUP BY template_id ORDER BY repairs DESC, template_id LIMIT 3"

common.title(string.format("analytics at %d snapshots: the Financial and Stability Tests", N))

local dir = common.tmpdir("analytics")
local db = os.getenv("BENCH_ANALYTICS_DB")
if not db or db == "" or common.file_size(db) == 0 then
  db = dir .. "/analytics.db"
  assert(genaudit.open("sqlite:" .. db)):close()
  local t0 = now()
  local out = common.run(table.concat({ common.tool("gen_rows"), common.quote(db), string.format("%d", N) }, " "))
  local kv = common.kv(out)
  common.bench("analytics_generate", "rows/s", { { "genaudit", kv.rows_per_s }, { "rows", kv.rows },
    { "baseline", "requested:" .. N }, { "ratio", kv.rows / N }, { "target", "=1" } })
  common.say("bench/gen_rows.c wrote %d rows in %.1f s (%.2f GB file)", kv.rows, (now() - t0) / 1e6,
    common.file_size(db) / 1e9)
end

-- ms of the median of RUNS timed runs of fn (after one warm-up run).
local function time_ms(runs, fn)
  fn()
  local t = {}
  for i = 1, runs do
    local t0 = now()
    fn()
    t[i] = (now() - t0) / 1000
  end
  return common.median(t), t
end

local function plan(store, sql, params)
  local lines = {}
  for _, r in ipairs(assert(store:query("EXPLAIN QUERY PLAN " .. sql, params))) do lines[#lines + 1] = r.detail end
  return table.concat(lines, " | ")
end

local function stats_rows(store)
  local has = store:query("SELECT 1 AS x FROM sqlite_master WHERE name = 'sqlite_stat1'", {})
  if #has == 0 then return 0 end
  return #assert(store:query("SELECT * FROM sqlite_stat1 WHERE tbl = 'generation_snapshots'", {}))
end

-- The four genaudit figures on an open store.
local function genaudit_runs(store, runs)
  local r = {}
  r.fin = time_ms(runs, function() assert(store:query(FINANCIAL, { TEMPLATE })) end)
  r.fin_report = time_ms(runs, function() assert(report.cost(store, { by = "template", template = TEMPLATE })) end)
  r.stab = time_ms(runs, function() assert(store:query(STABILITY, {})) end)
  r.stab_report = time_ms(runs, function() assert(report.repairs(store, { top = 3, since = "7d" })) end)
  r.bare_cost = time_ms(runs, function() assert(store:query(BARE_COST, { TEMPLATE })) end)
  r.floor_cost = time_ms(runs, function() assert(store:query(FLOOR_COST, { TEMPLATE })) end)
  r.bare_repairs = time_ms(runs, function() assert(store:query(BARE_REPAIRS, {})) end)
  local lruns = math.min(runs, common.size{ small = 3, full = 2 }) -- full scans: each reads every row
  r.lat_report = time_ms(lruns, function() assert(report.latency(store, { by = "model" })) end)
  r.bare_latency = time_ms(lruns, function() assert(store:query(BARE_LATENCY, {})) end)
  r.floor_latency = time_ms(lruns, function() assert(store:query(FLOOR_LATENCY, {})) end)
  r.stab_plan = plan(store, STABILITY, {})
  r.fin_plan = plan(store, FINANCIAL, { TEMPLATE })
  return r
end

-- before: never analyzed (read-only: neither migrations nor close() may analyze)
local store = assert(genaudit.open("sqlite:" .. db, { readonly = true }))
local total = store:query("SELECT count(*) AS n FROM generation_snapshots", {})[1].n
local before_stats = stats_rows(store)
local before = genaudit_runs(store, math.min(RUNS, 3))
local fin_rows = assert(store:query(FINANCIAL, { TEMPLATE }))
local stab_rows = assert(store:query(STABILITY, {}))
local naive_fin = time_ms(NAIVE_RUNS, function() assert(store:query(NAIVE_FINANCIAL, { TEMPLATE })) end)
local naive_stab = time_ms(NAIVE_RUNS, function() assert(store:query(NAIVE_STABILITY, {})) end)
local nfin = assert(store:query(NAIVE_FINANCIAL, { TEMPLATE }))
local nstab = assert(store:query(NAIVE_STABILITY, {}))
store:close()

-- the answers agree
assert(nfin[1].posts == fin_rows[1].posts, "naive and indexed Financial Test disagree on posts")
assert(math.abs(nfin[1].avg_cost - fin_rows[1].avg_cost) <= 1e-9 * math.abs(fin_rows[1].avg_cost),
  "naive and indexed Financial Test disagree on avg_cost")
for i = 1, 3 do
  assert((nstab[i] and nstab[i].template_id) == (stab_rows[i] and stab_rows[i].template_id),
    "naive and indexed Stability Test disagree")
end

-- after: genaudit.open runs the migrations step, which analyzes a large table
-- that has no statistics
local t0 = now()
store = assert(genaudit.open("sqlite:" .. db))
local open_ms = (now() - t0) / 1000
local after_stats = stats_rows(store)
local after = genaudit_runs(store, RUNS)
store:close()

-- The Financial Test as a user types it: the genaudit CLI process against
-- the sqlite3 CLI process running the README's SQL (each a whole process:
-- start, open, answer, exit), the same store.
local function cli_ms(cmd)
  return time_ms(RUNS, function() common.run(cmd .. " >/dev/null 2>&1") end)
end
local cli_genaudit = cli_ms(table.concat({ common.quote(common.interpreter()), common.quote(common.root
  .. "/bin/genaudit"), "--db", common.quote(db), "report cost --template", TEMPLATE }, " "))
local function sqlite3_cli(sql)
  return cli_ms(table.concat({ "sqlite3", common.quote(db), common.quote((sql:gsub("%?", "'" .. TEMPLATE .. "'"))) },
    " "))
end
-- `report cost` prints posts, priced posts, total/avg/p50/p95 cost and tokens:
-- the sqlite3 CLI runs the bare SQL giving those (BARE_COST), and the README's
-- Financial Test SQL (avg only) is shown beside it
local cli_sqlite3 = sqlite3_cli(BARE_COST)
local cli_sqlite3_avg = sqlite3_cli(FINANCIAL)

common.say("%d rows; Financial Test template %s: %d posts, avg_cost %.10g USD", total, TEMPLATE, fin_rows[1].posts,
  fin_rows[1].avg_cost)
local top = {}
for i, r in ipairs(stab_rows) do
  top[i] = string.format("%s (%d repairs, %d posts)", r.template_id, r.repairs, r.posts)
end
common.say("Stability Test, last 7 days: %s", table.concat(top, ", "))
common.bench("analytics_financial", "ms", {
  { "genaudit", after.fin }, { "baseline", "naive_json_scan:" .. common.num(naive_fin) },
  { "ratio", string.format("%.5f", after.fin / naive_fin) }, { "speedup", naive_fin / after.fin },
  { "before_analyze", before.fin }, { "target", "<=20" },
})
common.bench("analytics_financial_report", "ms", {
  { "genaudit", after.fin_report }, { "baseline", "bare_sql_same_answer:" .. common.num(after.bare_cost) },
  { "ratio", string.format("%.3f", after.fin_report / after.bare_cost) },
  { "floor_no_percentiles", after.floor_cost }, { "ratio_to_floor", string.format("%.3f", after.fin_report
    / after.floor_cost) }, { "naive_json_scan", naive_fin }, { "before_analyze", before.fin_report },
  { "target", "<=2" },
})
common.bench("analytics_stability", "ms", {
  { "genaudit", after.stab }, { "baseline", "naive_json_scan:" .. common.num(naive_stab) },
  { "ratio", string.format("%.5f", after.stab / naive_stab) }, { "speedup", naive_stab / after.stab },
  { "before_analyze", before.stab }, { "target", "<=30" },
})
common.bench("analytics_stability_report", "ms", {
  { "genaudit", after.stab_report }, { "baseline", "bare_sql_same_answer:" .. common.num(after.bare_repairs) },
  { "ratio", string.format("%.3f", after.stab_report / after.bare_repairs) },
  { "floor_no_types", after.stab }, { "naive_json_scan", naive_stab }, { "before_analyze", before.stab_report },
  { "target", "<=2" },
})
common.bench("analytics_latency_report", "ms", {
  { "genaudit", after.lat_report }, { "baseline", "bare_sql_same_answer:" .. common.num(after.bare_latency) },
  { "ratio", string.format("%.3f", after.lat_report / after.bare_latency) },
  { "floor_no_percentiles", after.floor_latency }, { "ratio_to_floor", string.format("%.3f", after.lat_report
    / after.floor_latency) }, { "target", "<=2" },
})
common.bench("analytics_cli_financial", "ms", {
  { "genaudit", cli_genaudit }, { "baseline", "sqlite3_cli_same_answer:" .. common.num(cli_sqlite3) },
  { "ratio", string.format("%.3f", cli_genaudit / cli_sqlite3) }, { "target", "<=3" },
  { "sqlite3_cli_avg_only", cli_sqlite3_avg }, { "ratio_avg_only", string.format("%.3f", cli_genaudit
    / cli_sqlite3_avg) },
})
common.bench("analytics_open_analyze", "ms", {
  { "genaudit", open_ms }, { "stat1_rows_before", before_stats }, { "stat1_rows_after", after_stats },
  -- the one-off ANALYZE at open against the Financial query it speeds up (informational)
  { "baseline", "financial_query:" .. common.num(after.fin) }, { "ratio", string.format("%.3f", open_ms / after.fin) },
  { "target", "info" },
})
common.say("ms, median of warm runs        %10s %10s %12s", "no stats", "analyzed", "naive scan")
common.say("Financial Test, store:query    %10.2f %10.2f %12.1f", before.fin, after.fin, naive_fin)
common.say("Financial Test, report.cost    %10.2f %10.2f", before.fin_report, after.fin_report)
common.say("Stability Test, store:query    %10.2f %10.2f %12.1f", before.stab, after.stab, naive_stab)
common.say("Stability Test, report.repairs %10.2f %10.2f", before.stab_report, after.stab_report)
common.say("plan, 7-day query, no stats: %s", before.stab_plan)
common.say("plan, 7-day query, analyzed: %s", after.stab_plan)
common.say("plan, Financial Test:        %s", after.fin_plan)
common.say("genaudit.open (migrations + ANALYZE with analysis_limit=400): %.1f ms; sqlite_stat1 rows for the table:"
  .. " %d before, %d after", open_ms, before_stats, after_stats)
common.rm(dir)
