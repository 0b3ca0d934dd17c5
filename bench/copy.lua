-- bench/copy.lua — issue 12.7: `genaudit copy` against the async persist path.
--
-- Both contenders write the same N rows (bench/common.rows) into a fresh
-- SQLite store with the same writer settings as bench/async.lua's throughput
-- run (synchronous = normal, queue 10,000, on_full = "block"):
--   async persist  persist_generation of the row tables, then flush()
--   copy           copy.run from a store holding those N rows into an async
--                  destination, as `genaudit copy` opens it (batch 500): the
--                  source read in id order, one existence query per batch,
--                  the documents decoded (core.json_decode) and rebuilt,
--                  then flush()
-- in alternating order, ROUNDS times; the medians and their ratio are
-- reported (target: copy >= 0.8x the async persist rows/s).
local root = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
package.path = root .. "/?.lua;" .. root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. (rawget(_G, "jit") and "luajit" or "lua54") .. "/?.so;" .. package.cpath

local common = require("bench.common")
local genaudit = require("genaudit")
local copy = require("genaudit.copy")

local N = common.size{ small = 600, full = 20000 }
local ROUNDS = common.size{ small = 1, full = 3 }
local K = 16

local rows = common.rows(K)
local dir = common.tmpdir("copy")
local now = common.now_us

local function fresh(name)
  local path = dir .. "/" .. name .. ".db"
  common.rmdb(path)
  return path
end

local function count(store)
  return store:query("SELECT count(*) AS n FROM generation_snapshots", {})[1].n
end

common.title("copy: genaudit copy vs the async persist path, rows/s")

-- the source of every copy: N rows, written once
local src_path = fresh("source")
do
  local s = assert(genaudit.open("sqlite:" .. src_path, { synchronous = "normal", async = { queue = 10000 } }))
  for i = 1, N do assert(s:persist_generation(rows[(i - 1) % K + 1])) end
  assert(s:flush())
  s:close()
end

local persist_rates, copy_rates = {}, {}

local function run_persist(round)
  local path = fresh("persist")
  local store = assert(genaudit.open("sqlite:" .. path, { synchronous = "normal",
    async = { queue = 10000, batch = 100, on_full = "block" } }))
  local t0 = now()
  for i = 1, N do assert(store:persist_generation(rows[(i - 1) % K + 1])) end
  assert(store:flush())
  persist_rates[round] = N / ((now() - t0) / 1e6)
  assert(count(store) == N, "async persist: rows missing")
  store:close()
  common.rmdb(path)
end

local function run_copy(round)
  local path = fresh("copy")
  local from = assert(genaudit.open("sqlite:" .. src_path, { migrate = false, readonly = true }))
  local to = assert(genaudit.open("sqlite:" .. path, { synchronous = "normal",
    async = { queue = 10000, batch = 500, on_full = "block" } }))
  local t0 = now()
  local r = assert(copy.run(from, to))
  copy_rates[round] = N / ((now() - t0) / 1e6) -- copy.run flushes before it returns
  assert(r.copied == N and r.failed == 0 and count(to) == N, "copy: rows missing")
  from:close()
  to:close()
  common.rmdb(path)
end

for round = 1, ROUNDS do -- alternating which goes first
  if round % 2 == 1 then
    run_persist(round)
    run_copy(round)
  else
    run_copy(round)
    run_persist(round)
  end
  common.say("round %d: async persist %s rows/s, copy %s rows/s", round, common.num(persist_rates[round]),
    common.num(copy_rates[round]))
end
local p, c = common.median(persist_rates), common.median(copy_rates)
common.bench("copy_throughput", "rows/s", {
  { "genaudit", c }, { "baseline", "async_persist:" .. common.num(p) }, { "ratio", string.format("%.3f", c / p) },
  { "target", ">=0.80" },
})
common.say("%d rows of ~%d KB each; medians over %d round(s)", N,
  math.floor(common.row_text_bytes(rows[1]) / 1024 + 0.5), ROUNDS)
common.rmdb(src_path)
common.rm(dir)
