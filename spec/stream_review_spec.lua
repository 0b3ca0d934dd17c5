-- spec/stream_review_spec.lua
-- Owns: the specs from the hostile review of streaming (issue 15): hosts
-- whose on_data / on_chunk reenter, raise or yield, and the event shapes of
-- real OpenAI-compatible and Anthropic providers that the first specs did
-- not send (a repeated tool-call name, tool calls without index, `event:
-- error` on the OpenAI wire, cumulative usage on every chunk, Anthropic
-- thinking blocks), each through the real libcurl client and the local
-- provider's raw sse_body replay.
-- luacheck: max line length 140
local genaudit = require("genaudit")
local core = require("genaudit.core")
local provider_server = require("spec.support.provider")

local KEY = "sk-review-spec-0123456789abcdef"

describe("streaming, hostile review", function()
  local srv

  setup(function() srv = provider_server.start{ api_key = KEY } end)
  teardown(function() srv:stop() end)
  before_each(function() srv:reset() end)

  -- A raw streamed request through core.http_client to the local provider.
  local function stream_request(http, on_data)
    return http:request{
      url = srv.url .. "/v1/chat/completions",
      headers = { Authorization = "Bearer " .. KEY, ["Content-Type"] = "application/json" },
      body = '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}',
      retries = 0, on_data = on_data,
    }
  end

  -- One streamed client:complete() of the raw event stream sse (OpenAI
  -- wire unless wire says otherwise): text, err, code, answer, the run,
  -- its token_metrics.
  local function complete(sse, wire)
    srv:queue{ { sse_body = sse } }
    local make = wire == "anthropic" and genaudit.providers.anthropic or genaudit.providers.openai
    local client = require("genaudit.client").new{ provider = make{ base_url = srv.url, api_key = KEY, model = "m" } }
    local run = client:run()
    local text, err, code, answer = client:complete(run, "initial", { { role = "user", content = "x" } }, {},
      { stream = true })
    local tm = client:token_metrics(run)
    client:close()
    return text, err, code, answer, run, tm
  end

  local function data(chunks)
    local out = {}
    for _, c in ipairs(chunks) do out[#out + 1] = "data: " .. c .. "\n\n" end
    return table.concat(out)
  end

  local USAGE = '"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}'

  describe("OpenAI-compatible tool calls", function()
    it("keeps a tool-call name sent again with every fragment (Mistral) once, not doubled", function()
      local text, err, _, answer = complete(data{
        '{"id":"a","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
        '{"id":"a","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"id":"c1","index":0,"type":"function",'
          .. '"function":{"name":"get_weather","arguments":"{\\"city\\""}}]}}]}',
        '{"id":"a","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"id":"c1","index":0,"type":"function",'
          .. '"function":{"name":"get_weather","arguments":":\\"Lyon\\"}"}}]}}]}',
        '{"id":"a","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}],' .. USAGE .. '}',
        "[DONE]" })
      assert(text, err)
      assert.equal(1, #answer.tool_calls)
      assert.equal("get_weather", answer.tool_calls[1].name)
      assert.equal("c1", answer.tool_calls[1].id)
      assert.equal('{"city":"Lyon"}', answer.tool_calls[1].arguments)
    end)

    it("keeps tool calls sent whole without index (Ollama before 0.4.7) apart, by their ids", function()
      local text, err, _, answer = complete(data{
        '{"id":"a","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"","tool_calls":'
          .. '[{"id":"call_a","type":"function","function":{"name":"f1","arguments":"{}"}}]}}]}',
        '{"id":"a","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"","tool_calls":'
          .. '[{"id":"call_b","type":"function","function":{"name":"f2","arguments":"{\\"x\\":1}"}}]}}]}',
        '{"id":"a","model":"m","choices":[{"index":0,"delta":{"content":""},"finish_reason":"tool_calls"}]}',
        '{"id":"a","model":"m","choices":[],' .. USAGE .. '}',
        "[DONE]" })
      assert(text, err)
      assert.equal(2, #answer.tool_calls)
      assert.same({ "call_a", "f1", "{}" }, { answer.tool_calls[1].id, answer.tool_calls[1].name, answer.tool_calls[1].arguments })
      assert.same({ "call_b", "f2", '{"x":1}' }, { answer.tool_calls[2].id, answer.tool_calls[2].name, answer.tool_calls[2].arguments })
    end)

    it("keeps tool calls that all say index 0 (Ollama >= 0.4.7) apart, by their ids", function()
      local text, err, _, answer = complete(data{
        '{"id":"a","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"","tool_calls":'
          .. '[{"id":"call_a","index":0,"type":"function","function":{"name":"file_write","arguments":"{\\"path\\":\\"a\\"}"}}]}}]}',
        '{"id":"a","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"","tool_calls":'
          .. '[{"id":"call_b","index":0,"type":"function","function":{"name":"file_write","arguments":"{\\"path\\":"}}]}}]}',
        '{"id":"a","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\\"b\\"}"}}]}}]}',
        '{"id":"a","model":"m","choices":[{"index":0,"delta":{"content":""},"finish_reason":"tool_calls"}]}',
        '{"id":"a","model":"m","choices":[],' .. USAGE .. '}',
        "[DONE]" })
      assert(text, err)
      assert.equal(2, #answer.tool_calls)
      assert.same({ "call_a", "file_write", '{"path":"a"}' },
        { answer.tool_calls[1].id, answer.tool_calls[1].name, answer.tool_calls[1].arguments })
      assert.same({ "call_b", "file_write", '{"path":"b"}' },
        { answer.tool_calls[2].id, answer.tool_calls[2].name, answer.tool_calls[2].arguments })
    end)
  end)

  describe("OpenAI-compatible errors", function()
    it("reads `event: error` as the provider's error, with its words", function()
      local text, err, code, _, run = complete(data{
        '{"id":"a","model":"m","choices":[{"index":0,"delta":{"content":"Hello"}}]}' }
        .. 'event: error\ndata: {"message":"upstream overloaded"}\n\n')
      assert.is_nil(text)
      assert.equal("PROVIDER_ERROR", code)
      assert.matches("^PROVIDER_ERROR: the provider sent an error event: upstream overloaded %(stream broken after", err)
      assert.equal("Hello", run.content) -- the partial text kept
    end)
  end)

  describe("usage and ends", function()
    it("takes cumulative usage sent on every chunk (vLLM continuous_usage_stats) once, the last, and skips usage null", function()
      local text, err, _, _, _, tm = complete(data{
        '{"id":"a","model":"m","choices":[{"index":0,"delta":{"content":"Hel"}}],"usage":null}',
        '{"id":"a","model":"m","choices":[{"index":0,"delta":{"content":"lo"}}],'
          .. '"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}',
        '{"id":"a","model":"m","choices":[{"index":0,"delta":{"content":null},"finish_reason":"stop"}],'
          .. '"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}',
        '{"id":"a","model":"m","choices":[],"usage":null}',
        "[DONE]" })
      assert.equal("Hello", text, err)
      assert.same({ 3, 2, 5 }, { tm.prompt_tokens, tm.completion_tokens, tm.total_tokens })
      assert.is_nil(tm.usage_missing)
    end)

    it("reads Anthropic thinking and server tool blocks without their text, usage nulls skipped", function()
      local function ev(name, d) return "event: " .. name .. "\ndata: " .. d .. "\n\n" end
      local text, err, _, answer, _, tm = complete(table.concat{
        ev("message_start", '{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
          .. '"model":"claude","content":[],"usage":{"input_tokens":10,"cache_creation_input_tokens":null,'
          .. '"cache_read_input_tokens":null,"output_tokens":1}}}'),
        ev("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}'),
        ev("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}'),
        ev("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQB"}}'),
        ev("content_block_stop", '{"type":"content_block_stop","index":0}'),
        ev("content_block_start", '{"type":"content_block_start","index":1,"content_block":{"type":"server_tool_use",'
          .. '"id":"srvtoolu_1","name":"web_search","input":{}}}'),
        ev("content_block_delta", '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
          .. '"partial_json":"{\\"query\\":\\"x\\"}"}}'),
        ev("content_block_stop", '{"type":"content_block_stop","index":1}'),
        ev("content_block_start", '{"type":"content_block_start","index":2,"content_block":{"type":"text","text":""}}'),
        ev("content_block_delta", '{"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"Answer."}}'),
        ev("content_block_stop", '{"type":"content_block_stop","index":2}'),
        ev("message_delta", '{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":null,'
          .. '"output_tokens":15}}'),
        ev("message_stop", '{"type":"message_stop"}') }, "anthropic")
      assert.equal("Answer.", text, err)
      assert.is_nil(answer.tool_calls) -- a server tool is the provider's, not a call for the host
      assert.same({ 10, 15 }, { tm.prompt_tokens, tm.completion_tokens })
    end)

    it("accepts a stream that sent its finish reason and ended cleanly without [DONE]", function()
      local text, err = complete(data{
        '{"id":"a","model":"m","choices":[{"index":0,"delta":{"content":"Done"},"finish_reason":"stop"}],' .. USAGE .. '}' })
      assert.equal("Done", text, err)
    end)

    it("fails a 2xx with an empty body as a stream that held no event", function()
      local text, err, code = complete("")
      assert.is_nil(text)
      assert.equal("BAD_RESPONSE", code)
      assert.equal("BAD_RESPONSE: the stream held no event (stream broken after 0 bytes, 0 chunks)", err)
    end)

    it("stores no API key a streamed delta, tool call, model or error echoes", function()
      local text, err, _, answer, run = complete(data{
        '{"id":"a","model":"m-' .. KEY .. '","choices":[{"index":0,"delta":{"content":"key ' .. KEY .. ' end",'
          .. '"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"f","arguments":"{\\"k\\":\\"'
          .. KEY:sub(1, 12) .. '"}}]}}]}',
        '{"id":"a","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"'
          .. KEY:sub(13) .. '\\"}"}}]},"finish_reason":"stop"}],' .. USAGE .. '}',
        "[DONE]" })
      assert(text, err)
      assert.is_nil(text:find(KEY, 1, true))
      assert.is_nil(answer.tool_calls[1].arguments:find(KEY:sub(5, 20), 1, true))
      assert.is_nil(require("cjson").encode(run.http):find(KEY:sub(5, 20), 1, true))
      assert.is_nil((run.model_identifier or ""):find(KEY, 1, true))
      local _, err2, _, _, run2 = complete(data{
        '{"id":"a","model":"m","choices":[{"index":0,"delta":{"content":"' .. KEY .. '"}}]}',
        '{"error":{"message":"bad key ' .. KEY .. '","type":"invalid_request_error"}}' })
      assert.is_nil(err2:find(KEY:sub(5, 20), 1, true))
      assert.is_nil(require("cjson").encode(run2.http):find(KEY:sub(5, 20), 1, true))
      assert.is_nil(run2.content:find(KEY:sub(5, 20), 1, true))
    end)
  end)

  describe("pipeline", function()
    local tmp = require("spec.support.tmp")
    local cjson = require("cjson")
    local dir, store

    before_each(function()
      dir = tmp.dir()
      os.execute("mkdir -p " .. dir .. "/templates " .. dir .. "/rules")
      tmp.write(dir .. "/templates/launch.lua", [[return {
        version = "7", voice_signature = "You are {{business.name}}.",
        constraints = { "At most 5 words." }, task = "Announce {{facts.product}}." }]])
      tmp.write(dir .. "/rules/length.lua", [[return { slug = "length_exceeded", check = function(d)
        local n = select(2, d:gsub("%S+", ""))
        if n > 5 then return { message = n .. " words, limit 5", penalty = 30 } end end }]])
      tmp.write(dir .. "/rules/policy.lua", [[return { budget = 2 }]])
      store = assert(genaudit.open("sqlite:" .. dir .. "/audit.db"))
    end)

    after_each(function()
      store:close()
      tmp.rm(dir)
    end)

    local function pipeline()
      return genaudit.pipeline{
        store = store, provider = genaudit.providers.openai{ base_url = srv.url, api_key = KEY, model = "gpt-4o-mini" },
        templates = dir .. "/templates", rules = dir .. "/rules", backoff_ms = 10,
      }
    end

    local function ctx()
      return { org_id = 42, user_id = 7, platform = "linkedin", template_id = "launch",
               business = { name = "Acme" }, facts = { product = "Anvil 2" } }
    end

    it("keeps the initial draft as content when a repair's stream breaks, the repair's partial text on its call", function()
      local DRAFT = "one two three four five six seven eight"
      srv:queue{ { content = DRAFT }, { content = "short fixed text here now", chunk_sizes = 5, drop_after_bytes = 900 } }
      local seen = { initial = {}, repair = {} }
      local r, err, code, id = pipeline():generate(ctx(), { on_chunk = function(t, info)
        local k = seen[info.kind]
        k[#k + 1] = t
      end })
      assert.is_nil(r)
      assert.equal("HTTP", code)
      assert.matches("stream broken after", err)
      local row = assert(store:query("SELECT * FROM generation_snapshots WHERE id = ?", { id }))[1]
      assert.equal("failed", row.status)
      assert.equal(DRAFT, row.content)
      assert.equal(DRAFT, table.concat(seen.initial))
      local calls = cjson.decode(row.performance_metrics).calls
      assert.equal(2, #calls)
      assert.is_true(calls[2].stream_broken)
      assert.equal(table.concat(seen.repair), calls[2].content)
      assert.is_true(#calls[2].content > 0, "a partial repair text")
    end)
  end)

  describe("core.http_client on_data", function()
    it("refuses a request on the same client from inside on_data, and the stream goes on", function()
      srv:queue{ { content = "one two three four five six", chunk_sizes = 7 }, { content = "inner" } }
      local http = core.http_client{}
      local pieces, inner_ok, inner_err = {}, nil, nil
      local res = assert(stream_request(http, function(b)
        pieces[#pieces + 1] = b
        if #pieces == 2 then inner_ok, inner_err = pcall(stream_request, http, function() return true end) end
        return true
      end))
      assert.is_false(inner_ok)
      assert.matches("attempt to use an http_client inside its own running request %(on_data%)", inner_err)
      assert.equal(200, res.status)
      assert.equal("", res.body) -- every byte went to on_data, none to the buffer
      assert.equal(res.stream_bytes, #table.concat(pieces))
      assert.equal(res.reads, #pieces)
      assert.matches("data: %[DONE%]\n\n$", table.concat(pieces))
      assert.equal(1, #srv:requests()) -- the inner request never went out
      assert.equal(200, assert(stream_request(http, function() return true end)).status) -- still usable
      http:close()
    end)

    it("stops cleanly when on_data yields (coroutine around the request) or raises a non-string", function()
      srv:queue{ { content = "one two three" }, { content = "one two three" } }
      local http = core.http_client{}
      local co = coroutine.wrap(function()
        return stream_request(http, function() coroutine.yield("never") return true end)
      end)
      local res, err, code = co()
      assert.is_nil(res)
      assert.equal("STREAM_ABORTED", code)
      assert.matches("^STREAM_ABORTED: on_data raised: .*attempt to yield across a? ?C%-call boundary", err)
      res, err, code = stream_request(http, function() error({ reason = "a table" }) end)
      assert.is_nil(res)
      assert.equal("STREAM_ABORTED", code)
      assert.equal("STREAM_ABORTED: on_data raised: (an error object that is not a string)", err)
      assert.equal(2, #srv:requests()) -- neither tried again
      http:close()
    end)

    it("streams 1-byte reads with full collections inside on_data, every byte once", function()
      srv:queue{ { content = string.rep("tick ", 400), chunk_sizes = 1 } }
      local http = core.http_client{}
      local pieces = {}
      local res = assert(stream_request(http, function(b)
        pieces[#pieces + 1] = b
        if #pieces % 16 == 0 then collectgarbage() end
        return true
      end))
      assert.equal(res.reads, #pieces)
      assert.is_true(res.reads > 2000, "one read per byte")
      local body = table.concat(pieces)
      assert.equal(res.stream_bytes, #body)
      local text = {}
      for c in body:gmatch('"content":"([^"]*)"') do text[#text + 1] = c end
      assert.equal(string.rep("tick ", 400), table.concat(text))
      http:close()
    end)

    it("streams the 2xx after a retried 503 and keeps none of the 503's body", function()
      srv:queue{ { status = 503, body = "overloaded, try later" }, { content = "after the retry" } }
      local http = core.http_client{}
      local pieces = {}
      local res = assert(http:request{
        url = srv.url .. "/v1/chat/completions",
        headers = { Authorization = "Bearer " .. KEY, ["Content-Type"] = "application/json" },
        body = '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}',
        retries = 1, backoff_ms = 1, on_data = function(b) pieces[#pieces + 1] = b return true end,
      })
      assert.equal(200, res.status)
      assert.equal(1, res.retries)
      assert.equal("", res.body)
      assert.is_true(res.streamed)
      local body = table.concat(pieces)
      assert.is_nil(body:find("overloaded", 1, true))
      assert.matches("after the retry", body, 1, true)
      http:close()
    end)

    it("refuses to close the client from inside on_data (it would free the running transfer)", function()
      srv:queue{ { content = "one two three four five six", chunk_sizes = 7 } }
      local http = core.http_client{}
      local n, ok, err = 0, nil, nil
      local res = assert(stream_request(http, function()
        n = n + 1
        if n == 1 then ok, err = pcall(http.close, http) end
        return true
      end))
      assert.is_false(ok)
      assert.matches("attempt to close an http_client inside its own running request %(on_data%)", err)
      assert.equal(200, res.status)
      assert.is_true(n > 1)
      assert.matches("genaudit.http_client %(0x", tostring(http))
      assert.is_true(http:close())
      assert.equal("genaudit.http_client (closed)", tostring(http))
    end)
  end)
end)
