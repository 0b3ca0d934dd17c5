-- `make demo`'s job keeps working: the example pipeline against the local
-- provider writes completed snapshots with every spec column filled; it says
-- whether it appends or starts fresh, runs keyless providers without a key,
-- and fails plainly.
local genaudit = require("genaudit")
local provider_server = require("spec.support.provider")
local tmp = require("spec.support.tmp")
local q = require("spec.support.util").q

-- Runs examples/demo.lua on `db` with `env` assignments (no provider settings
-- inherited); returns stdout, stderr, exit code. The demo runs `make demo`'s
-- build (build/lua54), so under make check it runs without the sanitizer
-- preload (LeakSanitizer's tracer crashed at its exit, turning rc 0 into 1).
local function demo(db, env)
  local errfile = os.tmpname()
  local cmd = "env -u LD_PRELOAD -u GENAUDIT_API_KEY -u GENAUDIT_PROVIDER -u GENAUDIT_BASE_URL -u GENAUDIT_MODEL"
    .. " -u DEMO_FRESH -u DEMO_STREAM " ..
    (env or "") .. " LUA_PATH='./lua/?.lua;./lua/?/init.lua;./?.lua;;' LUA_CPATH='./build/lua54/?.so;;' " ..
    "lua5.4 examples/demo.lua " .. q(db) .. " 2>" .. q(errfile) .. '; echo "rc=$?"'
  local p = assert(io.popen(cmd))
  local all = p:read("a")
  p:close()
  local err = tmp.read(errfile)
  os.remove(errfile)
  local out, rc = all:match("^(.*)rc=(%d+)\n$")
  return out, err, tonumber(rc)
end

local function count(db)
  local store = assert(genaudit.open("sqlite:" .. db))
  local n = store:query("SELECT count(*) AS n FROM generation_snapshots")[1].n
  store:close()
  return n
end

describe("examples/demo.lua", function()
  local dir, db
  before_each(function()
    dir = tmp.dir()
    db = dir .. "/demo.db"
  end)
  after_each(function() tmp.rm(dir) end)

  it("uses a keyless provider chosen with GENAUDIT_PROVIDER, at a /v1 base URL, without a dummy key", function()
    local srv = provider_server.start{ quiet = true } -- checks no key: any Authorization would be logged
    local out, _, rc = demo(db, "GENAUDIT_PROVIDER=vllm GENAUDIT_BASE_URL=" .. srv.url .. "/v1"
      .. " GENAUDIT_MODEL=llama-3.1-8b GENAUDIT_DEMO_N=3")
    local log = srv:requests()
    srv:stop()
    assert.equal(0, rc)
    assert.truthy(out:find("3 generations: 3 completed, 0 failed", 1, true), out)
    assert.is_true(#log >= 3)
    for _, e in ipairs(log) do
      assert.same({ "/v1/chat/completions", "missing", nil }, { e.path, e.auth, e.headers.authorization })
    end
  end)

  it("runs the example templates and rules into a fresh store", function()
    local out, err, rc = demo(db, "GENAUDIT_DEMO_N=10")
    assert.same({ "", 0 }, { err, rc })
    assert.truthy(out:find("10 generations: 10 completed, 0 failed", 1, true), out)
    local store = assert(genaudit.open("sqlite:" .. db))
    local r = store:query([[SELECT count(*) AS n, count(DISTINCT template_id) AS templates,
      sum(repair_count > 0) AS repaired, min(length(final_system_prompt)) AS sys, min(length(final_user_prompt)) AS usr,
      sum(estimated_cost IS NULL) AS unpriced, min(provider_latency_ms) AS pmin,
      sum(provider_latency_ms > total_latency_ms) AS bad_latency
      FROM generation_snapshots]])[1]
    store:close()
    assert.same({ 10, 4, 0, 0 }, { r.n, r.templates, r.unpriced, r.bad_latency })
    assert.is_true(r.repaired > 0)
    assert.is_true(r.sys > 50 and r.usr > 50)
    assert.is_true(r.pmin > 0)
  end)

  it("streams with DEMO_STREAM=1: prints each text as it came, stores the same text", function()
    local out, err, rc = demo(db, "GENAUDIT_DEMO_N=4 DEMO_STREAM=1")
    assert.same({ "", 0 }, { err, rc })
    assert.truthy(out:find("4 generations: 4 completed, 0 failed", 1, true), out)
    local store = assert(genaudit.open("sqlite:" .. db))
    local rows = store:query("SELECT content, performance_metrics FROM generation_snapshots ORDER BY id")
    store:close()
    assert.equal(4, #rows)
    for i, r in ipairs(rows) do
      -- the last streamed text printed for generation i is its stored content
      local last
      for pos in out:gmatch("()\n%[" .. i .. " %a+%] ") do last = pos end
      assert.is_number(last, "generation " .. i .. " printed no streamed text")
      local printed = out:sub(last):match("^\n%[%d+ %a+%] (.-)\n%[" .. i .. "%] time to first token ")
      assert.equal(r.content, printed)
      local pm = require("cjson").decode(r.performance_metrics)
      assert.is_true(pm.streamed)
      assert.is_true(pm.time_to_first_token_ms > 0)
      assert.truthy(out:find("[" .. i .. "] time to first token ", 1, true))
    end
  end)

  it("says it starts fresh, then that it appends, and starts over with DEMO_FRESH=1", function()
    local out, _, rc = demo(db, "GENAUDIT_DEMO_N=2")
    assert.equal(0, rc)
    assert.truthy(out:find("starting a fresh " .. db .. "\n", 1, true), out)
    out, _, rc = demo(db, "GENAUDIT_DEMO_N=2")
    assert.equal(0, rc)
    assert.truthy(out:find("appending to " .. db .. " (2 snapshots already there; DEMO_FRESH=1 starts fresh)\n",
      1, true), out)
    assert.equal(4, count(db))
    out, _, rc = demo(db, "GENAUDIT_DEMO_N=2 DEMO_FRESH=1")
    assert.equal(0, rc)
    assert.truthy(out:find("starting a fresh " .. db .. " (DEMO_FRESH=1)\n", 1, true), out)
    assert.equal(2, count(db))
  end)

  describe("with a provider chosen by GENAUDIT_PROVIDER", function()
    local srv
    setup(function() srv = provider_server.start{ quiet = true } end) -- checks no key
    teardown(function() srv:stop() end)
    before_each(function() srv:reset() end)

    it("runs vllm and ollama without a key and sends no Authorization header", function()
      for _, kind in ipairs({ "vllm", "ollama" }) do
        srv:reset()
        local out, err, rc = demo(db, "GENAUDIT_DEMO_N=2 DEMO_FRESH=1 GENAUDIT_PROVIDER=" .. kind ..
          " GENAUDIT_BASE_URL=" .. q(srv.url))
        assert.same({ "", 0 }, { err, rc })
        assert.truthy(out:find("provider: " .. kind .. " at " .. srv.url .. "\n", 1, true), out)
        assert.truthy(out:find("2 generations: 2 completed, 0 failed", 1, true), out)
        local reqs = srv:requests()
        assert.is_true(#reqs >= 2)
        for _, r in ipairs(reqs) do assert.equal("missing", r.auth) end
      end
    end)

    it("exits 1 when every generation failed", function()
      srv:queue{ { status = 400 }, { status = 400 }, { status = 400 }, { status = 400 } }
      local out, err, rc = demo(db, "GENAUDIT_DEMO_N=2 GENAUDIT_PROVIDER=vllm GENAUDIT_BASE_URL=" .. q(srv.url))
      assert.equal(1, rc)
      assert.truthy(out:find("2 generations: 0 completed, 2 failed", 1, true), out)
      assert.equal("demo: every generation failed\n", err)
    end)
  end)

  it("rejects an unknown GENAUDIT_PROVIDER with one line and exit code 2", function()
    local out, err, rc = demo(db, "GENAUDIT_PROVIDER=bogus")
    assert.same({ "", 2 }, { out, rc })
    assert.matches("^demo: unknown GENAUDIT_PROVIDER 'bogus' %(one of: [a-z, ]+%)\n$", err)
    assert.falsy(io.open(db))
  end)

  it("asks for a key for a provider that needs one, in one line", function()
    local out, err, rc = demo(db, "GENAUDIT_PROVIDER=openai")
    assert.same({ "", "demo: GENAUDIT_PROVIDER=openai needs GENAUDIT_API_KEY (ollama and vllm run without one)\n", 2 },
      { out, err, rc })
  end)
end)
