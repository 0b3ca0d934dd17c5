-- spec/seams_spec.lua — the Lua layer's seams (issue 19, point 6): the one
-- JSON helper, the output formatting apart from the report, the persister as
-- an alias of the store, the transport handed to the client (never sniffed),
-- the meter's token_metrics document, the run DTO and the one column list.
local genaudit = require("genaudit")
local core = require("genaudit.core")
local json = require("genaudit.json")
local format = require("genaudit.format")
local report = require("genaudit.report")
local schema = require("genaudit.schema")
local dto = require("genaudit.dto")
local client_mod = require("genaudit.client")
local provider_server = require("spec.support.provider")

local mtype = rawget(math, "type") -- nil on LuaJIT

describe("genaudit.json", function()
  it("decodes integers as integers (lua-cjson gives 42.0 on Lua 5.4), null as genaudit.null", function()
    local v = assert(json.decode('{"n":42,"big":9007199254740993,"f":0.5,"z":null,"a":[1,2.5]}'))
    assert.equal(42, v.n)
    assert.equal(0.5, v.f)
    assert.equal(core.null, v.z)
    assert.same({ 1, 2.5 }, v.a)
    if mtype then -- Lua 5.4: the integer subtype, every digit of a 64-bit integer
      assert.same({ "integer", "integer", "float", "integer", "float" },
        { mtype(v.n), mtype(v.big), mtype(v.f), mtype(v.a[1]), mtype(v.a[2]) })
      assert.equal(9007199254740993, v.big)
    end
  end)

  it("encodes back the same text (integers without a fraction, floats exact)", function()
    local text = '{"a":[1,2.5,-7],"cost":0.0037059,"n":42,"z":null}'
    assert.equal(text, json.encode(assert(json.decode(text))))
  end)

  it("json.integer() turns an integral float into an integer, anything else unchanged", function()
    assert.equal(42, json.integer(42.0))
    if mtype then assert.equal("integer", mtype(json.integer(42.0))) end
    assert.equal(2.5, json.integer(2.5))
    assert.equal("42", json.integer("42"))
  end)

  it("refuses bad JSON with the INVALID triple", function()
    local v, err, code = json.decode('{"n":')
    assert.is_nil(v)
    assert.equal("INVALID", code)
    assert.matches("^INVALID: ", err)
    assert.same({ nil, "INVALID: JSON text expected, got nil", "INVALID" }, { json.decode(nil) })
  end)
end)

describe("genaudit.format", function()
  local result = {
    columns = { "template_id", "posts", "total_cost" },
    rows = { { template_id = "a", posts = 3, total_cost = 0.1 + 0.2 }, { template_id = "b,c", posts = 10 } },
  }

  it("renders a report result as an aligned table (numbers right-aligned, NULL as -)", function()
    assert.equal("template_id  posts  total_cost\n"
      .. "a                3         0.3\n"
      .. "b,c             10           -\n", format.table(result))
  end)

  it("renders it as CSV (RFC 4180, CRLF, floats without noise)", function()
    assert.equal('template_id,posts,total_cost\r\na,3,0.3\r\n"b,c",10,\r\n', format.csv(result))
  end)

  it("renders it as JSON (columns in order, absent values null)", function()
    assert.equal('{"columns":["template_id","posts","total_cost"],"rows":['
      .. '{"template_id":"a","posts":3,"total_cost":0.3},{"template_id":"b,c","posts":10,"total_cost":null}]}',
      format.json(result))
  end)

  it("is what genaudit.report's old output names are", function()
    assert.equal(format.json, report.to_json)
    assert.equal(format.json_object, report.json_object)
    assert.equal(format.csv_record, report.csv_record)
  end)
end)

