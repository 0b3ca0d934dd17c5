-- `make demo`'s job keeps working: the example pipeline against the local
-- provider writes completed snapshots with every spec column filled.
local genaudit = require("genaudit")
local tmp = require("spec.support.tmp")

describe("examples/demo.lua", function()
  it("runs the example templates and rules into a fresh store", function()
    local dir = tmp.dir()
    local db = dir .. "/demo.db"
    local cmd = "GENAUDIT_API_KEY= GENAUDIT_DEMO_N=10 LUA_PATH='./lua/?.lua;./lua/?/init.lua;./?.lua;;' " ..
      "LUA_CPATH='./build/lua54/?.so;;' lua5.4 examples/demo.lua " .. db .. " 2>&1"
    local p = io.popen(cmd)
    local out = p:read("a")
    p:close()
    assert.truthy(out:find("10 generations: 10 completed, 0 failed", 1, true), out)
    local store = assert(genaudit.open("sqlite:" .. db))
    local r = store:query([[SELECT count(*) AS n, count(DISTINCT template_id) AS templates,
      sum(repair_count > 0) AS repaired, min(length(final_system_prompt)) AS sys, min(length(final_user_prompt)) AS usr,
      sum(estimated_cost IS NULL) AS unpriced, min(provider_latency_ms) AS pmin,
      sum(provider_latency_ms > total_latency_ms) AS bad_latency
      FROM generation_snapshots]])[1]
    store:close()
    tmp.rm(dir)
    assert.same({ 10, 4, 0, 0 }, { r.n, r.templates, r.unpriced, r.bad_latency })
    assert.is_true(r.repaired > 0)
    assert.is_true(r.sys > 50 and r.usr > 50)
    assert.is_true(r.pmin > 0)
  end)
end)
