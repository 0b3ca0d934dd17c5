-- bench/pg_persist.lua — issue 16.4: persisting snapshots to PostgreSQL,
-- against the raw-libpq floor (bench/raw_pg.c) measured in the same run.
--
-- The server is $GENAUDIT_PG_URL (bench/run.sh starts a throwaway one with
-- tools/pg-test-server.sh when it is unset; the specs' tools/run-tests.sh
-- does too). Every contender writes into a database of its own, created for
-- it (CREATE DATABASE on that server, migrated by genaudit.open) and dropped
-- afterwards, so each starts from an empty, freshly migrated store.
-- 1. pg_persist_sync: genaudit's SnapshotPersister over a synchronous
--    PostgreSQL store (one prepared INSERT per row, autocommit: one
--    transaction per row) against raw_pg.c BATCH=1: the same two prepared
--    statements, the same bytes, sealed the same way, one transaction per row.
-- 2. pg_persist_async: genaudit's async writer (queue 10,000, batch 100,
--    on_full = "block"), N rows pushed, then flush(), against raw_pg.c
--    BATCH=100: BEGIN, COPY of 100 rows, COMMIT, sealed per row.
-- The bytes raw_pg.c writes are read from a store genaudit filled with the K
-- rows; round 1 checks that the raw stores verify (their seals are right).
-- ROUNDS rounds, the contenders' order alternating; medians are reported.
local root = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
package.path = root .. "/?.lua;" .. root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. (rawget(_G, "jit") and "luajit" or "lua54") .. "/?.so;" .. package.cpath

local common = require("bench.common")
local genaudit = require("genaudit")

local N_SYNC = common.size{ small = 100, full = 5000 }
local N_ASYNC = common.size{ small = 300, full = 20000 }
local ROUNDS = common.size{ small = 1, full = 5 }
local BATCH = 100
local K = 16

local BASE = os.getenv("GENAUDIT_PG_URL")
if not BASE or BASE == "" then
  io.stderr:write("bench/pg_persist.lua: GENAUDIT_PG_URL is not set (sh bench/run.sh starts a throwaway server;"
    .. " or GENAUDIT_PG_URL=$(sh tools/pg-test-server.sh start))\n")
  os.exit(1)
end

local rows = common.rows(K)
math.randomseed(os.time() + math.floor(os.clock() * 1e6))
local PREFIX = string.format("gabench_%d_%d", os.time() % 100000, math.random(1, 99999))
local made = {}

-- The URL of database `name` on BASE's server.
local function url_of(name)
  local u, n = BASE:gsub("/[^/?]*(%??[^/]*)$", "/" .. name .. "%1", 1)
  assert(n == 1, "cannot tell the database in GENAUDIT_PG_URL")
  return u
end

local function psql(sql)
  common.run("psql -X -q -v ON_ERROR_STOP=1 " .. common.quote(BASE) .. " -c " .. common.quote(sql) .. " 2>&1")
end

-- A fresh, migrated, empty store's URL.
local function fresh(tag)
  local name = PREFIX .. "_" .. tag
  psql("DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)")
  psql("CREATE DATABASE " .. name)
  made[name] = true
  local url = url_of(name)
  assert(genaudit.open(url)):close()
  return url, name
end

local function drop(name)
  psql("DROP DATABASE IF EXISTS " .. name .. " WITH (FORCE)")
  made[name] = nil
end

local function count(url)
  local s = assert(genaudit.open(url, { migrate = false }))
  local n = s:query("SELECT count(*) AS n FROM generation_snapshots", {})[1].n
  s:close()
  return n
end

local function assert_verifies(url, n, who)
  local s = assert(genaudit.open(url, { migrate = false }))
  local report = assert(s:verify())
  s:close()
  assert(report.ok and report.rows == n and report.chains == 1,
    who .. "'s store does not verify: " .. tostring(report.problems[1] and report.problems[1].what))
end

local function run_raw(src, dst, n, batch)
  local kv = common.kv(common.run(table.concat({ common.tool("raw_pg"), common.quote(src), common.quote(dst),
    string.format("%d", n), string.format("%d", batch) }, " ")))
  return kv.rows_per_s, kv.cpu_us_per_row
end

local function run_sync(url)
  local store = assert(genaudit.open(url))
  local persister = genaudit.persister(store)
  local t0 = common.now_us()
  for i = 1, N_SYNC do assert(persister:persist_generation(rows[(i - 1) % K + 1])) end
  local t1 = common.now_us()
  store:close()
  return N_SYNC / ((t1 - t0) / 1e6)
end

local function run_async(url)
  local store = assert(genaudit.open(url, { async = { queue = 10000, batch = BATCH, on_full = "block" } }))
  local persister = genaudit.persister(store)
  local t0 = common.now_us()
  for i = 1, N_ASYNC do assert(persister:persist_generation(rows[(i - 1) % K + 1])) end
  assert(store:flush())
  local t1 = common.now_us()
  local st = store:stats()
  store:close()
  assert(st.written == N_ASYNC and st.failed == 0, "the async writer lost rows")
  return N_ASYNC / ((t1 - t0) / 1e6), st.batches
