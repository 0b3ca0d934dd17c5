-- Several processes on one SQLite file, as nginx workers are.
local genaudit = require("genaudit")
local tmp = require("spec.support.tmp")

describe("several processes", function()
  it("can open and migrate one new database file at the same time", function()
    local dir = tmp.dir()
    local db = dir .. "/shared.db"
    local cmd = {}
    for i = 1, 6 do
      cmd[#cmd + 1] = ("LUA_PATH='./lua/?.lua;./lua/?/init.lua;;' LUA_CPATH='./build/lua54/?.so;;' lua5.4 -e " ..
        "'local s, e = require(\"genaudit\").open(\"sqlite:%s\"); io.write(s and s:schema_version() or e); " ..
        "io.stdout:flush()' " ..
        "> %s/out%d 2>&1 &"):format(db, dir, i)
    end
    cmd[#cmd + 1] = "wait"
    assert(os.execute(table.concat(cmd, "\n")))
    local outs = {}
    for i = 1, 6 do outs[i] = tmp.read(dir .. "/out" .. i) end
    tmp.rm(dir)
    assert.same({ "8", "8", "8", "8", "8", "8" }, outs)
  end)

  it("write one file at once: every row arrives and no caller sees SQLITE_BUSY", function()
    local dir = tmp.dir()
    local db = dir .. "/shared.db"
    assert(genaudit.open("sqlite:" .. db)):close()
    local script = [[
      local g = require("genaudit")
      local mode, n, tag = ...
      local s = assert(g.open("sqlite:]] .. db .. [[", { async = mode == "async" or nil }))
      local p = g.persister(s)
      local bad = 0
      for i = 1, n do
        local id = p:persist_generation{ org_id = tag, user_id = i, platform = "x", template_id = "t",
          final_system_prompt = "s", final_user_prompt = "u",
          token_usage = { prompt_tokens = 1, completion_tokens = 1 },
          performance = { total_latency_ms = 1, provider_latency_ms = 1 }, repair_info = {} }
        if not id then bad = bad + 1 end
      end
      assert(s:flush())
      s:close()
      io.write(bad)
      io.stdout:flush() -- before exit: a crash of a checker at exit (make check) cannot lose it
    ]]
    local f = assert(io.open(dir .. "/w.lua", "w"))
    f:write(script)
    f:close()
    local cmd = {}
    for i = 1, 4 do
      cmd[#cmd + 1] = ("LUA_PATH='./lua/?.lua;./lua/?/init.lua;;' LUA_CPATH='./build/lua54/?.so;;' " ..
        "lua5.4 %s/w.lua %s 300 w%d > %s/out%d 2>&1 &"):format(dir, i % 2 == 0 and "async" or "sync", i, dir, i)
    end
    cmd[#cmd + 1] = "wait"
    assert(os.execute(table.concat(cmd, "\n")))
    local outs = {}
    for i = 1, 4 do outs[i] = tmp.read(dir .. "/out" .. i) end
    local s = assert(genaudit.open("sqlite:" .. db))
    local rows = s:query("SELECT org_id, count(*) AS n FROM generation_snapshots GROUP BY org_id ORDER BY org_id")
    s:close()
    tmp.rm(dir)
    assert.same({ "0", "0", "0", "0" }, outs)
    assert.same({ { org_id = "w1", n = 300 }, { org_id = "w2", n = 300 }, { org_id = "w3", n = 300 },
      { org_id = "w4", n = 300 } }, rows)
  end)

  -- Found with spec/tamper_spec.lua (issue 14); on main too. genaudit.open()
  -- creates the file with open() and close() (csrc/ga_store.c, "create the
  -- file ourselves so it is private"): close() drops every POSIX lock this
  -- process holds on the file, the WAL connection's shared lock of the store
  -- already open included, so another process closing believes it is the
  -- last, checkpoints and deletes the -wal and -shm files under the open
  -- store, which then reads "database disk image is malformed" (SQLite's
  -- "How To Corrupt", 2.2). O_EXCL (no fd for an existing file) fixes it.
  it("keeps a store readable after a second store on its file opened in this process and others wrote", function()
    local dir = tmp.dir()
    local db = dir .. "/two.db"
    local row = { org_id = "o", user_id = "u", platform = "x", template_id = "t", final_system_prompt = "s",
      final_user_prompt = "u", token_usage = { prompt_tokens = 1, completion_tokens = 1 },
      performance = { total_latency_ms = 1, provider_latency_ms = 1 }, repair_info = {} }
    local s = assert(genaudit.open("sqlite:" .. db))
    for _ = 1, 4 do assert(s:persist_generation(row)) end
    local b = assert(genaudit.open("sqlite:" .. db))
    for _ = 1, 4 do assert(b:persist_generation(row)) end
    b:close()
    tmp.write(dir .. "/w.lua", "local s = assert(require('genaudit').open('sqlite:" .. db .. "'))\n"
      .. "for _ = 1, 3 do assert(s:persist_generation{ org_id = 'o', user_id = 'w', platform = 'x', template_id = 't',"
      .. " final_system_prompt = 's', final_user_prompt = 'u', token_usage = { prompt_tokens = 1,"
      .. " completion_tokens = 1 }, performance = { total_latency_ms = 1, provider_latency_ms = 1 },"
      .. " repair_info = {} }) end\ns:close()\n")
    for _ = 1, 2 do
      assert(os.execute("LUA_PATH='./lua/?.lua;./lua/?/init.lua;;' LUA_CPATH='./build/lua54/?.so;;' lua5.4 "
        .. dir .. "/w.lua"))
    end
    local rows, err = s:query("SELECT count(*) AS n FROM generation_snapshots")
    s:close()
    tmp.rm(dir)
    assert.same({ { { n = 14 } }, nil }, { rows, err })
  end)

  -- 4 async + 4 sync writers for SECONDS each, busy_timeout 1 s: the write
  -- lock changes hands thousands of times; a sync persist waits its turn
  -- (retrying a BUSY within busy_timeout) and an async batch retries, so no
  -- caller ever sees BUSY and every acknowledged row is there.
  -- BUSY_MS is a wall-clock bound, so it must hold on a loaded machine too:
  -- with 200 ms, a sync writer saw BUSY in 16 of 30 runs under load (8 writer
  -- processes on 2 busy cores: a lock holder descheduled for 200 ms is
  -- normal there; `make test` failed with "1721 passed, 1 failed"); with
  -- 1000 ms, in 0 of 30 runs under the same load. It still catches the
  -- starvation this test was written for: with SQLite's stock busy handler
  -- (sleeps up to 100 ms) instead of the store's polling one, 28 of 30 runs
  -- fail at 1000 ms (only 5 of 15 at 2000 ms: so not more).
  it("4 async + 4 sync writers with a short busy_timeout: every row arrives, no caller sees BUSY", function()
    local SECONDS, BUSY_MS = 2.5, 1000
    local dir = tmp.dir()
    local db = dir .. "/contended.db"
    assert(genaudit.open("sqlite:" .. db)):close()
    local script = [[
      local g = require("genaudit")
      local mode, tag, seconds = ...
      local clock = g.stopwatch()
      local s = assert(g.open("sqlite:]] .. db .. [[", { busy_timeout = ]] .. BUSY_MS .. [[,
        async = mode == "async" and { batch = 50 } or nil }))
      local p = g.persister(s)
      local ok, bad = 0, {}
      while clock:elapsed_ms() < tonumber(seconds) * 1000 do
        local id, err = p:persist_generation{ org_id = tag, user_id = ok, platform = "x", template_id = mode,
          final_system_prompt = "s", final_user_prompt = "u", content = string.rep("c", ok % 3000),
          token_usage = { prompt_tokens = 1, completion_tokens = 1 },
          performance = { total_latency_ms = 1, provider_latency_ms = 1 }, repair_info = {} }
        if id then ok = ok + 1 else bad[#bad + 1] = err end
      end
      local fok, ferr = s:flush()
      if not fok then bad[#bad + 1] = ferr end
      s:close()
      io.write(ok, " ", #bad, " ", bad[1] or "", "\n")
    ]]
    tmp.write(dir .. "/w.lua", script)
    local cmd = {}
    for i = 1, 8 do
      cmd[#cmd + 1] = ("LUA_PATH='./lua/?.lua;./lua/?/init.lua;;' LUA_CPATH='./build/lua54/?.so;;' " ..
        "lua5.4 %s/w.lua %s w%d %s > %s/out%d 2>&1 &"):format(dir, i <= 4 and "async" or "sync", i, SECONDS, dir, i)
    end
    cmd[#cmd + 1] = "wait"
    assert(os.execute(table.concat(cmd, "\n")))
    local s = assert(genaudit.open("sqlite:" .. db))
    local counts = {}
    for _, r in ipairs(s:query("SELECT org_id, count(*) AS n FROM generation_snapshots GROUP BY org_id")) do
      counts[r.org_id] = r.n
    end
    s:close()
    local outs, want, got = {}, {}, {}
    for i = 1, 8 do
      outs[i] = tmp.read(dir .. "/out" .. i)
      local ok, nbad, first = outs[i]:match("^(%d+) (%d+) ([^\n]*)\n$")
      assert.is_not_nil(ok, "writer " .. i .. " said: " .. outs[i])
      assert.same({ "0", "" }, { nbad, first }, "writer " .. i)
      assert.is_true(tonumber(ok) > 0, "writer " .. i .. " wrote nothing")
      want["w" .. i], got["w" .. i] = tonumber(ok), counts["w" .. i]
    end
    tmp.rm(dir)
    assert.same(want, got)
  end)
end)
