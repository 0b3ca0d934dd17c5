-- The audited pipeline end to end: real libcurl calls to the local provider
-- server, real parsing, metering and persistence into SQLite.
local genaudit = require("genaudit")
local cjson = require("cjson")
local tokens = require("genaudit.tokens")
local provider_server = require("spec.support.provider")
local tmp = require("spec.support.tmp")

local KEY = "sk-test-9f8e7d6c5b4a-SECRET"

-- Prices in USD per token, as a plain Lua table (genaudit.pricing.load accepts it).
local PRICES = {
  ["gpt-4o-mini"] = { input_cost_per_token = 1.5e-07, output_cost_per_token = 6e-07,
                      cache_read_input_token_cost = 7.5e-08 },
  ["claude-3-5-haiku"] = { input_cost_per_token = 8e-07, output_cost_per_token = 4e-06,
                           cache_read_input_token_cost = 8e-08, cache_creation_input_token_cost = 1e-06 },
}

local function words(n, tail)
  local t = {}
  for i = 1, n do t[i] = "word" .. i end
  return table.concat(t, " ") .. (tail or "\n#launch")
end

local function usage(p, c, extra)
  local u = { prompt_tokens = p, completion_tokens = c, total_tokens = p + c }
  for k, v in pairs(extra or {}) do u[k] = v end
  return u
end