end

local function main()
  common.title("PostgreSQL persist: genaudit against raw libpq (same statements, same sealed rows)")
  common.say("server %s; sync %d rows per contender per round (one transaction per row), async %d rows (COPY,"
    .. " %d per transaction); %d round(s)", (BASE:gsub("//[^@/]*@", "//")), N_SYNC, N_ASYNC, BATCH, ROUNDS)
  local src, src_name = fresh("src")
  do
    local store = assert(genaudit.open(src))
    for i = 1, K do assert(store:persist_generation(rows[i])) end
    store:close()
  end
  local ga_s, raw_s, ga_a, raw_a, cpu_s, cpu_a, batches = {}, {}, {}, {}, {}, {}, nil
  for round = 1, ROUNDS do
    local u1, n1 = fresh("ga_sync")
    local u2, n2 = fresh("raw_sync")
    local u3, n3 = fresh("ga_async")
    local u4, n4 = fresh("raw_async")
    local function ga_sync() ga_s[round] = run_sync(u1) end
    local function raw_sync() raw_s[round], cpu_s[round] = run_raw(src, u2, N_SYNC, 1) end
    local function ga_async() ga_a[round], batches = run_async(u3) end
    local function raw_async() raw_a[round], cpu_a[round] = run_raw(src, u4, N_ASYNC, BATCH) end
    if round % 2 == 1 then
      ga_sync() raw_sync() ga_async() raw_async()
    else
      raw_sync() ga_sync() raw_async() ga_async()
    end
    assert(count(u1) == N_SYNC and count(u2) == N_SYNC and count(u3) == N_ASYNC and count(u4) == N_ASYNC,
      "a contender lost rows")
    if round == 1 then
      assert_verifies(u1, N_SYNC, "genaudit sync")
      assert_verifies(u2, N_SYNC, "raw libpq (sync)")
      assert_verifies(u3, N_ASYNC, "genaudit async")
      assert_verifies(u4, N_ASYNC, "raw libpq (COPY)")
    end
    common.say("round %d: sync genaudit %s rows/s, raw libpq %s rows/s; async genaudit %s rows/s, raw libpq COPY %s"
      .. " rows/s", round, common.num(ga_s[round]), common.num(raw_s[round]), common.num(ga_a[round]),
      common.num(raw_a[round]))
    for _, n in ipairs({ n1, n2, n3, n4 }) do drop(n) end
  end
  drop(src_name)
  local gs, rs, ga, ra = common.median(ga_s), common.median(raw_s), common.median(ga_a), common.median(raw_a)
  local rs_ratio, ra_ratio = {}, {}
  for i = 1, ROUNDS do
    rs_ratio[i] = ga_s[i] / raw_s[i]
    ra_ratio[i] = ga_a[i] / raw_a[i]
  end
  common.bench("pg_persist_sync", "rows/s", {
    { "genaudit", gs }, { "baseline", "raw_libpq:" .. common.num(rs) },
    { "ratio", string.format("%.3f", common.median(rs_ratio)) }, { "target", ">=0.90" },
  })
  common.bench("pg_persist_async", "rows/s", {
    { "genaudit", ga }, { "baseline", "raw_libpq_copy" .. BATCH .. ":" .. common.num(ra) },
    { "ratio", string.format("%.3f", common.median(ra_ratio)) }, { "target", ">=0.90" },
  })
  common.say("ratio = median over the rounds of genaudit / raw (each round's pair back to back); genaudit's writer"
    .. " committed %d rows in %d batches (%.1f rows per batch; raw: %d)", N_ASYNC, batches, N_ASYNC / batches, BATCH)
  common.say("per row: sync genaudit %.1f us, raw %.1f us (raw client CPU %.1f us); async genaudit %.1f us, raw COPY"
    .. " %.1f us (raw client CPU %.1f us)", 1e6 / gs, 1e6 / rs, common.median(cpu_s), 1e6 / ga, 1e6 / ra,
    common.median(cpu_a))
  common.say("spread (rows/s): sync genaudit %s..%s, raw %s..%s; async genaudit %s..%s, raw %s..%s",
    common.num(common.percentile(ga_s, 0)), common.num(common.percentile(ga_s, 100)),
    common.num(common.percentile(raw_s, 0)), common.num(common.percentile(raw_s, 100)),
    common.num(common.percentile(ga_a, 0)), common.num(common.percentile(ga_a, 100)),
    common.num(common.percentile(raw_a, 0)), common.num(common.percentile(raw_a, 100)))
end

local ok, err = pcall(main)
for name in pairs(made) do pcall(drop, name) end -- the databases go, whatever happened
if not ok then
  io.stderr:write("bench/pg_persist.lua: " .. tostring(err) .. "\n")
  os.exit(1)
end
