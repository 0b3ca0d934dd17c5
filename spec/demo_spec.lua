-- `make demo`'s job keeps working: the example pipeline against the local
-- provider writes completed snapshots with every spec column filled.
local genaudit = require("genaudit")
local tmp = require("spec.support.tmp")
local provider_server = require("spec.support.provider")

describe("examples/demo.lua", function()
  it("uses a keyless provider chosen with GENAUDIT_PROVIDER, at a /v1 base URL, without a dummy key", function()
    local srv = provider_server.start{ quiet = true } -- checks no key: any Authorization would be logged
    local dir = tmp.dir()
    local cmd = "env -u GENAUDIT_API_KEY GENAUDIT_PROVIDER=vllm GENAUDIT_BASE_URL=" .. srv.url .. "/v1"
      .. " GENAUDIT_MODEL=llama-3.1-8b GENAUDIT_DEMO_N=3 LUA_PATH='./lua/?.lua;./lua/?/init.lua;./?.lua;;' "
      .. "LUA_CPATH='./build/lua54/?.so;;' lua5.4 examples/demo.lua " .. dir .. "/demo.db 2>&1"
    local p = io.popen(cmd)
    local out = p:read("a")
    p:close()
    local log = srv:requests()
    srv:stop()
    tmp.rm(dir)
    assert.truthy(out:find("3 generations: 3 completed, 0 failed", 1, true), out)
    assert.is_true(#log >= 3)
    for _, e in ipairs(log) do
      assert.same({ "/v1/chat/completions", "missing", nil }, { e.path, e.auth, e.headers.authorization })
    end
  end)

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
