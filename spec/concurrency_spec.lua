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
        "'local s, e = require(\"genaudit\").open(\"sqlite:%s\"); io.write(s and s:schema_version() or e)' " ..
        "> %s/out%d 2>&1 &"):format(db, dir, i)
    end
    cmd[#cmd + 1] = "wait"
    assert(os.execute(table.concat(cmd, "\n")))
    local outs = {}
    for i = 1, 6 do outs[i] = tmp.read(dir .. "/out" .. i) end
    tmp.rm(dir)
    assert.same({ "5", "5", "5", "5", "5", "5" }, outs)
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
end)
