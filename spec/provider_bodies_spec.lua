-- Issue 20, non-streaming: real provider response bodies (spec/fixtures/
-- provider_bodies/, sources in the README there) replayed byte for byte by
-- the local provider server (a real HTTP server; the `body` script field)
-- through the real pipeline and client, on SQLite and PostgreSQL. Each case
-- compares what is stored — usage, model, finish reason, response id,
-- content, tool calls and refusal — with values written down by hand from
-- the body. Then the usage quirks without a recorded body here (Gemini's
-- thinking gap, DeepSeek's prompt_cache_hit_tokens alone, Groq's
-- x_groq.usage, OpenRouter's served model differing from the requested one
-- and its cost_details, a missing finish_reason) in their real shapes, and
-- tool calls judged by a rule.
local genaudit = require("genaudit")
local json = require("genaudit.json")
local tokens = require("genaudit.tokens")
local cjson = require("cjson")
local provider_server = require("spec.support.provider")
local tmp = require("spec.support.tmp")
local pg = require("spec.support.pg")
local util = require("spec.support.util")
local q, cli = util.q, util.cli

local KEY = "sk-bodies-0a1b2c3d4e5f-SECRET"
local FIX = "spec/fixtures/provider_bodies/"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- Every body, with what a careful reader of it writes down. tokens: prompt,
-- completion, total, cached, reasoning as normalized (README "Usage").
-- encoding: the exact local encoding of the requested model (OpenAI models
-- only), with which an answer without usage is counted (issue 18.3).
local BODIES = {
  { file = "vercel-ai_openai-text.json", provider = "openai", model = "gpt-4.1-nano",
    encoding = "o200k_base",
    served = "gpt-4.1-nano-2025-04-14", id = "chatcmpl-D8Z5f52zQqikDBEKQMQoYcWMcWPeU", finish = "stop",
    tokens = { 16, 363, 379, 0, 0 }, bytes = 1844, starts = "**Holiday Name:** Galaxy Day  \n\n**Date:**",
    ends = "to look up and dream beyond our world.", has = "vast darkness\226\128\148mirroring" },
  { file = "vercel-ai_deepseek-text.json", provider = "openai", model = "deepseek-chat",
    served = "deepseek-chat", id = "00f10ecd-60b3-4707-b5db-e4bcadf7aea1", finish = "length",
    tokens = { 13, 300, 313, 0, 0 }, bytes = 1375, starts = "## **Holiday Name: Gratitude of Small Things Day",
    ends = "Instead of lavish presents, people exchange" },
  { file = "vercel-ai_deepseek-tool-call.json", provider = "openai", model = "deepseek-reasoner",
    served = "deepseek-reasoner", id = "7a630f5b-b7e6-4878-82f8-d77db164d42b", finish = "tool_calls",
    tokens = { 339, 92, 431, 320, 48 }, bytes = 0,
    tool_calls = { { id = "call_00_9V0vrf86Pc9aelHCJMZqnJBo", type = "function", name = "weather",
                     arguments = '{"location": "San Francisco"}' } } },
  { file = "vercel-ai_groq-text.json", provider = "openai", model = "llama-3.3-70b-versatile",
    served = "llama-3.3-70b-versatile", id = "chatcmpl-09d64d2a-ed1c-4473-829f-78db43f45d13", finish = "stop",
    tokens = { 45, 607, 652, 0, 0 }, bytes = 2953, starts = "I'd like to introduce \"Luminaria\"",
    ends = "a brighter, more radiant world." },
  -- no "content" key at all in the message
  { file = "vercel-ai_groq-tool-call.json", provider = "openai", model = "llama-3.3-70b-versatile",
    served = "llama-3.3-70b-versatile", id = "chatcmpl-1fd017fc-60b8-44eb-a736-375b8e1bc3e7", finish = "tool_calls",
    tokens = { 218, 15, 233, 0, 0 }, bytes = 0,
    tool_calls = { { id = "ax9fskhev", type = "function", name = "weather", arguments = "{}" } } },
  -- xAI: total 588 = 307 + 26 + 255: completion_tokens leaves the 255
  -- reasoning tokens out
  { file = "vercel-ai_xai-tool-call.json", provider = "openai", model = "grok-3-mini",
    served = "grok-3-mini", id = "acfa24c3-b556-0f2c-731e-64fb836d544b", finish = "tool_calls",
    tokens = { 307, 281, 588, 244, 255 }, bytes = 0, notes = { reasoning_outside_completion = true },
    tool_calls = { { id = "call_46427107", type = "function", name = "weather",
                     arguments = '{"location":"San Francisco"}' } } },
  -- Azure: content null, two parallel calls, prompt_filter_results
  { file = "mirascope_azure-openai-completions-tool-calls.json", provider = "azure", model = "gpt-4o-mini",
    encoding = "o200k_base",
    served = "gpt-4o-mini-2024-07-18", id = "chatcmpl-CYljhhAJLdiFt1Ue1DDKIVx0nm0mn", finish = "tool_calls",
    tokens = { 75, 54, 129, 0, 0 }, bytes = 0, azure = true,
    tool_calls = { { id = "call_Ogl4xrgYelrGfioRoTJoXCF0", type = "function", name = "secret_retrieval_tool",
                     arguments = '{"password": "mellon"}' },
                   { id = "call_J8hE6f1cZ8sJIzw3FCswowSI", type = "function", name = "secret_retrieval_tool",
                     arguments = '{"password": "radiance"}' } } },
  -- OpenAI itself, as OpenAI pretty-prints it (Mirascope cassettes): text
  -- with backslashes escaped
  { file = "mirascope_openai-gpt-4o-text.json", provider = "openai", model = "gpt-4o",
    encoding = "o200k_base",
    served = "gpt-4o-2024-08-06", id = "chatcmpl-CRkJFgcA6BuMrBur38ZHUXgT6zRjg", finish = "stop",
    tokens = { 16, 12, 28, 0, 0 }, text = "\\(4200 + 42 = 4242\\)." },
  -- content null, two parallel calls
  { file = "mirascope_openai-gpt-4o-tool-calls.json", provider = "openai", model = "gpt-4o",
    encoding = "o200k_base",
    served = "gpt-4o-2024-08-06", id = "chatcmpl-CRkQLoUbXLK7jHgn0ahxbdvo6XWOD", finish = "tool_calls",
    tokens = { 75, 53, 128, 0, 0 }, bytes = 0,
    tool_calls = { { id = "call_v6LacIrChvs6ITVpIZqy5tFc", type = "function", name = "secret_retrieval_tool",
                     arguments = '{"password": "mellon"}' },
                   { id = "call_onyWzk4mLTGKzW9cthmf4Llq", type = "function", name = "secret_retrieval_tool",
                     arguments = '{"password": "radiance"}' } } },
  -- content null, the answer a refusal
  { file = "mirascope_openai-gpt-4o-refusal.json", provider = "openai", model = "gpt-4o",
    encoding = "o200k_base",
    served = "gpt-4o-2024-08-06", id = "chatcmpl-CRkRkic1yC57Px3ahQq6yQbltDlWK", finish = "stop",
    tokens = { 64, 13, 77, 0, 0 }, bytes = 0, refusal = "I'm very sorry, but I can't assist with that request." },
  -- gpt-5-mini cut at max tokens while reasoning: content "", all 50
  -- completion tokens reasoning, system_fingerprint null
  { file = "mirascope_openai-gpt-5-mini-length.json", provider = "openai", model = "gpt-5-mini",
    encoding = "o200k_base",
    served = "gpt-5-mini-2025-08-07", id = "chatcmpl-CpaLHgmC7LxzicBE9T45Vp9hyIjK1", finish = "length",
    tokens = { 13, 50, 63, 0, 50 }, bytes = 0 },
  -- OpenRouter (served by OpenAI): the body starts with "\n\n         \n"
  -- (OpenRouter's keep-alive whitespace); cost and is_byok in usage
  { file = "mirascope_openrouter-openai-gpt-4o.json", provider = "openrouter", model = "openai/gpt-4o",
    encoding = "o200k_base",
    served = "openai/gpt-4o", id = "gen-1769672415-IZfpP2WAlINOOT5hLvOW", finish = "stop",
    tokens = { 12, 2, 14, 0, 0 }, text = "Hello!", notes = { provider_cost = 0.00005, is_byok = false } },
  -- OpenRouter (served by Amazon Bedrock): more leading whitespace,
  -- cache_write_tokens 0 in prompt_tokens_details
  { file = "mirascope_openrouter-anthropic-claude-3-5-sonnet.json", provider = "openrouter",
    model = "anthropic/claude-3.5-sonnet", served = "anthropic/claude-3.5-sonnet",
    id = "gen-1769672416-yEuepkmzIsakryTdH9Mu", finish = "stop", tokens = { 12, 5, 17, 0, 0 }, text = "Hello!",
    notes = { provider_cost = 0.000222, is_byok = false } },
  -- Ollama's OpenAI-compatible /v1: no details in usage, content ending in
  -- a line break, the body ending in one too
  { file = "mirascope_ollama-gemma3-4b.json", provider = "ollama", model = "gemma3:4b",
    served = "gemma3:4b", id = "chatcmpl-674", finish = "stop",
    tokens = { 21, 16, 37, 0, 0 }, text = "4200 + 42 = 4242\n" },
  { file = "vercel-ai_anthropic-text.json", provider = "anthropic", model = "claude-sonnet-4-5",
    served = "claude-sonnet-4-5-20250929", id = "msg_01VdEjxAP5ahtHKrrRdNBteQ", finish = "end_turn",
    tokens = { 12, 29, 41, 0, 0 },
    text = "Hello! I'm doing well, thanks for asking. How are you doing today?"
      .. " Is there anything I can help you with?" },
  -- input as the body spelled it: its line breaks and indentation kept
  { file = "vercel-ai_anthropic-json-tool.1.json", provider = "anthropic", model = "claude-haiku-4-5",
    served = "claude-haiku-4-5-20251001", id = "msg_0191iYfpERYfS27xLsdW2nbb", finish = "tool_use",
    tokens = { 1151, 87, 1238, 0, 0 }, bytes = 0,
    tool_calls = { { id = "toolu_01Q9ExVZnzZj7E2QQYHYtNUa", type = "tool_use", name = "json", arguments = [[{
        "elements": [
          {
            "location": "San Francisco",
            "temperature": -5,
            "condition": "snowy"
          },
          { "location": "London", "temperature": 0, "condition": "snowy" },
          { "location": "Paris", "temperature": 23, "condition": "cloudy" },
          { "location": "Berlin", "temperature": -9, "condition": "snowy" }
        ]
      }]] } } },
  -- text and a tool call with an empty input object
  { file = "vercel-ai_anthropic-tool-no-args.json", provider = "anthropic", model = "claude-3-opus-20240229",
    served = "claude-3-opus-20240229", id = "msg_01GCBaV8gyWAYgMVggRqZbuQ", finish = "tool_use",
    tokens = { 602, 93, 695, 0, 0 }, bytes = 255, starts = "<thinking>\nThe updateIssueList tool was provided",
    ends = "Okay, I will update the current issue list:",
    tool_calls = { { id = "toolu_01LRmxn9vGM1d2DZSDBowdZ1", type = "tool_use", name = "updateIssueList",
                     arguments = "{}" } } },
  -- compaction: the top-level usage is the last iteration's only; billed:
  -- input 60385 + 682, output 592 + 1320
  { file = "vercel-ai_anthropic-compaction.1.json", provider = "anthropic", model = "claude-opus-4-6",
    served = "claude-opus-4-6", id = "msg_01D55QDk6AZP2o6n9ko7TkDJ", finish = "end_turn",
    tokens = { 61067, 1912, 62979, 0, 0 }, bytes = 4451, notes = { iterations = 2 },
    starts = "Based on our conversation hist", ends = "any other section of the documentation?" },
}

local function ctx(params)
  return { org_id = 42, user_id = 7, platform = "linkedin", template_id = "post",
           business = { name = "Acme" }, facts = { product = "Anvil" }, params = params }
end

local function suite(name, open, describe_fn)
  describe_fn(name, function()
    local srv, dir, store, db

    local function provider(kind, model)
      if kind == "azure" then
        return genaudit.providers.azure{ base_url = srv.url, deployment = model, api_key = KEY }
      end
      return genaudit.providers[kind]{ base_url = srv.url, api_key = KEY, model = model }
    end

    local function pipeline(p, rules, prices)
      return genaudit.pipeline{
        store = store, templates = dir .. "/templates", rules = rules or (dir .. "/rules"), provider = p,
        pricing = prices and assert(genaudit.pricing.load(prices)) or nil, backoff_ms = 10,
      }
    end

    local function row(id)
      return assert(store:query("SELECT * FROM generation_snapshots WHERE id = ?", { id }))[1]
    end

    local function doc(id, col) return json.decode(row(id)[col]) end

    setup(function() srv = provider_server.start{ api_key = KEY, quiet = true } end)
    teardown(function()
      srv:stop()
      pg.drop_schemas()
    end)

    before_each(function()
      srv:reset()
      dir = tmp.dir()
      os.execute("mkdir -p " .. dir .. "/templates " .. dir .. "/rules")
      tmp.write(dir .. "/templates/post.lua", [[return { version = "1",
        voice_signature = "You are {{business.name}}.", task = "Announce {{facts.product}}." }]])
      store, db = open(dir)
    end)

    after_each(function()
      store:close()
      tmp.rm(dir)
    end)

    describe("real bodies", function()
      for _, b in ipairs(BODIES) do
        it(b.file .. " is stored as a completed generation with the usage the body states", function()
          srv:queue{ { body = read(FIX .. b.file) } }
          local res, err = pipeline(provider(b.provider, b.model)):generate(ctx())
          assert.is_nil(err)
          local r = row(res.snapshot_id)
          assert.equal("completed", r.status)
          assert.equal(b.served, r.model_identifier)
          local tm, pm = doc(res.snapshot_id, "token_metrics"), doc(res.snapshot_id, "performance_metrics")
          assert.same(b.tokens, { tm.prompt_tokens, tm.completion_tokens, tm.total_tokens,
                                  tm.cached_prompt_tokens, tm.reasoning_tokens })
          local call = pm.calls[1]
          assert.same({ b.finish, b.id }, { call.finish_reason, call.response_id })
          assert.equal(b.model, pm.requested_model)
          for k, v in pairs(b.notes or {}) do assert.equal(v, tm.calls[1][k], k) end
          local content = r.content
          if b.text then assert.equal(b.text, content) end
          if b.bytes then assert.equal(b.bytes, #content) end
          if b.starts then assert.equal(b.starts, content:sub(1, #b.starts)) end
          if b.ends then assert.equal(b.ends, content:sub(-#b.ends)) end
          if b.has then assert.truthy(content:find(b.has, 1, true)) end
          assert.equal(b.refusal, call.refusal)
          -- tool calls: on the call's log entry and on the draft, byte-exact
          assert.same(b.tool_calls or json.null, call.tool_calls or json.null)
          local rm = doc(res.snapshot_id, "repair_metrics")
          assert.same(b.tool_calls or json.null, rm.drafts[1].tool_calls or json.null)
          assert.same({ content }, json.decode(r.drafts))
          if b.azure then
            assert.equal(0, call.prompt_filter_results[1].prompt_index)
            assert.equal("safe", call.prompt_filter_results[1].content_filter_results.hate.severity)
            assert.equal("true", (srv:requests()[1].query:match("api%-version=") and "true"))
          end
        end)
      end

      -- the same bodies with their usage taken out (no key, or null): a
      -- gateway that strips it. Completed; an OpenAI model's usage counted
      -- locally from what was sent and returned, every other model's unknown
      for i, b in ipairs(BODIES) do
        local how = i % 2 == 0 and "null" or "absent"
        it(b.file .. " with its usage " .. how .. " is completed, usage "
          .. (b.encoding and "estimated from local counts" or "unknown (no local encoding)"), function()
          local d = cjson.decode(read(FIX .. b.file))
          assert.is_table(d.usage)
          d.usage = how == "null" and cjson.null or nil
          if type(d.x_groq) == "table" then d.x_groq.usage = nil end
          srv:queue{ { body = cjson.encode(d) } }
          local res, err = pipeline(provider(b.provider, b.model)):generate(ctx())
          assert.is_nil(err)
          local r = row(res.snapshot_id)
          assert.same({ "completed", b.served }, { r.status, r.model_identifier })
          local tm, pm = doc(res.snapshot_id, "token_metrics"), doc(res.snapshot_id, "performance_metrics")
          local call, entry = tm.calls[1], pm.calls[1]
          assert.same({ true, true, true }, { tm.usage_missing, call.usage_missing, entry.usage_missing })
          assert.same({ b.finish, b.id }, { entry.finish_reason, entry.response_id })
          if b.text then assert.equal(b.text, r.content) end
          if b.bytes then assert.equal(b.bytes, #r.content) end
          assert.is_nil(r.estimated_cost) -- no price map here: known tokens, unknown cost
          if b.encoding then
            local sent = json.decode(srv:requests()[1].body).messages
            local parts = { r.content, entry.refusal ~= nil and entry.refusal ~= json.null and entry.refusal or "" }
            for _, tc in ipairs(b.tool_calls or {}) do parts[#parts + 1] = tc.name .. tc.arguments end
            local p = assert(tokens.count_messages(sent, b.model))
            local c = assert(tokens.count(table.concat(parts), b.encoding))
            assert.same({ p, c, p + c, p, "estimated", "estimated", "unpriced" },
              { call.prompt_tokens, call.completion_tokens, call.total_tokens, call.local_input_tokens,
                call.usage_source, tm.usage_source, tm.cost_source })
            assert.equal(p + c, r.total_tokens)
          else
            assert.same({ json.null, "no_usage", json.null }, { call.cost, tm.cost_source, call.local_input_tokens })
            assert.is_nil(call.prompt_tokens)
            assert.is_nil(call.usage_source)
          end
        end)
      end

      it("genaudit show prints a tool-call generation's calls", function()
        srv:queue{ { body = read(FIX .. "mirascope_azure-openai-completions-tool-calls.json") } }
        local res = assert(pipeline(provider("azure", "gpt-4o-mini")):generate(ctx()))
        local out, err, rc = cli("--db " .. q(db) .. " show " .. res.snapshot_id)
        assert.same({ "", 0 }, { err, rc })
        assert.truthy(out:find('\n     tool_call call_Ogl4xrgYelrGfioRoTJoXCF0 secret_retrieval_tool '
          .. '{"password": "mellon"}\n     tool_call call_J8hE6f1cZ8sJIzw3FCswowSI secret_retrieval_tool '
          .. '{"password": "radiance"}\n', 1, true), out)
        assert.truthy(out:find('\n    tool_call call_Ogl4xrgYelrGfioRoTJoXCF0 secret_retrieval_tool '
          .. '{"password": "mellon"}\n', 1, true), out)
      end)
    end)

    describe("usage in its real shapes", function()
      local PRICES = {
        ["gemini-2.5-flash"] = { input_cost_per_token = 3e-07, output_cost_per_token = 2.5e-06 },
        ["google/gemini-2.0-flash-exp:free"] = { input_cost_per_token = 0, output_cost_per_token = 0 },
        ["x-ai/grok-4-fast"] = { input_cost_per_token = 2e-07, output_cost_per_token = 5e-07 },
        ["x-ai/grok-4"] = { input_cost_per_token = 3e-06, output_cost_per_token = 1.5e-05,
                            cache_read_input_token_cost = 7.5e-07 },
      }

      it("Gemini: total_tokens above prompt + completion is thinking, flagged derived, priced as output", function()
        srv:queue{ { usage = { prompt_tokens = 10, completion_tokens = 5, total_tokens = 25 },
                     model = "gemini-2.5-flash" } }
        local res = assert(pipeline(provider("gemini", "gemini-2.5-flash"), nil, PRICES):generate(ctx()))
        local tm = doc(res.snapshot_id, "token_metrics")
        -- 25 - 10 - 5 = 10 thinking tokens, counted into completion
        assert.same({ 10, 15, 25, 10 },
          { tm.prompt_tokens, tm.completion_tokens, tm.total_tokens, tm.reasoning_tokens })
        assert.is_true(tm.calls[1].reasoning_tokens_derived)
        -- 10 x 0.3 µ$ + 15 x 2.5 µ$ = 40.5 µ$ = 40 500 000 picodollars
        assert.equal(40500000, tm.estimated_cost_picousd)
      end)

      it("DeepSeek: prompt_cache_hit_tokens give the cached count when no details are sent", function()
        srv:queue{ { usage = { prompt_tokens = 339, completion_tokens = 92, total_tokens = 431,
                               prompt_cache_hit_tokens = 320, prompt_cache_miss_tokens = 19 } } }
        local res = assert(pipeline(provider("openai", "deepseek-chat")):generate(ctx()))
        local tm = doc(res.snapshot_id, "token_metrics")
        assert.same({ 339, 320 }, { tm.prompt_tokens, tm.cached_prompt_tokens })
        assert.equal("prompt_cache_hit_tokens", tm.calls[1].cached_from)
      end)

      it("Groq: usage only under x_groq.usage is read; duplicated there it counts once", function()
        local u = { prompt_tokens = 20, completion_tokens = 7, total_tokens = 27 }
        local base = { id = "chatcmpl-g", model = "llama-3.1-8b-instant",
                       choices = { { index = 0, message = { role = "assistant", content = "hi" },
                                     finish_reason = "stop" } } }
        local only = {}
        for k, v in pairs(base) do only[k] = v end
        only.x_groq = { id = "req_1", usage = u }
        base.usage, base.x_groq = u, { id = "req_2", usage = u }
        srv:queue{ { body = cjson.encode(only) }, { body = cjson.encode(base) } }
        local p = pipeline(provider("openai", "llama-3.1-8b-instant"))
        local a, b = assert(p:generate(ctx())), assert(p:generate(ctx()))
        local ta, tb = doc(a.snapshot_id, "token_metrics"), doc(b.snapshot_id, "token_metrics")
        assert.same({ 20, 7, 27 }, { ta.prompt_tokens, ta.completion_tokens, ta.total_tokens })
        assert.same({ 20, 7, 27 }, { tb.prompt_tokens, tb.completion_tokens, tb.total_tokens })
        assert.equal("x_groq.usage", ta.calls[1].usage_from)
        assert.is_nil(tb.calls[1].usage_from)
      end)

      it("OpenRouter: leading whitespace, cost, cost_details, is_byok; the served model recorded and priced", function()
        local body = "\n         \n" .. [[{"id":"gen-1761-abc","provider":"xAI","model":"x-ai/grok-4-fast",]]
          .. [["object":"chat.completion","created":1761000000,"choices":[{"logprobs":null,"finish_reason":"stop",]]
          .. [["native_finish_reason":"stop","index":0,"message":{"role":"assistant","content":"Hello there.",]]
          .. [["refusal":null,"reasoning":null}}],"usage":{"prompt_tokens":100,"completion_tokens":10,]]
          .. [["total_tokens":110,"cost":0.000025,"is_byok":false,"prompt_tokens_details":{"cached_tokens":0},]]
          .. [["cost_details":{"upstream_inference_cost":null,"upstream_inference_prompt_cost":0.00002,]]
          .. [["upstream_inference_completions_cost":0.000005},"completion_tokens_details":{"reasoning_tokens":0}}}]]
        srv:queue{ { body = body } }
        local res = assert(pipeline(provider("openrouter", "google/gemini-2.0-flash-exp:free"), nil, PRICES)
          :generate(ctx()))
        local r = row(res.snapshot_id)
        assert.equal("x-ai/grok-4-fast", r.model_identifier)
        local tm = doc(res.snapshot_id, "token_metrics")
        assert.same({ "x-ai/grok-4-fast", "google/gemini-2.0-flash-exp:free" },
          { tm.calls[1].served_model, tm.calls[1].requested_model })
        -- priced as served: 100 x 0.2 µ$ + 10 x 0.5 µ$ = 25 µ$, not the free model's 0
        assert.equal(25000000, tm.estimated_cost_picousd)
        assert.equal(0.000025, tm.calls[1].provider_cost)
        assert.is_false(tm.calls[1].is_byok)
        assert.equal(0.00002, tm.calls[1].cost_details.upstream_inference_prompt_cost)
        assert.equal("Hello there.", r.content)
      end)

      it("OpenRouter, a recorded stream: requested a free Gemini, served x-ai/grok-4, priced as served", function()
        -- spec/fixtures/provider_streams/pydantic-ai_openrouter-served-grok-4.sse
        local f = assert(io.open("spec/fixtures/provider_streams/pydantic-ai_openrouter-served-grok-4.sse", "rb"))
        local bytes = f:read("a")
        f:close()
        srv:queue{ { sse_body = bytes, chunk_sizes = "random", chunk_seed = 7 } }
        local res = assert(pipeline(provider("openrouter", "google/gemini-2.0-flash-exp:free"), nil, PRICES)
          :generate(ctx(), { stream = true }))
        local r = row(res.snapshot_id)
        assert.equal("completed", r.status)
        assert.equal("x-ai/grok-4", r.model_identifier)
        assert.is_true(doc(res.snapshot_id, "performance_metrics").calls[1].streamed)
        assert.is_true(cjson.decode(srv:requests()[1].body).stream)
        local tm = doc(res.snapshot_id, "token_metrics")
        assert.same({ "x-ai/grok-4", "google/gemini-2.0-flash-exp:free" },
          { tm.calls[1].served_model, tm.calls[1].requested_model })
        assert.same({ 687, 187, 874, 679, 118 }, { tm.prompt_tokens, tm.completion_tokens, tm.total_tokens,
                                                  tm.cached_prompt_tokens, tm.reasoning_tokens })
        -- 8 x 3 µ$ + 679 cached x 0.75 µ$ + 187 x 15 µ$ = 3338.25 µ$: the very
        -- sum OpenRouter billed (usage.cost 0.00333825)
        assert.equal(3338250000, tm.estimated_cost_picousd)
        assert.equal(0.00333825, tm.calls[1].provider_cost)
        assert.is_false(tm.calls[1].is_byok)
        assert.equal(0.002805, tm.calls[1].cost_details.upstream_inference_completions_cost)
      end)

      it("a missing finish_reason stays unknown (JSON null)", function()
        srv:queue{ { finish_reason = false } }
        local res = assert(pipeline(provider("openai", "gpt-4o-mini")):generate(ctx()))
        local pm = row(res.snapshot_id).performance_metrics
        assert.truthy(pm:find('"finish_reason":null', 1, true), pm)
      end)
    end)

    describe("tool calls, structured output and refusals", function()
      local RULES = "spec/fixtures/rules_tool_shape"

      it("tools, tool_choice and response_format are sent and stored as parameters", function()
        local params = {
          tools = { { type = "function", ["function"] = { name = "get_weather",
            parameters = { type = "object", required = { "location" },
                           properties = { location = { type = "string" } } } } } },
          tool_choice = "required",
          response_format = { type = "json_object" },
        }
        srv:queue{ { tool_calls = { { id = "call_1", name = "get_weather", arguments = '{"location":"Paris"}' } } } }
        local res = assert(pipeline(provider("openai", "gpt-4o-mini"), RULES):generate(ctx(params)))
        local sent = cjson.decode(srv:requests()[1].body)
        assert.equal("get_weather", sent.tools[1]["function"].name)
        assert.same({ "required", "json_object" }, { sent.tool_choice, sent.response_format.type })
        local stored = doc(res.snapshot_id, "request_params")
        assert.same({ "get_weather", "required", "json_object" },
          { stored.tools[1]["function"].name, stored.tool_choice, stored.response_format.type })
        assert.equal(100, res.repair_metrics.initial_validation_score)
        assert.equal("", row(res.snapshot_id).content)
      end)

      it("a rule checks the tool call's arguments; the repaired call is stored beside the first", function()
        srv:queue{
          { tool_calls = { { id = "call_a", name = "get_weather", arguments = '{"city":"Paris"}' } } },
          { tool_calls = { { id = "call_b", name = "get_weather", arguments = '{"location": "Paris"}' } } },
        }
        local res = assert(pipeline(provider("openai", "gpt-4o-mini"), RULES):generate(ctx()))
        local rm = doc(res.snapshot_id, "repair_metrics")
        assert.same({ 1, 50, 100 }, { rm.repair_count, rm.initial_validation_score, rm.final_validation_score })
        assert.equal("tool_args_shape", rm.drafts[1].issues[1].slug)
        assert.same({ '{"city":"Paris"}', '{"location": "Paris"}' },
          { rm.drafts[1].tool_calls[1].arguments, rm.drafts[2].tool_calls[1].arguments })
        local calls = doc(res.snapshot_id, "performance_metrics").calls
        assert.same({ "call_a", "call_b" }, { calls[1].tool_calls[1].id, calls[2].tool_calls[1].id })
        assert.same({ "tool_calls", "tool_calls" }, { calls[1].finish_reason, calls[2].finish_reason })
        local out = cli("--db " .. q(db) .. " show " .. res.snapshot_id)
        assert.truthy(out:find('    tool_call call_a get_weather {"city":"Paris"}\n', 1, true), out)
        assert.truthy(out:find('    tool_call call_b get_weather {"location": "Paris"}\n', 1, true), out)
      end)

      it("Anthropic tool_use blocks are tool calls for the rules too", function()
        srv:queue{ { tool_calls = { { id = "toolu_1", name = "get_weather", arguments = '{"location":"Oslo"}' } } } }
        local res = assert(pipeline(provider("anthropic", "claude-haiku-4-5"), RULES):generate(ctx()))
        local rm = doc(res.snapshot_id, "repair_metrics")
        assert.same({ 0, 100 }, { rm.repair_count, rm.final_validation_score })
        assert.same({ id = "toolu_1", type = "tool_use", name = "get_weather", arguments = '{"location":"Oslo"}' },
          rm.drafts[1].tool_calls[1])
        assert.equal("tool_use", doc(res.snapshot_id, "performance_metrics").calls[1].finish_reason)
      end)

      it("the API key is scrubbed from tool calls and refusals before they are stored", function()
        srv:queue{ { tool_calls = { { id = "call_" .. KEY, name = "get_weather",
                                      arguments = '{"location":"' .. KEY .. '"}' } }, refusal = "no " .. KEY } }
        local res = assert(pipeline(provider("openai", "gpt-4o-mini"), RULES):generate(ctx()))
        local r = row(res.snapshot_id)
        for _, col in ipairs({ "repair_metrics", "performance_metrics" }) do
          assert.is_nil(r[col]:find(KEY, 1, true), col)
          assert.truthy(r[col]:find('{\\"location\\":\\"[REDACTED]\\"}', 1, true), r[col])
          assert.truthy(r[col]:find('"refusal":"no [REDACTED]"', 1, true), r[col])
        end
      end)

      it("an OpenAI refusal is a completed call, stored and seen by the rules", function()
        srv:queue{ { refusal = "I can't help with that." } }
        local res = assert(pipeline(provider("openai", "gpt-4o-mini"), RULES .. "_refusal"):generate(ctx()))
        local rm = doc(res.snapshot_id, "repair_metrics")
        assert.equal("I can't help with that.", rm.drafts[1].refusal)
        assert.same({ slug = "refusal_seen", message = "refused: I can't help with that.", penalty = 0 },
          rm.drafts[1].issues[1])
        assert.equal("I can't help with that.", doc(res.snapshot_id, "performance_metrics").calls[1].refusal)
        local out = cli("--db " .. q(db) .. " show " .. res.snapshot_id)
        assert.truthy(out:find("    refusal: I can't help with that.\n", 1, true), out)
      end)
    end)
  end)
end

require("spec.support.stores").both("real provider bodies", suite)

describe("the fixtures", function()
  it("are the bytes the README's checksums name, and every one is replayed above", function()
    local core = require("genaudit.core")
    local readme = read(FIX .. "README.md")
    local listed = 0
    for digest, file in readme:gmatch("\n(%x+)  ([%w%._%-]+%.json)") do
      listed = listed + 1
      assert.equal(digest, core.sha256(read(FIX .. file)), file)
      local replayed = false
      for _, b in ipairs(BODIES) do replayed = replayed or b.file == file end
      assert.is_true(replayed, file)
    end
    assert.equal(#BODIES, listed)
  end)
end)
