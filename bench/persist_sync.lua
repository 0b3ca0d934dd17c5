-- bench/persist_sync.lua — issue 7.1: synchronous persist throughput.
--
-- genaudit's persist_generation (one transaction per snapshot, WAL,
-- synchronous=NORMAL) against
--   raw_c:  bench/raw_insert.c inserting the very bytes genaudit stored (read
--           back from genaudit's own store) through one prepared statement,
--           one transaction per row, into a fresh store of the same schema;
--   luasql: the plain-Lua way — LuaSQL (Debian's lua-sql-sqlite3), cjson for
--           the three JSON documents, an INSERT built as a string with
--           conn:escape, autocommit — from the same Lua row tables.
-- Every contender starts from a freshly migrated, empty store; only the insert
-- loop is timed; ROUNDS rounds, the contenders' order rotating from round to
-- round (the machine's page cache and disk see each one in every position);
-- the median of the rounds is reported.
local root = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
package.path = root .. "/?.lua;" .. root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. (rawget(_G, "jit") and "luajit" or "lua54") .. "/?.so;" .. package.cpath

local common = require("bench.common")
local genaudit = require("genaudit")
local cjson = require("cjson")
local socket = require("socket")
local luasql = require("luasql.sqlite3")

local N = common.size{ small = 200, full = 20000 }
local ROUNDS = common.size{ small = 1, full = 5 }
local K = 16

local rows = common.rows(K)
local dir = common.tmpdir("persist")

local function fresh_store(name)
  local path = dir .. "/" .. name .. ".db"
  common.rmdb(path)
  assert(genaudit.open("sqlite:" .. path)):close()
  return path
end

-- genaudit: the SnapshotPersister over a synchronous store.
local function run_genaudit(path)
  local store = assert(genaudit.open("sqlite:" .. path, { synchronous = "normal" }))
  local persister = genaudit.persister(store)
  local t0 = common.now_us()
  for i = 1, N do
    assert(persister:persist_generation(rows[(i - 1) % K + 1]))
  end
  local t1 = common.now_us()
  store:close()
  return N / ((t1 - t0) / 1e6)
end

local function run_raw(src, path, batch)
  local out = common.run(table.concat({ common.tool("raw_insert"), common.quote(src), common.quote(path),
    string.format("%d", N), string.format("%d", batch) }, " "))
  return common.kv(out).rows_per_s
end

local COLS = "id, created_at, org_id, user_id, platform, template_id, template_version, status, content, error,"
  .. " final_system_prompt, final_user_prompt, token_metrics, performance_metrics, repair_metrics, request_params,"
  .. " replay_of"

-- The plain-Lua way: string-built INSERT, escaping, cjson; ids and timestamps
-- made in Lua (a counter-based 26-char id; socket.gettime for milliseconds).
local function run_luasql(path)
  local env = luasql.sqlite3()
  local conn = assert(env:connect(path))
  for _, pragma in ipairs({ "PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA busy_timeout=5000" }) do
    local cur = assert(conn:execute(pragma))
    if type(cur) == "userdata" then cur:close() end
  end
  local function q(v)
    if v == nil then return "NULL" end
    return "'" .. conn:escape(tostring(v)) .. "'"
  end
  local counter = 0
  local t0 = common.now_us()
  for i = 1, N do
    local row = rows[(i - 1) % K + 1]
    local now = socket.gettime()
    counter = counter + 1
    local id = string.format("%013d%013d", math.floor(now * 1000), counter)
    local created = os.date("!%Y-%m-%d %H:%M:%S", math.floor(now))
      .. string.format(".%03d", math.floor(now * 1000) % 1000)
    local sql = "INSERT INTO generation_snapshots (" .. COLS .. ") VALUES (" .. table.concat({
      q(id), q(created), q(row.org_id), q(row.user_id), q(row.platform), q(row.template_id), q(row.template_version),
      q(row.status or "completed"), q(row.content), q(row.error), q(row.final_system_prompt), q(row.final_user_prompt),
      q(cjson.encode(row.token_usage)), q(cjson.encode(row.performance)), q(cjson.encode(row.repair_info)),
      q(row.request_params and cjson.encode(row.request_params)), q(row.replay_of),
    }, ",") .. ")"
    assert(conn:execute(sql))
  end
  local t1 = common.now_us()
  conn:close()
  env:close()
  return N / ((t1 - t0) / 1e6)
end

local function count(path)
  local s = assert(genaudit.open("sqlite:" .. path, { migrate = false }))
  local n = s:query("SELECT count(*) AS n FROM generation_snapshots", {})[1].n
  s:close()
  return n
end

common.title("persist, synchronous: one transaction per snapshot, WAL, synchronous=NORMAL")
common.say("%d rows per contender per round, %d round(s); %d distinct rows, %d bytes of prompts+content each (+ JSON)",
  N, ROUNDS, K, common.row_text_bytes(rows[1]))

-- the bytes raw C copies: the K rows as genaudit stores them
local src = fresh_store("source")
do
  local store = assert(genaudit.open("sqlite:" .. src))
  for i = 1, K do assert(store:persist_generation(rows[i])) end
  store:close()
end

local ga, raw, lsql = {}, {}, {}
for round = 1, ROUNDS do
  local p_ga, p_raw, p_lua = fresh_store("ga"), fresh_store("raw"), fresh_store("luasql")
  local contenders = {
    function() ga[round] = run_genaudit(p_ga) end,
    function() raw[round] = run_raw(src, p_raw, 1) end,
    function() lsql[round] = run_luasql(p_lua) end,
  }
  for k = 0, 2 do contenders[(round + k - 1) % 3 + 1]() end
  assert(count(p_ga) == N and count(p_raw) == N and count(p_lua) == N, "a contender lost rows")
  common.say("round %d: genaudit %s rows/s, raw C %s rows/s, LuaSQL %s rows/s  (store %.1f MB)", round,
    common.num(ga[round]), common.num(raw[round]), common.num(lsql[round]), common.file_size(p_ga) / 1e6)
  for _, p in ipairs({ p_ga, p_raw, p_lua }) do common.rmdb(p) end
end

local g, r, l = common.median(ga), common.median(raw), common.median(lsql)
common.bench("persist_sync", "rows/s", {
  { "genaudit", g }, { "baseline", "raw_c:" .. common.num(r) }, { "ratio", string.format("%.3f", g / r) },
  { "target", ">=0.90" },
})
common.bench("persist_sync_vs_lua", "rows/s", {
  { "genaudit", g }, { "baseline", "luasql:" .. common.num(l) }, { "ratio", string.format("%.3f", g / l) },
  { "target", ">=2.0" },
})
common.say("per row: genaudit %.1f us, raw C %.1f us, LuaSQL %.1f us (medians of the rounds)", 1e6 / g, 1e6 / r,
  1e6 / l)
common.say("spread over the rounds (rows/s): genaudit %s..%s, raw C %s..%s, LuaSQL %s..%s",
  common.num(common.percentile(ga, 0)), common.num(common.percentile(ga, 100)), common.num(common.percentile(raw, 0)),
  common.num(common.percentile(raw, 100)), common.num(common.percentile(lsql, 0)),
  common.num(common.percentile(lsql, 100)))
common.rm(dir)