describe("genaudit.pipeline", function()
  local srv, dir, store, dbfile

  local function pipeline(opts)
    opts = opts or {}
    local prov = opts.provider or genaudit.providers.openai{
      base_url = srv.url, api_key = KEY, model = opts.model or "gpt-4o-mini", timeout_ms = opts.timeout_ms,
    }
    return genaudit.pipeline{
      store = store, provider = prov, templates = dir .. "/templates", rules = dir .. "/rules",
      pricing = assert(genaudit.pricing.load(PRICES)), backoff_ms = 10, retries = opts.retries,
    }
  end

  local function ctx(over)
    local t = {
      org_id = 42, user_id = 7, platform = "linkedin", template_id = "launch",
      business = { name = "Acme", tone = "formal" }, knowledge = { "Acme makes anvils." },
      facts = { product = "Anvil 2" }, tone_override = "playful",
      params = { temperature = 0.5, max_tokens = 200, seed = 7 },
    }
    for k, v in pairs(over or {}) do t[k] = v end
    return t
  end

  local function row(id)
    local rows = assert(store:query("SELECT * FROM generation_snapshots WHERE id = ?", { id }))
    return rows[1]
  end

  setup(function() srv = provider_server.start{ api_key = KEY } end)
  teardown(function() srv:stop() end)

  before_each(function()
    srv:reset()
    dir = tmp.dir()
    os.execute("mkdir -p " .. dir .. "/templates " .. dir .. "/rules")
    tmp.write(dir .. "/templates/launch.lua", [[return {
      version = "7", voice_signature = "You are {{business.name}}.",
      constraints = { "At most 20 words." }, task = "Announce {{facts.product}}." }]])
    tmp.write(dir .. "/rules/length.lua", [[return { slug = "length_exceeded", check = function(d)
      local n = select(2, d:gsub("%S+", ""))
      if n > 20 then return { message = n .. " words, limit 20", penalty = 30 } end end }]])
    tmp.write(dir .. "/rules/policy.lua", [[return { budget = 2 }]])
    dbfile = dir .. "/audit.db"
    store = assert(genaudit.open("sqlite:" .. dbfile))
  end)

  after_each(function()
    store:close()
    tmp.rm(dir)
  end)

  describe("generate()", function()
    it("stores the overridden tone line, not the business tone (Immutability Test)", function()
      local r = assert(pipeline():generate(ctx()))
      local stored = row(r.snapshot_id).final_user_prompt
      assert.truthy(stored:find("Tone: playful", 1, true))
      assert.falsy(stored:find("formal", 1, true))
    end)

    it("stores exactly the prompts the provider received", function()
      local r = assert(pipeline():generate(ctx()))
      local sent = cjson.decode(srv:requests()[1].body)
      local stored = row(r.snapshot_id)
      assert.same({ stored.final_system_prompt, stored.final_user_prompt },
        { sent.messages[1].content, sent.messages[2].content })
      assert.equal("You are Acme.\n\nConstraints:\n- At most 20 words.", stored.final_system_prompt)
    end)

    it("sends and stores the request parameters", function()
      local r = assert(pipeline():generate(ctx()))
      local sent = cjson.decode(srv:requests()[1].body)
      assert.same({ 0.5, 200, 7 }, { sent.temperature, sent.max_tokens, sent.seed })
      assert.same({ max_tokens = 200, seed = 7, temperature = 0.5 }, cjson.decode(row(r.snapshot_id).request_params))
    end)

    it("sums tokens and cost over the initial call and two repairs exactly", function()
      srv:queue{
        { content = words(30), usage = usage(1000, 300, { prompt_tokens_details = { cached_tokens = 400 } }) },
        { content = words(25), usage = usage(1400, 250) },
        { content = words(10), usage = usage(1500, 120) },
      }
      local r = assert(pipeline():generate(ctx()))
      local tm = cjson.decode(row(r.snapshot_id).token_metrics)
      assert.same({ 3900, 670, 4570, 400 }, { tm.prompt_tokens, tm.completion_tokens, tm.total_tokens,
        tm.cached_prompt_tokens })
      -- by hand, in picodollars: input 150000, cached 75000, output 600000 per token
      local initial = 600 * 150000 + 400 * 75000 + 300 * 600000
      local repairs = (1400 + 1500) * 150000 + (250 + 120) * 600000
      assert.equal((initial + repairs) / 1e12, tm.estimated_cost)
      assert.equal(initial / 1e12, tm.initial_cost)
      assert.equal(repairs / 1e12, tm.repair_cost)
      assert.equal("local_estimate", tm.cost_source)
      assert.same({ "initial", "repair", "repair" }, { tm.calls[1].kind, tm.calls[2].kind, tm.calls[3].kind })
    end)

    it("records the repairs: count, types, initial score and the feedback log", function()
      srv:queue{ { content = words(30) }, { content = words(25) }, { content = words(10) } }
      local r = assert(pipeline():generate(ctx()))
      local rm = cjson.decode(row(r.snapshot_id).repair_metrics)
      assert.same({ 2, { "length_exceeded" }, 70, 100, "passed" },
        { rm.repair_count, rm.repair_types, rm.initial_validation_score, rm.final_validation_score, rm.stop_reason })
      assert.equal("Your draft has these problems; rewrite it to fix all of them:\n- 31 words, limit 20",
        rm.repair_log[1].feedback)
      assert.same({ 70, 100 }, { rm.repair_log[1].score_after, rm.repair_log[2].score_after })
      -- the repair request carried the previous draft and the feedback
      local sent = cjson.decode(srv:requests()[2].body)
      assert.same({ "system", "user", "assistant", "user" },
        { sent.messages[1].role, sent.messages[2].role, sent.messages[3].role, sent.messages[4].role })
      assert.equal(words(30), sent.messages[3].content)
    end)

    it("keeps provider latency above 0 and within total latency", function()
      srv:queue{ { content = words(5), delay_ms = 30 } }
      local r = assert(pipeline():generate(ctx()))
      local pm = cjson.decode(row(r.snapshot_id).performance_metrics)
      assert.is_true(pm.provider_latency_ms >= 30)
      assert.is_true(pm.provider_latency_ms <= pm.total_latency_ms)
    end)

    it("stores the model string the provider reported apart from the requested one", function()
      srv:queue{ { content = words(5), model = "gpt-4o-mini-2024-07-18" } }
      local r = assert(pipeline():generate(ctx()))
      local pm = cjson.decode(row(r.snapshot_id).performance_metrics)
      assert.same({ "gpt-4o-mini-2024-07-18", "gpt-4o-mini", "openai" },
        { pm.model_identifier, pm.requested_model, pm.provider })
      assert.equal("gpt-4o-mini-2024-07-18", row(r.snapshot_id).model_identifier)
    end)

    it("stores a null estimated_cost, never 0, for a model without a price", function()
      srv:queue{ { content = words(5), model = "mystery-model-1" } }
      local r = assert(pipeline{ model = "mystery-model" }:generate(ctx()))
      local stored = row(r.snapshot_id)
      assert.is_nil(stored.estimated_cost)
      assert.equal("unpriced", cjson.decode(stored.token_metrics).cost_source)
      assert.truthy(stored.token_metrics:find('"estimated_cost":null', 1, true))
    end)

    it("keeps OpenRouter's billed cost beside the local estimate", function()
      srv:queue{ { content = words(5), model = "openai/gpt-4o-mini",
                   usage = usage(100, 20, { cost = 0.0000321 }) } }
      local prov = genaudit.providers.openrouter{ base_url = srv.url, api_key = KEY, model = "openai/gpt-4o-mini" }
      local r = assert(pipeline{ provider = prov }:generate(ctx()))
      local tm = cjson.decode(row(r.snapshot_id).token_metrics)
      assert.equal(0.0000321, tm.provider_cost)
      assert.equal((100 * 150000 + 20 * 600000) / 1e12, tm.estimated_cost)
      assert.equal("local_estimate", tm.cost_source) -- the estimate is local; the billed cost is beside it
    end)

    it("normalizes Anthropic usage, cache reads and writes included", function()
      srv:queue{ { content = words(5), model = "claude-3-5-haiku-20241022",
                   usage = { input_tokens = 100, output_tokens = 40, cache_read_input_tokens = 300,
                             cache_creation_input_tokens = 50 } } }
      local prov = genaudit.providers.anthropic{ base_url = srv.url, api_key = KEY, model = "claude-3-5-haiku" }
      local r = assert(pipeline{ provider = prov }:generate(ctx()))
      local tm = cjson.decode(row(r.snapshot_id).token_metrics)
      assert.same({ 450, 40, 490, 300, 50 }, { tm.prompt_tokens, tm.completion_tokens, tm.total_tokens,
        tm.cached_prompt_tokens, tm.cache_write_tokens })
      assert.equal((100 * 800000 + 300 * 80000 + 50 * 1000000 + 40 * 4000000) / 1e12, tm.estimated_cost)
      local sent = srv:requests()[1]
      assert.equal("valid", sent.auth) -- the server checked x-api-key against KEY
      assert.equal("2023-06-01", sent.headers["anthropic-version"])
      assert.equal("You are Acme.\n\nConstraints:\n- At most 20 words.", cjson.decode(sent.body).system)
    end)

    it("retries a 429 and records both tries", function()
      srv:queue{ { status = 429, headers = { ["Retry-After"] = "0" } }, { content = words(5) } }
      local r = assert(pipeline():generate(ctx()))
      local pm = cjson.decode(row(r.snapshot_id).performance_metrics)
      assert.equal(2, pm.attempts)
      assert.equal(2, #srv:requests())
      local tries = pm.calls[1].tries
      assert.same({ 429, 0, 200 }, { tries[1].status, tries[1].retry_after_ms, tries[2].status })
      -- curl's phase timings of the call are kept, in whole microseconds
      local t = pm.calls[1].timings
      for _, k in ipairs({ "dns_us", "connect_us", "tls_us", "first_byte_us", "total_us" }) do
        assert.is_number(t[k], k)
      end
      assert.is_true(t.first_byte_us <= t.total_us)
    end)

    it("applies a rule file edited between two generations", function()
      local p = pipeline()
      srv:queue{ { content = words(5) } }
      local first = assert(p:generate(ctx()))
      assert.equal(0, first.repair_metrics.repair_count)
      tmp.write(dir .. "/rules/length.lua", [[return { slug = "too_long", check = function(d)
        if #d > 10 then return { message = "shorter", penalty = 50 } end end }]])
      srv:queue{ { content = words(5) }, { content = "ok #t" } }
      local second = assert(p:generate(ctx()))
      assert.same({ 1, { "too_long" }, 50 }, { second.repair_metrics.repair_count,
        second.repair_metrics.repair_types, second.repair_metrics.initial_validation_score })
    end)

    it("keeps the previous rules working when a rule file breaks", function()
      local p = pipeline()
      srv:queue{ { content = words(25) }, { content = words(5) } }
      assert.equal(1, assert(p:generate(ctx())).repair_metrics.repair_count)
      tmp.write(dir .. "/rules/length.lua", "return { check = ")
      srv:queue{ { content = words(25) }, { content = words(5) } }
      local r = assert(p:generate(ctx()))
      assert.same({ 1, { "length_exceeded" } }, { r.repair_metrics.repair_count, r.repair_metrics.repair_types })
      assert.truthy(p:script_errors()[dir .. "/rules/length.lua"]:find("^SCRIPT: "))
    end)

    it("never writes the API key into the database", function()
      srv:queue{ { status = 401 } }
      pipeline():generate(ctx())
      srv:queue{ { content = words(5) } }
      assert(pipeline():generate(ctx()))
      store:close()
      local bytes = tmp.read(dbfile) .. (io.open(dbfile .. "-wal") and tmp.read(dbfile .. "-wal") or "")
      assert.truthy(bytes:find("Tone: playful", 1, true)) -- the rows are really there
      assert.falsy(bytes:find(KEY, 1, true))
      store = assert(genaudit.open("sqlite:" .. dbfile))
    end)
  end)

  describe("request encoding", function()
    it("sends a 2^53-1 seed and a 17-digit temperature byte for byte as stored", function()
      local seed = 9007199254740991 -- 2^53 - 1: an integer on Lua 5.4, an exact double on LuaJIT
      local temperature = 0.123456789012345678
      local r = assert(pipeline():generate(ctx{ params = { seed = seed, temperature = temperature,
                                                           max_tokens = 200 } }))
      local body = srv:requests()[1].body
      assert.truthy(body:find('"seed":9007199254740991', 1, true), body)
      assert.truthy(body:find('"temperature":0.12345678901234568', 1, true), body)
      assert.equal(temperature, tonumber(body:match('"temperature":([^,}]+)')))
      assert.equal('{"max_tokens":200,"seed":9007199254740991,"temperature":0.12345678901234568}',
        row(r.snapshot_id).request_params)
    end)

    it("refuses a request over max_request_bytes with TOO_LARGE, sends nothing and stores the failure", function()
      local prov = genaudit.providers.openai{ base_url = srv.url, api_key = KEY, model = "gpt-4o-mini",
                                              max_request_bytes = 4096 }
      local r, err, code, id = pipeline{ provider = prov }:generate(ctx{ knowledge = { string.rep("k", 5000) } })
      assert.is_nil(r)
      assert.same({ "TOO_LARGE", "TOO_LARGE: the request text exceeds max_request_bytes=4096" }, { code, err })
      assert.equal(0, #srv:requests())
      local stored = row(id)
      assert.same({ "failed", err }, { stored.status, stored.error })
      assert.truthy(stored.final_user_prompt:find(string.rep("k", 5000), 1, true))
      local tm = cjson.decode(stored.token_metrics)
      assert.same({ 0, "no_calls" }, { tm.estimated_cost, tm.cost_source }) -- nothing was sent, nothing billed
    end)

    it("refuses a prompt that is not UTF-8 with INVALID, sends nothing and stores the exact prompt", function()
      local bad = "caf\233 \237\160\128 \192\175" -- Latin-1, an encoded surrogate, an overlong '/'
      local r, err, code, id = pipeline():generate(ctx{ knowledge = { bad } })
      assert.is_nil(r)
      assert.same({ "INVALID", "INVALID: messages[2].content is not valid UTF-8; a JSON request cannot carry it"
        .. " unchanged" }, { code, err })
      assert.equal(0, #srv:requests())
      local stored = row(id)
      assert.same({ "failed", err }, { stored.status, stored.error })
      assert.truthy(stored.final_user_prompt:find(bad, 1, true)) -- the bytes as composed, not U+FFFD
    end)
  end)

  describe("cost and attribution", function()
    local function tm_of(id) return cjson.decode(row(id).token_metrics) end

    it("stores a failed call's cost as null with cost_source 'failed_before_usage', never 0", function()
      srv:queue{ { status = 500 }, { status = 500 }, { status = 500 } }
      local _, _, _, id = pipeline():generate(ctx())
      local stored = row(id)
      assert.is_nil(stored.estimated_cost)
      assert.truthy(stored.token_metrics:find('"estimated_cost":null', 1, true))
      local tm = tm_of(id)
      assert.equal("failed_before_usage", tm.cost_source)
      assert.same({ "initial", cjson.null, "failed_before_usage" },
        { tm.calls[1].kind, tm.calls[1].cost, tm.calls[1].cost_source })
    end)

    it("keeps the content and the model of an answer with a malformed usage; cost null, cost_source 'no_usage'",
      function()
      srv:queue{ { content = "an unbilled draft #t", model = "gpt-4o-mini-2024-07-18",
                   usage = { prompt_tokens = 10, completion_tokens = 5, total_tokens = 12 } } }
      local _, err, code, id = pipeline():generate(ctx())
      assert.same({ "BAD_RESPONSE", "BAD_RESPONSE: usage.total_tokens is less than prompt_tokens + completion_tokens" },
        { code, err })
      local stored = row(id)
      assert.same({ "failed", "an unbilled draft #t", "gpt-4o-mini-2024-07-18" },
        { stored.status, stored.content, stored.model_identifier })
      assert.is_nil(stored.estimated_cost)
      local tm = tm_of(id)
      assert.same({ "no_usage", cjson.null, "gpt-4o-mini-2024-07-18" },
        { tm.cost_source, tm.calls[1].cost, tm.calls[1].served_model })
    end)

    -- issue 18.3: a 2xx body without usage (no key, or null) is an answer;
    -- an OpenAI model's usage is counted locally from what was sent and
    -- what came back, priced, and flagged
    for _, case in ipairs({ { "no usage key", false }, { "usage: null", true } }) do
      it("completes an OpenAI model's answer with " .. case[1] .. ": usage from local counts, estimated, priced",
        function()
          local content = "Meet the Anvil 2: forged in Lyon, d\195\169j\195\160 \240\159\148\168 ready.\n#launch"
          if case[2] then
            srv:queue{ { body = '{"id":"chatcmpl-x1","object":"chat.completion","model":"gpt-4o-mini-2024-07-18",'
              .. '"choices":[{"index":0,"message":{"role":"assistant","content":' .. cjson.encode(content) .. '},'
              .. '"finish_reason":"stop"}],"usage":null}' } }
          else
            srv:queue{ { content = content, model = "gpt-4o-mini-2024-07-18", usage = false } }
          end
          local r = assert(pipeline():generate(ctx()))
          local stored = row(r.snapshot_id)
          assert.same({ "completed", content, "gpt-4o-mini-2024-07-18" },
            { stored.status, stored.content, stored.model_identifier })
          local tm = tm_of(r.snapshot_id)
          local call = tm.calls[1]
          local sent = cjson.decode(srv:requests()[1].body).messages
          local p = assert(tokens.count_messages(sent, "gpt-4o-mini"))
          local c = assert(tokens.count(content, "gpt-4o-mini-2024-07-18"))
          assert.is_true(p > 10 and c > 10)
          assert.same({ p, c, p + c, p, "estimated", true },
            { call.prompt_tokens, call.completion_tokens, call.total_tokens, call.local_input_tokens,
              call.usage_source, call.usage_missing })
          assert.same({ p, c, p + c, "estimated", true, "local_estimate" },
            { tm.prompt_tokens, tm.completion_tokens, tm.total_tokens, tm.usage_source, tm.usage_missing,
              tm.cost_source })
          local pico = p * 150000 + c * 600000 -- gpt-4o-mini's prices, in picodollars per token
          assert.equal(("%d"):format(pico), ("%d"):format(tm.estimated_cost_picousd))
          assert.equal(("%d"):format(pico), ("%d"):format(stored.estimated_cost_picousd))
          assert.equal(p + c, stored.total_tokens)
          local pm = cjson.decode(stored.performance_metrics)
          assert.is_true(pm.calls[1].usage_missing)
          assert.is_nil(pm.calls[1].streamed)
          assert.equal("stop", pm.calls[1].finish_reason)
        end)
    end

    it("a repair answered without usage is estimated beside a billed initial call: usage_source mixed, exact sum",
      function()
        srv:queue{ { content = words(30), usage = usage(1000, 300) }, { content = words(8), usage = false } }
        local r = assert(pipeline():generate(ctx()))
        local stored = row(r.snapshot_id)
        assert.equal("completed", stored.status)
        local tm = tm_of(r.snapshot_id)
        local reqs = srv:requests()
        assert.equal(2, #reqs)
        local p = assert(tokens.count_messages(cjson.decode(reqs[2].body).messages, "gpt-4o-mini"))
        local c = assert(tokens.count(words(8), "gpt-4o-mini-2024-07-18"))
        assert.same({ "provider", "estimated", "mixed" }, { tm.calls[1].usage_source, tm.calls[2].usage_source,
          tm.usage_source })
        assert.same({ "repair", p, c, true }, { tm.calls[2].kind, tm.calls[2].prompt_tokens,
          tm.calls[2].completion_tokens, tm.calls[2].usage_missing })
        assert.is_nil(tm.calls[1].usage_missing)
        assert.same({ 1000 + p, 300 + c }, { tm.prompt_tokens, tm.completion_tokens })
        local pico = (1000 + p) * 150000 + (300 + c) * 600000
        assert.equal(("%d"):format(pico), ("%d"):format(stored.estimated_cost_picousd))
        assert.equal("local_estimate", tm.cost_source)
      end)

    it("completes a model without a local encoding answered without usage: usage and cost unknown, never 0",
      function()
        local prov = genaudit.providers.anthropic{ base_url = srv.url, api_key = KEY, model = "claude-3-5-haiku" }
        srv:queue{ { content = "An unmetered answer.\n#launch", usage = false } }
        local r = assert(pipeline{ provider = prov }:generate(ctx()))
        local stored = row(r.snapshot_id)
        assert.same({ "completed", "An unmetered answer.\n#launch" }, { stored.status, stored.content })
        assert.is_nil(stored.estimated_cost)
        assert.is_nil(stored.estimated_cost_picousd)
        local tm = tm_of(r.snapshot_id)
        local call = tm.calls[1]
        assert.same({ cjson.null, "no_usage", true, true }, { tm.estimated_cost, tm.cost_source, tm.usage_missing,
          call.usage_missing })
        assert.same({ cjson.null, "no_usage" }, { call.cost, call.cost_source })
        -- the call's usage is unknown: no counts, no usage_source, no local count
        assert.is_nil(call.prompt_tokens)
        assert.is_nil(call.completion_tokens)
        assert.is_nil(call.usage_source)
        assert.is_nil(tm.usage_source)
        assert.equal(cjson.null, call.local_input_tokens)
      end)

    it("an answer whose usage is there but malformed stays BAD_RESPONSE, on both wire formats", function()
      local anthropic = genaudit.providers.anthropic{ base_url = srv.url, api_key = KEY, model = "claude-3-5-haiku" }
      for _, case in ipairs({
        { nil, { prompt_tokens = -1, completion_tokens = 5 } },
        { nil, { prompt_tokens = 10.5, completion_tokens = 5 } },
        { nil, { prompt_tokens = 10, completion_tokens = 5, total_tokens = 14 } },
        { nil, { prompt_tokens = 10, completion_tokens = 5, prompt_tokens_details = { cached_tokens = 11 } } },
        { nil, { completion_tokens = 5 } },
        { nil, {} },
        { anthropic, { input_tokens = 10 } },
        { anthropic, { input_tokens = -3, output_tokens = 5 } },
        { anthropic, {} },
      }) do
        srv:queue{ { content = "a draft #t", usage = case[2] } }
        local res, err, code, id = pipeline{ provider = case[1] }:generate(ctx())
        assert.is_nil(res, cjson.encode(case[2]))
        assert.equal("BAD_RESPONSE", code, cjson.encode(case[2]))
        assert.matches("^BAD_RESPONSE: usage", err)
        local stored = row(id)
        assert.same({ "failed", "a draft #t" }, { stored.status, stored.content })
        assert.is_nil(stored.estimated_cost)
        assert.equal("no_usage", tm_of(id).cost_source)
      end
    end)

    it("never prices a served model without a price at the requested model's price", function()
      srv:queue{ { content = words(5), model = "gpt-9-ultra-2031-01-01", usage = usage(100, 20) } }
      local r = assert(pipeline():generate(ctx()))
      local stored = row(r.snapshot_id)
      assert.is_nil(stored.estimated_cost)
      local tm = tm_of(r.snapshot_id)
      assert.equal("unpriced_served_model", tm.cost_source)
      assert.same({ "gpt-4o-mini", "gpt-9-ultra-2031-01-01", cjson.null, "unpriced_served_model" },
        { tm.calls[1].requested_model, tm.calls[1].served_model, tm.calls[1].cost, tm.calls[1].cost_source })
      local pm = cjson.decode(stored.performance_metrics)
      assert.same({ "gpt-9-ultra-2031-01-01", "gpt-4o-mini" }, { pm.model_identifier, pm.requested_model })
    end)

    it("prices a call by the model that served it", function()
      srv:queue{ { content = words(5), model = "claude-3-5-haiku-20241022", usage = usage(100, 20) } }
      local r = assert(pipeline():generate(ctx())) -- requested gpt-4o-mini, served claude-3-5-haiku
      local tm = tm_of(r.snapshot_id)
      assert.same({ (100 * 800000 + 20 * 4000000) / 1e12, "local_estimate", "claude-3-5-haiku" },
        { tm.estimated_cost, tm.cost_source, tm.calls[1].model })
    end)

    it("uses OpenRouter's billed cost where no local price exists (cost_source 'provider')", function()
      srv:queue{ { content = words(5), model = "mystery/model-7", usage = usage(100, 20, { cost = 0.0000123 }) } }
      local prov = genaudit.providers.openrouter{ base_url = srv.url, api_key = KEY, model = "mystery/model-7" }
      local r = assert(pipeline{ provider = prov }:generate(ctx()))
      local stored = row(r.snapshot_id)
      assert.equal(0.0000123, stored.estimated_cost)
      local tm = tm_of(r.snapshot_id)
      assert.same({ 0.0000123, 0.0000123, "provider" }, { tm.estimated_cost, tm.provider_cost, tm.cost_source })
    end)

    it("gives a null total and a per-call breakdown when the initial call is priced and a repair is not", function()
      srv:queue{ { content = words(30), usage = usage(1000, 300) },
                 { content = words(5), model = "mystery-model-1", usage = usage(1300, 10) } }
      local r = assert(pipeline():generate(ctx()))
      local stored = row(r.snapshot_id)
      assert.is_nil(stored.estimated_cost)
      local tm = tm_of(r.snapshot_id)
      local initial = (1000 * 150000 + 300 * 600000) / 1e12
      assert.same({ cjson.null, "unpriced_served_model", initial }, { tm.estimated_cost, tm.cost_source,
        tm.initial_cost })
      assert.is_nil(tm.repair_cost)
      assert.same({ { "initial", initial, "local_estimate" }, { "repair", cjson.null, "unpriced_served_model" } },
        { { tm.calls[1].kind, tm.calls[1].cost, tm.calls[1].cost_source },
          { tm.calls[2].kind, tm.calls[2].cost, tm.calls[2].cost_source } })
      assert.same({ 2300, 310 }, { tm.prompt_tokens, tm.completion_tokens })
    end)
  end)

  describe("a failed generation", function()
    local function failed(p, c)
      local r, err, code, id = p:generate(c or ctx())
      assert.is_nil(r)
      assert.is_string(id)
      local stored = row(id)
      assert.equal("failed", stored.status)
      assert.equal(err, stored.error)
      return err, code, stored
    end

    it("is persisted when the provider keeps answering 500", function()
      srv:queue{ { status = 500 }, { status = 500 }, { status = 500 } }
      local err, code, stored = failed(pipeline())
      assert.equal("PROVIDER_ERROR", code)
      assert.truthy(err:find("^PROVIDER_ERROR: provider answered HTTP 500"))
      local pm = cjson.decode(stored.performance_metrics)
      assert.equal(3, pm.attempts)
      assert.same({ 500, 500, 500 }, { pm.calls[1].tries[1].status, pm.calls[1].tries[2].status,
        pm.calls[1].tries[3].status })
      assert.truthy(stored.final_user_prompt:find("Tone: playful", 1, true))
    end)

    it("is persisted when the provider times out", function()
      srv:queue{ { hang = true } }
      local _, code, stored = failed(pipeline{ timeout_ms = 200, retries = 0 })
      assert.equal("TIMEOUT", code)
      assert.is_true(cjson.decode(stored.performance_metrics).provider_latency_ms >= 150)
    end)

    it("is persisted when the response is not JSON", function()
      srv:queue{ { body = '{"choices": [' } }
      local err, code = failed(pipeline())
      assert.equal("BAD_RESPONSE", code)
      assert.equal('BAD_RESPONSE: provider body is not JSON: {"choices": [', err)
    end)

    it("is persisted when the response's usage is malformed", function()
      srv:queue{ { content = "hi", usage = { prompt_tokens = "12", completion_tokens = 1 } } }
      local err = failed(pipeline())
      assert.equal("BAD_RESPONSE: usage.prompt_tokens/completion_tokens missing or not non-negative integers", err)
    end)

    it("is persisted when the provider cannot be reached", function()
      local prov = genaudit.providers.openai{ base_url = "http://127.0.0.1:9", api_key = KEY, model = "gpt-4o-mini" }
      local err, code, stored = failed(pipeline{ provider = prov, retries = 0 })
      assert.equal("CONNECT", code)
      local try = cjson.decode(stored.performance_metrics).calls[1].tries[1]
      assert.same({ "CONNECT", err }, { try.code, try.error })
      assert.falsy(err:find(KEY, 1, true))
    end)

    it("is persisted without the key when the provider rejects it", function()
      local prov = genaudit.providers.openai{ base_url = srv.url, api_key = "sk-wrong-key-123", model = "gpt-4o-mini" }
      local err, code = failed(pipeline{ provider = prov })
      assert.equal("PROVIDER_REJECTED", code)
      assert.falsy(err:find("sk-wrong-key-123", 1, true))
    end)

    it("is persisted when the repair budget runs out, with the last draft", function()
      srv:queue{ { content = words(30) }, { content = words(29) }, { content = words(28) } }
      local err, code, stored = failed(pipeline())
      assert.equal("REPAIR_EXHAUSTED", code)
      assert.equal("REPAIR_EXHAUSTED: draft still fails validation after 2 repair(s) (length_exceeded; score 70)", err)
      assert.equal(words(28), stored.content)
      assert.same({ 2, "budget_exhausted" }, { stored.repair_count, cjson.decode(stored.repair_metrics).stop_reason })
    end)

    it("is persisted when the template cannot be composed, before any model call", function()
      local _, code, stored = failed(pipeline(), ctx{ template_id = "missing" })
      assert.equal("COMPOSE", code)
      assert.equal(0, #srv:requests())
      assert.same({ "", "" }, { stored.final_system_prompt, stored.final_user_prompt })
    end)

    it("returns nil, err and persists nothing when the context lacks ids", function()
      local r, err, code = pipeline():generate(ctx{ org_id = false })
      assert.same({ nil, "INVALID: org_id is required (string or integer)", "INVALID" }, { r, err, code })
      assert.equal(0, store:query("SELECT count(*) AS n FROM generation_snapshots")[1].n)
    end)
  end)
end)