describe("genaudit.schema", function()
  it("COLUMNS lists every stored (not generated) column of generation_snapshots", function()
    local store = assert(genaudit.open("sqlite::memory:"))
    local rows = assert(store:query(
      "SELECT name FROM pragma_table_xinfo('generation_snapshots') WHERE hidden = 0 ORDER BY cid", {}))
    store:close()
    local stored, listed = {}, {}
    for _, r in ipairs(rows) do stored[#stored + 1] = r.name end
    -- the columns callers write, and the seal the store writes (migration 0008)
    for _, c in ipairs(schema.COLUMNS) do listed[#listed + 1] = c end
    for _, c in ipairs(schema.SEAL_COLUMNS) do listed[#listed + 1] = c end
    table.sort(stored)
    table.sort(listed)
    assert.same(stored, listed)
    for col in pairs(schema.DOCUMENTS) do
      local found = false
      for _, c in ipairs(schema.COLUMNS) do found = found or c == col end
      assert.is_true(found, col)
    end
  end)
end)

describe("genaudit.persister (the seed's name, an alias of the store)", function()
  it("require('genaudit.persister').new and genaudit.persister are store.persister", function()
    local store_mod = require("genaudit.store")
    assert.equal(store_mod.persister, require("genaudit.persister").new)
    assert.equal(store_mod.persister, genaudit.persister)
  end)

  it("returns something with persist_generation that writes the row", function()
    local store = assert(genaudit.open("sqlite::memory:"))
    local p = require("genaudit.persister").new(store)
    assert.equal("function", type(p.persist_generation))
    local id = assert(p:persist_generation{ org_id = 1, user_id = 2, platform = "x", template_id = "t",
      final_system_prompt = "s", final_user_prompt = "u", content = "c",
      token_usage = { prompt_tokens = 1, completion_tokens = 1 },
      performance = { total_latency_ms = 1, provider_latency_ms = 1 }, repair_info = {} })
    local rows = assert(store:query("SELECT template_id FROM generation_snapshots WHERE id = ?", { id }))
    assert.equal("t", rows[1].template_id)
    store:close()
    assert.has_error(function() genaudit.persister(42) end,
      "bad argument #1 to 'persister' (store expected, got number)")
  end)
end)

describe("the meter's token_metrics document", function()
  it("is totals() without the meter's own sums, naming each call's requested and served model and its exact cost",
    function()
    local m = core.meter()
    assert(m:add_call{ kind = "initial", model = "m1", prompt_tokens = 10, completion_tokens = 5,
                       provider_cost = 0.25, provider_wait_us = 1000 })
    assert(m:add_failed_call{ kind = "repair", model = "m1", reason = "failed_before_usage", provider_wait_us = 7 })
    local t = m:totals()
    local tm = m:token_metrics({ { requested = "m0", served = "m1" }, { requested = "m0" } })
    for _, k in ipairs({ "estimated_cost_picousd", "call_count", "provider_wait_us" }) do
      assert.is_nil(tm[k], k)
      t[k] = nil
    end
    t.calls[1].requested_model, t.calls[1].served_model = "m0", "m1"
    t.calls[2].requested_model = "m0"
    -- each call's exact cost in picodollars (null when unknown), a JSON integer in the document
    t.calls[1].cost_picousd, t.calls[2].cost_picousd = 250000000000, genaudit.null
    assert.same(t, tm)
    local plain, stored = m:totals().calls, m:token_metrics().calls -- without models: the calls as totals() has them
    for _, c in ipairs(stored) do c.cost_picousd = nil end
    assert.same(plain, stored)
  end)

  it("holds estimated_cost_picousd as an integer when every call's cost is known", function()
    local m = core.meter()
    assert(m:add_call{ kind = "initial", model = "m1", prompt_tokens = 10, completion_tokens = 5,
                       provider_cost = 0.25 })
    assert.same({ "250000000000", 250000000000 }, { m:totals().estimated_cost_picousd,
      m:token_metrics().estimated_cost_picousd })
  end)
end)

describe("genaudit.dto.Run", function()
  it("starts every field of a generation's run state", function()
    local run = dto.Run{}
    assert.equal("userdata", type(run.sw))
    assert.equal("userdata", type(run.meter))
    assert.same({ 0, {}, {} }, { run.attempts, run.http, run.call_models })
    assert.is_nil(run.model_identifier or run.content or run.ctx or run.prompt or run.repair)
    local sw = core.stopwatch()
    assert.equal(sw, dto.Run{ sw = sw }.sw)
  end)
end)

describe("genaudit.client transport", function()
  local KEY = "sk-seams-test-key"
  local srv
  setup(function() srv = provider_server.start{ api_key = KEY } end)
  teardown(function() if srv then srv:stop() end end)

  local function provider()
    return genaudit.providers.openai{ base_url = srv.url, api_key = KEY, model = "gpt-4o-mini" }
  end

  it("is libcurl by default, even with an `ngx` global about (nothing is sniffed)", function()
    -- a stand-in ngx that genaudit.openresty.available() would accept: the
    -- client used to switch to cosockets on seeing it
    rawset(_G, "ngx", { socket = {}, get_phase = function() return "init" end })
    local ok, c = pcall(client_mod.new, { provider = provider() })
    rawset(_G, "ngx", nil)
    assert(ok, c)
    assert.is_not_nil(c.http) -- core.http_client
    srv:queue{ { content = "hello from curl" } }
    local run = c:run()
    assert.equal("hello from curl", c:complete(run, "initial", { { role = "user", content = "hi" } }, {}))
    c:close()
  end)

  it("replay decodes the stored parameters with genaudit.json: each number is re-sent as stored", function()
    -- lua-cjson + math.tointeger used to turn a stored 1.0 into 1 on Lua 5.4
    local store = assert(genaudit.open("sqlite::memory:"))
    local id = assert(genaudit.persister(store):persist_generation{
      org_id = 1, user_id = 2, platform = "x", template_id = "t", final_system_prompt = "s", final_user_prompt = "u",
      token_usage = { prompt_tokens = 1, completion_tokens = 1 },
      performance = { total_latency_ms = 1, provider_latency_ms = 1 }, repair_info = {},
      request_params = { temperature = 1.0, max_tokens = 200 },
    })
    local stored = store:query("SELECT request_params FROM generation_snapshots WHERE id = ?", { id })[1]
    srv:reset()
    srv:queue{ { content = "again" } }
    assert(genaudit.replay(store, id, { provider = provider(), record = false }))
    store:close()
    local body = srv:requests()[1].body
    for _, k in ipairs({ "temperature", "max_tokens" }) do
      local want = stored.request_params:match('"' .. k .. '":([^,}]+)')
      assert.equal(want, body:match('"' .. k .. '":([^,}]+)'), k)
    end
    if mtype then assert.truthy(stored.request_params:find('"temperature":1.0', 1, true)) end
  end)

  it("is the one passed in when given", function()
    local seen
    local c = client_mod.new{ provider = provider(), transport = function(req)
      seen = req.url
      return nil, "HTTP: refused by the test transport", "HTTP", { attempts = {}, provider_wait_us = 0 }
    end }
    assert.is_nil(c.http)
    assert.same({ nil, "HTTP: refused by the test transport", "HTTP" },
      { c:complete(c:run(), "initial", { { role = "user", content = "hi" } }, {}) })
    assert.equal(srv.url .. "/v1/chat/completions", seen)
  end)
end)
