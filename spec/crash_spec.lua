-- Crash safety: a writer process persisting continuously is killed with
-- SIGKILL at random points, over and over, on one SQLite file. After every
-- kill the store reopens, PRAGMA integrity_check says ok, no row is partial,
-- and every acknowledged snapshot is there: in sync mode each id persist()
-- returned; in async mode each id queued before the writer's last
-- successful flush() (the child prints "FLUSHED n" after each one).
local genaudit = require("genaudit")
local provider = require("spec.support.provider")
local tmp = require("spec.support.tmp")

local ROUNDS = 12

-- The writer: prints each id right after persist returns (line-buffered),
-- and in async mode flushes every 20 rows. content is `n` bytes, n also in
-- prompt_tokens, so a partial row would show.
local CHILD = [[
local g = require("genaudit")
local mode, db, tag = ...
io.stdout:setvbuf("line")
local s = assert(g.open("sqlite:" .. db, { async = mode == "async" and { queue = 500, batch = 50 } or nil }))
local p = g.persister(s)
local i = 0
while true do
  i = i + 1
  local n = (i * 7919) % 6000
  local id = assert(p:persist_generation{ org_id = tag, user_id = i, platform = "x", template_id = mode,
    final_system_prompt = "s", final_user_prompt = "u\0" .. i, content = string.rep("c", n),
    token_usage = { prompt_tokens = n, completion_tokens = 1 },
    performance = { total_latency_ms = 1, provider_latency_ms = 1 }, repair_info = {} })
  io.stdout:write(id, "\n")
  if mode == "async" and i % 20 == 0 then
    assert(s:flush())
    io.stdout:write("FLUSHED ", i, "\n")
  end
end
]]

local function shq(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- The interpreter and the build of genaudit.core this busted run uses.
local function child_env()
  local build = os.getenv("GENAUDIT_BUILD") or (rawget(_G, "jit") and "build/luajit" or "build/lua54")
  return ("LUA_PATH='./lua/?.lua;./lua/?/init.lua;;' LUA_CPATH=%s "):format(shq("./" .. build .. "/?.so;;")),
    provider.interpreter()
end

-- Starts the writer, lets it run `ms`, SIGKILLs it and reaps it (one shell,
-- so the kill and the wait are on our own child). Returns its stdout lines.
local function run_and_kill(dir, mode, db, tag, ms)
  local env, interp = child_env()
  local out = ("%s/%s.out"):format(dir, tag)
  os.execute(("(%s%s %s/child.lua %s %s %s > %s 2>%s.err & p=$!; sleep %.3f; kill -9 $p; wait $p) 2>/dev/null")
    :format(env, shq(interp), dir, mode, shq(db), tag, shq(out), shq(out), ms / 1000))
  local lines = {}
  for line in tmp.read(out):gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
  return lines, tmp.read(out .. ".err")
end

local function crash_rounds(mode)
  local dir = tmp.dir()
  local db = dir .. "/crash.db"
  tmp.write(dir .. "/child.lua", CHILD)
  local seed = os.time()
  math.randomseed(seed)
  local must, printed, stats = {}, 0, {}
  for round = 1, ROUNDS do
    local lines, err = run_and_kill(dir, mode, db, "r" .. round, math.random(60, 400))
    local acked = 0 -- lines [1, acked] are acknowledged
    if mode == "sync" then
      acked = #lines
    else
      for i = #lines, 1, -1 do
        if lines[i]:match("^FLUSHED %d+$") then acked = i break end
      end
    end
    for i = 1, acked do
      if #lines[i] == 26 then must[#must + 1] = lines[i] end
    end
    printed = printed + #lines
    assert.equal("", (err:gsub("Killed%s*", "")), "writer stderr (seed " .. seed .. ")")

    local store = assert(genaudit.open("sqlite:" .. db))
    local check = assert(store:query("PRAGMA integrity_check"))
    assert.same({ { integrity_check = "ok" } }, check, "round " .. round .. " (seed " .. seed .. ")")
    local partial = assert(store:query([[SELECT count(*) AS n FROM generation_snapshots
      WHERE length(content) != json_extract(token_metrics, '$.prompt_tokens')]]))
    assert.equal(0, partial[1].n)
    local present = {}
    for _, r in ipairs(assert(store:query("SELECT id FROM generation_snapshots"))) do present[r.id] = true end
    store:close()
    local missing = {}
    for _, id in ipairs(must) do
      if not present[id] then missing[#missing + 1] = id end
    end
    assert.same({}, missing, ("round %d (seed %d): acknowledged ids missing"):format(round, seed))
    stats.rows = 0
    for _ in pairs(present) do stats.rows = stats.rows + 1 end
  end
  tmp.rm(dir)
  return #must, printed, stats.rows
end

describe("crash safety: a writer SIGKILLed " .. ROUNDS .. " times at random points", function()
  it("sync mode: the database stays intact and every id persist() returned is there", function()
    local acked, printed, rows = crash_rounds("sync")
    assert.is_true(acked > 0, "the writer never got to persist")
    assert.is_true(rows >= acked and printed >= acked)
  end)

  it("async mode: the database stays intact and every id acknowledged by a flush() is there", function()
    local acked, printed, rows = crash_rounds("async")
    assert.is_true(acked > 0, "the writer never got to flush")
    assert.is_true(rows >= acked and printed >= acked)
  end)
end)
