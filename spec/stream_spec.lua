-- spec/stream_spec.lua
-- Owns: the specs of genaudit.stream, the reader of one streamed answer
-- (issue 15 points 1 and 4, issue 20's streaming quirks), fed bytes
-- directly: OpenAI-compatible and Anthropic streams cut at every byte,
-- tool-call fragments merged exactly, Anthropic usage from message_start
-- and message_delta never added, Azure's preamble chunk, Groq's x_groq
-- usage, error events, on_chunk stopping the stream, a body that is not an
-- event stream, a stream without usage. What goes over real HTTP (libcurl,
-- nginx) is spec/stream_http_spec.lua's.
-- luacheck: max line length 140
-- (the streams below keep each event on one line, as providers send them)
local stream = require("genaudit.stream")
local providers = require("genaudit.providers")
local json = require("genaudit.json")

local function sse(chunks)
  local out = {}
  for _, c in ipairs(chunks) do out[#out + 1] = "data: " .. c .. "\n\n" end
  out[#out + 1] = "data: [DONE]\n\n"
  return table.concat(out)
end

local function anthropic_sse(events)
  local out = {}
  for _, e in ipairs(events) do out[#out + 1] = "event: " .. e[1] .. "\ndata: " .. e[2] .. "\n\n" end
  return table.concat(out)
end

-- An OpenAI stream: the opening role delta, three text deltas (one with a
-- 4-byte emoji), finish_reason, the include_usage chunk.
local OPENAI = sse({
  '{"id":"chatcmpl-9x","object":"chat.completion.chunk","created":1718000000,"model":"gpt-4o-mini-2024-07-18",'
    .. '"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}',
  '{"id":"chatcmpl-9x","object":"chat.completion.chunk","created":1718000000,"model":"gpt-4o-mini-2024-07-18",'
    .. '"choices":[{"index":0,"delta":{"content":"Ship "},"finish_reason":null}]}',
  '{"id":"chatcmpl-9x","object":"chat.completion.chunk","created":1718000000,"model":"gpt-4o-mini-2024-07-18",'
    .. '"choices":[{"index":0,"delta":{"content":"faster \\ud83d\\ude00 "},"finish_reason":null}]}',
  '{"id":"chatcmpl-9x","object":"chat.completion.chunk","created":1718000000,"model":"gpt-4o-mini-2024-07-18",'
    .. '"choices":[{"index":0,"delta":{"content":"today"},"finish_reason":null}]}',
  '{"id":"chatcmpl-9x","object":"chat.completion.chunk","created":1718000000,"model":"gpt-4o-mini-2024-07-18",'
    .. '"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
  '{"id":"chatcmpl-9x","object":"chat.completion.chunk","created":1718000000,"model":"gpt-4o-mini-2024-07-18",'
    .. '"choices":[],"usage":{"prompt_tokens":31,"completion_tokens":6,"total_tokens":37,'
    .. '"prompt_tokens_details":{"cached_tokens":0}}}',
})

local ANTHROPIC = anthropic_sse({
  { "message_start", '{"type":"message_start","message":{"id":"msg_01ABC","type":"message","role":"assistant",'
    .. '"model":"claude-3-5-haiku-20241022","content":[],"stop_reason":null,"stop_sequence":null,'
    .. '"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":100,'
    .. '"output_tokens":1}}}' },
  { "content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}' },
  { "ping", '{"type": "ping"}' },
  { "content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}' },
  { "content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":", w\\u00f6rld"}}' },
  { "content_block_stop", '{"type":"content_block_stop","index":0}' },
  { "message_delta", '{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
    .. '"usage":{"output_tokens":15}}' },
  { "message_stop", '{"type":"message_stop"}' },
})

-- Feeds `s` cut into pieces of `k` bytes (k = 0: whole); returns the accumulator.
local function feed(wire, s, k, on_chunk)
  local acc = stream.new{ wire = wire, on_chunk = on_chunk, kind = "initial" }
  if k == 0 then k = #s end
  for i = 1, #s, k do
    local ok, err = acc:feed(s:sub(i, i + k - 1))
    if not ok then return acc, err end
  end
  return acc
end

local function parsed(wire, acc)
  local p = wire == "anthropic" and providers.anthropic{ model = "claude-3-5-haiku", api_key = "sk-spec-0123456789abcdef" }
    or providers.openai{ model = "gpt-4o-mini", api_key = "sk-spec-0123456789abcdef" }
  local body, has_usage = acc:body()
  local res, err = p:parse_response(200, body)
  assert(res, err)
  return res, has_usage
end

describe("genaudit.stream", function()
  it("reads an OpenAI stream cut at every size into the same answer and usage", function()
    for _, k in ipairs({ 0, 1, 2, 3, 5, 7, 13, 64 }) do
      local texts = {}
      local acc = feed("openai", OPENAI, k, function(t, info)
        assert.equal("initial", info.kind)
        assert.equal("text", info.type)
        texts[#texts + 1] = t
      end)
      assert.is_true(acc:complete())
      assert.equal("Ship faster \240\159\152\128 today", acc:content())
      assert.same({ "Ship ", "faster \240\159\152\128 ", "today" }, texts) -- one call per delta, never a cut one
      local res, has_usage = parsed("openai", acc)
      assert.is_true(has_usage)
      assert.equal("Ship faster \240\159\152\128 today", res.content)
      assert.equal("gpt-4o-mini-2024-07-18", res.model_identifier)
      assert.equal("stop", res.finish_reason)
      assert.equal("chatcmpl-9x", res.response_id)
      assert.equal(31, res.usage.prompt_tokens)
      assert.equal(6, res.usage.completion_tokens)
      assert.equal(37, res.usage.total_tokens)
      assert.equal(3, acc.chunks) -- the role-only opening delta is no chunk
      assert.equal(7, acc.events)
    end
  end)

  it("takes Anthropic usage from message_start and message_delta without adding them", function()
    for _, k in ipairs({ 0, 1, 4, 11 }) do
      local acc = feed("anthropic", ANTHROPIC, k)
      assert.is_true(acc:complete())
      assert.equal("Hello, w\195\182rld", acc:content())
      local res = parsed("anthropic", acc)
      assert.equal("claude-3-5-haiku-20241022", res.model_identifier)
      assert.equal("end_turn", res.finish_reason)
      assert.equal("msg_01ABC", res.response_id)
      assert.equal(15, res.usage.completion_tokens) -- message_delta's final count, not 1 + 15
      assert.equal(125, res.usage.prompt_tokens) -- input + cache read, as unstreamed
      assert.equal(100, res.usage.cached_prompt_tokens)
    end
  end)

  it("merges OpenAI tool-call fragments by index, arguments exactly as sent", function()
    local base = '{"id":"chatcmpl-t","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06",'
    local s = sse({
      base .. '"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,'
        .. '"id":"call_A","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}',
      base .. '"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"loc"}}]}}]}',
      base .. '"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ation\\": \\"Paris\\"}"}}]}}]}',
      base .. '"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_B","type":"function",'
        .. '"function":{"name":"get_time","arguments":"{}"}}]}}]}',
      base .. '"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}',
      base .. '"choices":[],"usage":{"prompt_tokens":80,"completion_tokens":40,"total_tokens":120}}',
    })
    for _, k in ipairs({ 0, 1, 9 }) do
      local acc = feed("openai", s, k)
      assert.is_true(acc:complete())
      local res = parsed("openai", acc)
      assert.equal("", res.content)
      assert.equal("tool_calls", res.finish_reason)
      assert.equal(2, #res.tool_calls)
      assert.same({ id = "call_A", type = "function", name = "get_weather", arguments = '{"location": "Paris"}' },
        res.tool_calls[1])
      assert.same({ id = "call_B", type = "function", name = "get_time", arguments = "{}" }, res.tool_calls[2])
      assert.same({ '{"location": "Paris"}', "{}" }, acc:tool_arguments())
    end
  end)

  it("keeps an Anthropic tool_use input as its partial_json fragments spelled it", function()
    local s = anthropic_sse({
      { "message_start", '{"type":"message_start","message":{"id":"msg_T","model":"claude-sonnet-4-20250514",'
        .. '"usage":{"input_tokens":400,"output_tokens":2}}}' },
      { "content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}' },
      { "content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Checking."}}' },
      { "content_block_stop", '{"type":"content_block_stop","index":0}' },
      { "content_block_start", '{"type":"content_block_start","index":1,"content_block":{"type":"tool_use",'
        .. '"id":"toolu_01","name":"get_weather","input":{}}}' },
      { "content_block_delta", '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}' },
      { "content_block_delta", '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
        .. '"partial_json":"{\\"city\\": \\"Par"}}' },
      { "content_block_delta", '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"is\\"}"}}' },
      { "content_block_stop", '{"type":"content_block_stop","index":1}' },
      { "message_delta", '{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":61}}' },
      { "message_stop", '{"type":"message_stop"}' },
    })
    local acc = feed("anthropic", s, 3)
    assert.is_true(acc:complete())
    local res = parsed("anthropic", acc)
    assert.equal("Checking.", res.content)
    assert.equal("tool_use", res.finish_reason)
    assert.equal(61, res.usage.completion_tokens)
    assert.same({ '{"city": "Paris"}' }, acc:tool_arguments())
    assert.equal("toolu_01", res.tool_calls[1].id)
    assert.equal("get_weather", res.tool_calls[1].name)
  end)

  it("reads Azure's content-filter preamble chunk for its verdicts only", function()
    local s = sse({
      '{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,'
        .. '"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}}}]}',
      '{"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0}],"created":1,'
        .. '"id":"chatcmpl-az","model":"gpt-4o-2024-05-13","object":"chat.completion.chunk"}',
      '{"choices":[{"delta":{"content":"Hi"},"finish_reason":null,"index":0,"content_filter_results":'
        .. '{"hate":{"filtered":false,"severity":"safe"}}}],"created":1,"id":"chatcmpl-az","model":"gpt-4o-2024-05-13",'
        .. '"object":"chat.completion.chunk"}',
      '{"choices":[{"delta":{},"finish_reason":"stop","index":0}],"created":1,"id":"chatcmpl-az",'
        .. '"model":"gpt-4o-2024-05-13","object":"chat.completion.chunk","usage":{"prompt_tokens":9,'
        .. '"completion_tokens":1,"total_tokens":10}}',
    })
    local acc = feed("openai", s, 5)
    local res = parsed("openai", acc)
    assert.equal("chatcmpl-az", res.response_id)
    assert.equal("gpt-4o-2024-05-13", res.model_identifier)
    assert.equal("Hi", res.content)
    assert.equal("safe", res.prompt_filter_results[1].content_filter_results.hate.severity)
    assert.equal(false, res.content_filter_results.hate.filtered)
    assert.equal(10, res.usage.total_tokens)
  end)

  it("reads Groq's usage under x_groq once", function()
    local s = sse({
      '{"id":"chatcmpl-g","object":"chat.completion.chunk","created":1,"model":"llama-3.1-8b-instant",'
        .. '"choices":[{"index":0,"delta":{"role":"assistant","content":"Yo"},"finish_reason":null}]}',
      '{"id":"chatcmpl-g","object":"chat.completion.chunk","created":1,"model":"llama-3.1-8b-instant",'
        .. '"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"x_groq":{"id":"req_1","usage":'
        .. '{"queue_time":0.01,"prompt_tokens":12,"prompt_time":0.001,"completion_tokens":2,"completion_time":0.002,'
        .. '"total_tokens":14,"total_time":0.003}}}',
    })
    local res = parsed("openai", feed("openai", s, 0))
    assert.equal(12, res.usage.prompt_tokens)
    assert.equal(14, res.usage.total_tokens)
    assert.equal("x_groq.usage", res.usage_notes.usage_from)
  end)

  it("says when a stream sent no usage, and the answer stays readable", function()
    local s = OPENAI:gsub('data: {[^\n]*"usage"[^\n]*}\n\n', "")
    local acc = feed("openai", s, 4)
    assert.is_true(acc:complete())
    local res, has_usage = parsed("openai", acc)
    assert.is_false(has_usage)
    assert.is_nil(acc:known_usage())
    assert.equal("Ship faster \240\159\152\128 today", res.content)
  end)

  it("fails on an error event, with the provider's words", function()
    local s = anthropic_sse({
      { "message_start", '{"type":"message_start","message":{"id":"msg_E","model":"claude-3-5-haiku-20241022",'
        .. '"usage":{"input_tokens":10,"output_tokens":1}}}' },
      { "content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Par"}}' },
      { "error", '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}' },
    })
    local acc, err = feed("anthropic", s, 0)
    assert.equal("PROVIDER_ERROR: the provider sent an error event: overloaded_error: Overloaded", err)
    assert.same({ nil, err, "PROVIDER_ERROR" }, { acc:complete() })
    assert.equal("Par", acc:content())
    assert.equal(10, acc:known_usage().input_tokens)
    local oa, oerr = feed("openai", 'data: {"error":{"message":"upstream died","type":"server_error"}}\n\n', 0)
    assert.equal("PROVIDER_ERROR: the provider sent an error event: server_error: upstream died", oerr)
    assert.equal("PROVIDER_ERROR", select(3, oa:complete()))
  end)

  it("stops when on_chunk raises or returns false", function()
    local _, err = feed("openai", OPENAI, 0, function() error("client went away", 0) end)
    assert.equal("STREAM_ABORTED: on_chunk raised: client went away", err)
    local n = 0
    local acc, err2 = feed("openai", OPENAI, 1, function()
      n = n + 1
      if n == 2 then return false, "enough" end
    end)
    assert.equal("STREAM_ABORTED: enough", err2)
    local _, err3 = feed("openai", OPENAI, 0, function() return nil, "closed" end) -- Lua's nil, err
    assert.equal("STREAM_ABORTED: closed", err3)
    local kept = feed("openai", OPENAI, 0, function() end) -- returning nothing goes on
    assert.is_true(kept:complete())
    assert.equal(2, n)
    assert.equal("Ship faster \240\159\152\128 ", acc:content()) -- what came before the stop
    assert.equal("STREAM_ABORTED", select(3, acc:complete()))
  end)

  it("refuses an over-long event and a stream without its end", function()
    local acc = stream.new{ wire = "openai", max_event_bytes = 64 }
    local ok, err = acc:feed("data: " .. ("x"):rep(100) .. "\n\n")
    assert.is_nil(ok)
    assert.matches("^SSE: over%-long event", err)
    local cut = feed("openai", OPENAI:sub(1, 500), 0)
    assert.same({ nil, "BAD_RESPONSE: the stream ended before its end marker ([DONE])", "BAD_RESPONSE" },
      { cut:complete() })
  end)

  it("keeps a body that is not an event stream whole (a provider that ignored stream: true)", function()
    local body = '{"id":"chatcmpl-p","object":"chat.completion","model":"m","choices":[{"index":0,'
      .. '"message":{"role":"assistant","content":"plain"},"finish_reason":"stop"}],'
      .. '"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
    local acc = feed("openai", body, 7)
    assert.equal(body, acc:plain_body())
    assert.equal(0, acc.events)
    local p = providers.openai{ model = "m", api_key = "sk-spec-0123456789abcdef" }
    assert.equal("plain", assert(p:parse_response(200, acc:plain_body())).content)
    assert.is_nil(feed("openai", OPENAI, 0):plain_body())
  end)

  it("asks for a stream, and for its usage on the OpenAI wire", function()
    local p = providers.openai{ model = "gpt-4o-mini", api_key = "sk-spec-0123456789abcdef" }
    local req = assert(p:request({ { role = "user", content = "hi" } }, { stream_options = { x = 1 } }, { stream = true }))
    local doc = json.decode(req.body)
    assert.equal(true, doc.stream)
    assert.same({ include_usage = true, x = 1 }, doc.stream_options)
    local quiet = providers.azure{ resource = "r", deployment = "d", api_key = "sk-spec-0123456789abcdef",
                                   api_version = "2024-06-01", stream_usage = false }
    local qdoc = json.decode(assert(quiet:request({ { role = "user", content = "hi" } }, {}, { stream = true })).body)
    assert.equal(true, qdoc.stream)
    assert.is_nil(qdoc.stream_options) -- an api-version that refuses the field is not sent it
    assert.has_error(function() providers.openai{ model = "m", stream_usage = "no" } end)
    local a = providers.anthropic{ model = "claude-3-5-haiku", api_key = "sk-spec-0123456789abcdef" }
    local adoc = json.decode(assert(a:request({ { role = "user", content = "hi" } }, {}, { stream = true })).body)
    assert.equal(true, adoc.stream)
    assert.is_nil(adoc.stream_options)
  end)
end)
