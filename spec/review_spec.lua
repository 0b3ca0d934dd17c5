-- Issue 11, second hostile review: cases the other specs do not cover, one
-- describe per class of the issue. What is still open is a pending() with
-- its exact repro (README "Reliability" does not claim it).
local genaudit = require("genaudit")
local cjson = require("cjson")
local provider_server = require("spec.support.provider")
local tmp = require("spec.support.tmp")

local KEY = "sk-review-5e4d3c2b1a-SECRET"
local PRICES = { ["gpt-4o-mini"] = { input_cost_per_token = 1.5e-07, output_cost_per_token = 6e-07 } }

local function usage(p, c, extra)
  local u = { prompt_tokens = p, completion_tokens = c, total_tokens = p + c }
  for k, v in pairs(extra or {}) do u[k] = v end
  return u
end

describe("review: class 6, costs and attribution", function()
  local srv, dir, store

  setup(function() srv = provider_server.start{ api_key = KEY } end)
  teardown(function() srv:stop() end)

  before_each(function()
    srv:reset()
    dir = tmp.dir()
    os.execute("mkdir -p " .. dir .. "/templates " .. dir .. "/rules")
    tmp.write(dir .. "/templates/t.lua", [[return { version = "1", voice_signature = "V.", task = "Write." }]])
    tmp.write(dir .. "/rules/policy.lua", [[return { budget = 0 }]])
    store = assert(genaudit.open("sqlite:" .. dir .. "/audit.db"))
  end)

  after_each(function()
    store:close()
    tmp.rm(dir)
  end)

  local function generate(provider)
    local p = genaudit.pipeline{
      store = store, provider = provider, templates = dir .. "/templates", rules = dir .. "/rules",
      pricing = assert(genaudit.pricing.load(PRICES)), backoff_ms = 10, retries = 0,
    }
    local r, err, code, id = p:generate{ org_id = 1, user_id = 2, platform = "linkedin", template_id = "t" }
    local row = assert(store:query("SELECT * FROM generation_snapshots WHERE id = ?", { r and r.snapshot_id or id }))[1]
    return r, err, code, row, cjson.decode(row.token_metrics)
  end

  it("keeps a billed call's usage when OpenRouter reports a cost the meter cannot hold (1e300 USD)", function()
    -- it used to fail the generation: tokens 0, cost_source "no_usage", although usage was reported
    srv:queue{ { content = "Hello.", model = "mystery/model-7", usage = usage(100, 20, { cost = 1e300 }) } }
    local prov = genaudit.providers.openrouter{ base_url = srv.url, api_key = KEY, model = "mystery/model-7" }
    local r, err, _, row, tm = generate(prov)
    assert.is_table(r, err)
    assert.same({ "completed", "Hello." }, { row.status, row.content })
    assert.is_nil(row.estimated_cost)
    assert.same({ 100, 20, 120, "unpriced", cjson.null }, { tm.prompt_tokens, tm.completion_tokens,
      tm.total_tokens, tm.cost_source, tm.provider_cost or cjson.null })
  end)

  it("keeps a billed call's usage and local price when the reported model is over the meter's 512 bytes", function()
    local served = string.rep("m", 4096)
    srv:queue{ { content = "Hello.", model = served, usage = usage(100, 20) } }
    local prov = genaudit.providers.openai{ base_url = srv.url, api_key = KEY, model = "gpt-4o-mini" }
    local r, err, _, row, tm = generate(prov)
    assert.is_table(r, err)
    assert.same({ "completed", served }, { row.status, row.model_identifier })
    assert.same({ 100, 20, "unpriced_served_model", served }, { tm.prompt_tokens, tm.completion_tokens,
      tm.cost_source, tm.calls[1].served_model })
  end)

  it("keeps a billed answer with a lone UTF-16 surrogate escape (valid JSON lua-cjson refuses) as U+FFFD", function()
    -- it used to be "BAD_RESPONSE: provider body is not JSON": a failed row, 0 tokens, no content
    local body = cjson.encode{ id = "x", object = "chat.completion", model = "gpt-4o-mini",
      choices = { { index = 0, message = { role = "assistant", content = "aXb" }, finish_reason = "stop" } },
      usage = usage(100, 20) }
    srv:queue{ { body = (body:gsub("aXb", "a\\ud83d\\ude00 \\ud800b\\udc00 \\\\ud800")) } }
    local prov = genaudit.providers.openai{ base_url = srv.url, api_key = KEY, model = "gpt-4o-mini" }
    local r, err, _, row, tm = generate(prov)
    assert.is_table(r, err)
    assert.same({ "completed", "a\240\159\152\128 \239\191\189b\239\191\189 \\ud800" }, { row.status, row.content })
    assert.same({ 100, 20, "local_estimate" }, { tm.prompt_tokens, tm.completion_tokens, tm.cost_source })
    assert.equal((100 * 150000 + 20 * 600000) / 1e12, row.estimated_cost)
  end)
end)
