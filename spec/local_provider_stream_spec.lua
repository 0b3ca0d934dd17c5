-- spec/local_provider_stream_spec.lua
-- Owns: the busted specs for the streaming side of tools/local_provider.lua
-- (requests with "stream": true, the streaming script fields) and for the
-- recorded real event streams in spec/fixtures/provider_streams/ (checksums,
-- byte-exact replay through sse_body, the hand-written expected values).
-- Everything goes through real HTTP on 127.0.0.1 with a raw luasocket client
-- that decodes chunked transfer-encoding itself and keeps every chunk; no
-- genaudit code is used.

local socket = require("socket")
local cjson = require("cjson")
local provider = require("spec.support.provider")

local KEY = "sk-spec-stream-0123456789"
local PROMPT = "Write a launch post for our mobile app."
local FIX = "spec/fixtures/provider_streams/"

local srv

----------------------------------------------------------------------------
-- raw HTTP/1.1 client that keeps the chunks

local function send_request(s, path, headers, body, version)
  local out = { "POST " .. path .. " HTTP/" .. (version or "1.1") .. "\r\n", "Host: 127.0.0.1\r\n",
                "Content-Length: " .. #body .. "\r\n" }
  for _, h in ipairs(headers) do out[#out + 1] = h[1] .. ": " .. h[2] .. "\r\n" end
  out[#out + 1] = "\r\n"
  out[#out + 1] = body
  assert(s:send(table.concat(out)))
end

local function read_head(s)
  local line = assert(s:receive("*l"))
  local resp = { status = tonumber(line:match("^HTTP/1%.1 (%d%d%d) ")), headers = {} }
  while true do
    local h = assert(s:receive("*l"))
    if h == "" then break end
    local name, value = h:match("^([^:]+):%s*(.-)%s*$")
    resp.headers[name:lower()] = value
  end
  return resp
end

-- Reads the body: chunked (every chunk kept, terminated = saw "0\r\n\r\n"),
-- Content-Length, or up to the close.
local function read_body(s, resp)
  resp.chunks, resp.terminated = {}, false
  if resp.headers["transfer-encoding"] == "chunked" then
    while true do
      local line = s:receive("*l")
      if not line then break end
      local n = tonumber(line:match("^(%x+)"), 16)
      if n == 0 then
        assert.equal("", s:receive("*l"))
        resp.terminated = true
        break
      end
      local data, _, partial = s:receive(n)
      if not data then resp.chunks[#resp.chunks + 1] = partial break end
      resp.chunks[#resp.chunks + 1] = data
      if s:receive(2) ~= "\r\n" then break end
    end
  elseif resp.headers["content-length"] then
    resp.chunks[1] = assert(s:receive(tonumber(resp.headers["content-length"])))
  else
    local data, _, partial = s:receive("*a")
    resp.chunks[1] = data or partial
  end
  resp.body = table.concat(resp.chunks)
  return resp
end

local function request(path, headers, doc, opts)
  opts = opts or {}
  local s = assert(socket.connect("127.0.0.1", srv.port))
  s:settimeout(10)
  local h = { { "Content-Type", "application/json" } }
  for _, x in ipairs(headers) do h[#h + 1] = x end
  if not opts.keep then h[#h + 1] = { "Connection", "close" } end
  send_request(s, path, h, type(doc) == "string" and doc or cjson.encode(doc), opts.version)
  local resp = read_body(s, read_head(s))
  if opts.keep then resp.sock = s else s:close() end
  return resp
end

local OPENAI = { { "Authorization", "Bearer " .. KEY } }
local ANTHROPIC = { { "x-api-key", KEY }, { "anthropic-version", "2023-06-01" } }

local function openai_doc(stream, extra)
  local d = { model = "gpt-4o-mini", messages = { { role = "user", content = PROMPT } }, stream = stream }
  for k, v in pairs(extra or {}) do d[k] = v end
  return d
end

local function anthropic_doc(stream)
  return { model = "claude-sonnet-4-5", max_tokens = 1024, stream = stream,
           messages = { { role = "user", content = PROMPT } } }
end

-- An independent SSE reader: events {event=, data=} split at blank lines;
-- comment lines (":") counted apart; an unfinished last event is dropped.
local function parse_sse(bytes)
  local events, comments = {}, 0
  for block in (bytes:gsub("\r\n", "\n")):gmatch("(.-)\n\n") do
    local ev, data = nil, {}
    for line in (block .. "\n"):gmatch("(.-)\n") do
      if line:sub(1, 1) == ":" then comments = comments + 1
      elseif line:match("^event:") then ev = line:match("^event: ?(.*)$")
      elseif line:match("^data:") then data[#data + 1] = line:match("^data: ?(.*)$") end
    end
    if #data > 0 then events[#events + 1] = { event = ev, data = table.concat(data, "\n") } end
  end
  return events, comments
end

-- The decoded data of every OpenAI event but [DONE]; done = saw [DONE].
local function openai_chunks(bytes)
  local out, done = {}, false
  for _, e in ipairs(parse_sse(bytes)) do
    if e.data == "[DONE]" then done = true else out[#out + 1] = cjson.decode(e.data) end
  end
  return out, done
end

-- What an OpenAI stream says: content, refusal, tool calls, finish, usage.
local function openai_fold(chunks)
  local r = { content = "", tools = {}, ids = {}, models = {} }
  for _, c in ipairs(chunks) do
    if c.id ~= "" then r.ids[c.id] = true end
    if c.model ~= "" then r.models[c.model] = true end
    if type(c.usage) == "table" then r.usage = c.usage end
    for _, ch in ipairs(c.choices or {}) do
      local d = ch.delta or {}
      if type(d.content) == "string" then r.content = r.content .. d.content end
      if type(d.refusal) == "string" then r.refusal = (r.refusal or "") .. d.refusal end
      for _, t in ipairs(type(d.tool_calls) == "table" and d.tool_calls or {}) do
        local slot = r.tools[t.index + 1] or { arguments = "" }
        r.tools[t.index + 1] = slot
        if t.id then slot.id = t.id end
        if t["function"] and t["function"].name then slot.name = t["function"].name end
        if t["function"] and type(t["function"].arguments) == "string" then
          slot.arguments = slot.arguments .. t["function"].arguments
        end
      end
      if ch.finish_reason ~= cjson.null and ch.finish_reason ~= nil then r.finish = ch.finish_reason end
    end
  end
  return r
end

-- What an Anthropic stream says.
local function anthropic_fold(bytes)
  local r = { content = "", tools = {}, names = {} }
  local blocks = {}
  for _, e in ipairs(parse_sse(bytes)) do
    r.names[#r.names + 1] = e.event
    local d = cjson.decode(e.data)
    if d.type == "message_start" then
      r.id, r.model, r.start_usage = d.message.id, d.message.model, d.message.usage
    elseif d.type == "content_block_start" then
      blocks[d.index] = d.content_block
      if d.content_block.type == "tool_use" then
        r.tools[#r.tools + 1] = { id = d.content_block.id, name = d.content_block.name, arguments = "" }
        blocks[d.index].slot = r.tools[#r.tools]
      end
    elseif d.type == "content_block_delta" then
      if d.delta.type == "text_delta" then r.content = r.content .. d.delta.text
      elseif d.delta.type == "input_json_delta" then
        blocks[d.index].slot.arguments = blocks[d.index].slot.arguments .. d.delta.partial_json
      end
    elseif d.type == "message_delta" then
      r.finish, r.usage = d.delta.stop_reason, d.usage
    elseif d.type == "error" then
      r.error = d.error
    end
  end
  return r
end

local function keys(set)
  local out = {}
  for k in pairs(set) do out[#out + 1] = k end
  table.sort(out)
  return out
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

----------------------------------------------------------------------------

describe("tools/local_provider.lua streaming", function()
  setup(function()
    srv = provider.start({ api_key = KEY, quiet = true })
  end)

  teardown(function()
    if srv then srv:stop() end
  end)

  before_each(function()
    srv:reset()
  end)

  describe("OpenAI format", function()
    it("answers text/event-stream with chunked transfer-encoding, one chunk per event", function()
      local resp = request("/v1/chat/completions", OPENAI, openai_doc(true))
      assert.equal(200, resp.status)
      assert.equal("text/event-stream", resp.headers["content-type"])
      assert.equal("chunked", resp.headers["transfer-encoding"])
      assert.is_nil(resp.headers["content-length"])
      assert.is_true(resp.terminated)
      local events = parse_sse(resp.body)
      assert.equal(#events, #resp.chunks)
      for i, c in ipairs(resp.chunks) do
        assert.equal("data: " .. events[i].data .. "\n\n", c)
      end
    end)

    it("sends role first, the content in several deltas, the finish chunk, then [DONE]", function()
      local resp = request("/v1/chat/completions", OPENAI, openai_doc(true))
      local chunks, done = openai_chunks(resp.body)
      assert.is_true(done)
      assert.equal("data: [DONE]\n\n", resp.chunks[#resp.chunks])
      assert.same({ role = "assistant", content = "" }, chunks[1].choices[1].delta)
      assert.is_true(#chunks >= 5)
      for _, c in ipairs(chunks) do
        assert.equal("chat.completion.chunk", c.object)
        assert.is_nil(c.usage)
      end
      for i = 2, #chunks - 1 do
        assert.equal("string", type(chunks[i].choices[1].delta.content))
        assert.equal(cjson.null, chunks[i].choices[1].finish_reason)
      end
      assert.same({}, chunks[#chunks].choices[1].delta)
      assert.equal("stop", chunks[#chunks].choices[1].finish_reason)
    end)

    it("streams the same content, id, model and finish reason as the non-streamed reply", function()
      local streamed = openai_fold((openai_chunks(request("/v1/chat/completions", OPENAI, openai_doc(true)).body)))
      srv:reset()
      local plain = cjson.decode(request("/v1/chat/completions", OPENAI, openai_doc(false)).body)
      assert.equal(plain.choices[1].message.content, streamed.content)
      assert.same({ plain.id }, keys(streamed.ids))
      assert.same({ plain.model }, keys(streamed.models))
      assert.equal(plain.choices[1].finish_reason, streamed.finish)
    end)

    it("adds the usage chunk (choices []) with the non-streamed numbers when include_usage is asked", function()
      local doc = openai_doc(true, { stream_options = { include_usage = true } })
      local resp = request("/v1/chat/completions", OPENAI, doc)
      local chunks = openai_chunks(resp.body)
      local last = chunks[#chunks]
      assert.truthy(resp.chunks[#resp.chunks - 1]:find('"choices":[]', 1, true))
      assert.same({}, last.choices)
      for i = 1, #chunks - 1 do assert.equal(cjson.null, chunks[i].usage) end
      srv:reset()
      local plain = cjson.decode(request("/v1/chat/completions", OPENAI, openai_doc(false)).body)
      assert.same(plain.usage, last.usage)
    end)

    it("omits the usage chunk when include_usage is false, and with stream_usage = false", function()
      local doc = openai_doc(true, { stream_options = { include_usage = false } })
      assert.is_nil(openai_fold((openai_chunks(request("/v1/chat/completions", OPENAI, doc).body))).usage)
      srv:queue({ content = "no usage here", stream_usage = false })
      doc = openai_doc(true, { stream_options = { include_usage = true } })
      local f = openai_fold((openai_chunks(request("/v1/chat/completions", OPENAI, doc).body)))
      assert.is_nil(f.usage)
      assert.equal("no usage here", f.content)
    end)

    it("streams tool calls by index, arguments in fragments, content null, finish tool_calls", function()
      local calls = { { id = "call_a1", name = "weather", arguments = '{"location": "San Francisco", "unit": "°C"}' },
                      { id = "call_b2", name = "time", arguments = "{}" } }
      srv:queue({ tool_calls = calls })
      local chunks = openai_chunks(request("/v1/chat/completions", OPENAI, openai_doc(true)).body)
      assert.same({ role = "assistant", content = cjson.null }, chunks[1].choices[1].delta)
      local f = openai_fold(chunks)
      assert.same({ { id = "call_a1", name = "weather", arguments = calls[1].arguments },
                    { id = "call_b2", name = "time", arguments = "{}" } }, f.tools)
      assert.equal("tool_calls", f.finish)
      assert.equal("", f.content)
      local fragments = 0
      for _, c in ipairs(chunks) do
        local t = c.choices[1].delta.tool_calls
        if t and t[1].index == 0 and not t[1].id then fragments = fragments + 1 end
      end
      assert.is_true(fragments > 1)
    end)

    it("streams a refusal in refusal deltas", function()
      srv:queue({ refusal = "I can't help with that request." })
      local f = openai_fold((openai_chunks(request("/v1/chat/completions", OPENAI, openai_doc(true)).body)))
      assert.equal("I can't help with that request.", f.refusal)
      assert.equal("", f.content)
    end)

    it("cuts the content into the scripted deltas", function()
      local deltas = { "Caf", "é ", "€5 ", "🙂", "!" }
      srv:queue({ content = table.concat(deltas), deltas = deltas })
      local chunks = openai_chunks(request("/v1/chat/completions", OPENAI, openai_doc(true)).body)
      local got = {}
      for i = 2, #chunks - 1 do got[#got + 1] = chunks[i].choices[1].delta.content end
      assert.same(deltas, got)
    end)

    it("keeps a max_tokens cut and its finish reason length", function()
      srv:queue({ content = string.rep("word ", 40) })
      local f = openai_fold((openai_chunks(request("/v1/chat/completions", OPENAI,
        openai_doc(true, { max_tokens = 5 })).body)))
      assert.equal(string.rep("word ", 4), f.content)
      assert.equal("length", f.finish)
    end)

    it("streams on the Gemini and Azure routes; azure_preamble sends the content-filter chunk first", function()
      local g = request("/v1beta/openai/chat/completions", OPENAI, openai_doc(true))
      assert.equal("text/event-stream", g.headers["content-type"])
      assert.is_true(#openai_fold((openai_chunks(g.body))).content > 0)
      srv:queue({ content = "Capital of Denmark.", azure_preamble = true })
      local a = request("/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21",
                        { { "api-key", KEY } }, openai_doc(true))
      local chunks = openai_chunks(a.body)
      assert.same({}, chunks[1].choices)
      assert.equal("", chunks[1].id)
      assert.equal(0, chunks[1].created)
      assert.equal(0, chunks[1].prompt_filter_results[1].prompt_index)
      assert.equal("Capital of Denmark.", openai_fold(chunks).content)
    end)

    it("sends an error event after the first delta and ends the stream properly", function()
      srv:queue({ content = "one two three four five six seven", error_event = true })
      local resp = request("/v1/chat/completions", OPENAI, openai_doc(true))
      assert.is_true(resp.terminated)
      local chunks, done = openai_chunks(resp.body)
      assert.is_false(done)
      assert.equal(3, #chunks)
      assert.equal("one two three", chunks[2].choices[1].delta.content)
      assert.equal("server_error", chunks[3].error.type)
      assert.equal("string", type(chunks[3].error.message))
    end)

    it("answers an HTTP/1.0 request with the raw stream and Connection: close", function()
      local resp = request("/v1/chat/completions", OPENAI, openai_doc(true), { version = "1.0" })
      assert.is_nil(resp.headers["transfer-encoding"])
      assert.equal("close", resp.headers["connection"])
      local _, done = openai_chunks(resp.body)
      assert.is_true(done)
    end)

    it("keeps the connection for a next request after a complete stream", function()
      local first = request("/v1/chat/completions", OPENAI, openai_doc(true), { keep = true })
      assert.is_true(first.terminated)
      send_request(first.sock, "/v1/chat/completions", { { "Authorization", "Bearer " .. KEY },
        { "Connection", "close" } }, cjson.encode(openai_doc(false)))
      local second = read_body(first.sock, read_head(first.sock))
      first.sock:close()
      assert.equal(200, second.status)
      assert.equal("chat.completion", cjson.decode(second.body).object)
    end)

    it("answers a stream request with an error status as a JSON error", function()
      srv:queue({ status = 429, message = "slow down" })
      local resp = request("/v1/chat/completions", OPENAI, openai_doc(true))
      assert.equal(429, resp.status)
      assert.equal("application/json", resp.headers["content-type"])
      assert.equal("slow down", cjson.decode(resp.body).error.message)
    end)
  end)

  describe("Anthropic format", function()
    it("sends the Messages event sequence with the non-streamed content, id, model, stop reason, usage", function()
      local resp = request("/v1/messages", ANTHROPIC, anthropic_doc(true))
      assert.equal("text/event-stream", resp.headers["content-type"])
      assert.equal("chunked", resp.headers["transfer-encoding"])
      assert.is_true(resp.terminated)
      local f = anthropic_fold(resp.body)
      local names = f.names
      assert.same({ "message_start", "content_block_start", "ping", "content_block_delta" },
                  { names[1], names[2], names[3], names[4] })
      assert.same({ "content_block_delta", "content_block_stop", "message_delta", "message_stop" },
                  { names[#names - 3], names[#names - 2], names[#names - 1], names[#names] })
      assert.is_true(#names > 8)
      srv:reset()
      local plain = cjson.decode(request("/v1/messages", ANTHROPIC, anthropic_doc(false)).body)
      assert.equal(plain.content[1].text, f.content)
      assert.equal(plain.id, f.id)
      assert.equal(plain.model, f.model)
      assert.equal(plain.stop_reason, f.finish)
      assert.same(plain.usage, f.usage)
      assert.equal(1, f.start_usage.output_tokens)
      assert.equal(plain.usage.input_tokens, f.start_usage.input_tokens)
    end)

    it("streams text then tool_use blocks, the arguments as input_json_delta fragments", function()
      local args = '{"elements": [{"location": "San Francisco", "temperature": 58}]}'
      srv:queue({ content = "I'll look.", tool_calls = { { id = "toolu_01", name = "json", arguments = args } } })
      local f = anthropic_fold(request("/v1/messages", ANTHROPIC, anthropic_doc(true)).body)
      assert.equal("I'll look.", f.content)
      assert.same({ { id = "toolu_01", name = "json", arguments = args } }, f.tools)
      assert.equal("tool_use", f.finish)
    end)

    it("stream_usage = false leaves usage out of message_delta and output_tokens out of message_start", function()
      srv:queue({ content = "hi there", stream_usage = false })
      local f = anthropic_fold(request("/v1/messages", ANTHROPIC, anthropic_doc(true)).body)
      assert.is_nil(f.usage)
      assert.is_nil(f.start_usage.output_tokens)
      assert.equal("number", type(f.start_usage.input_tokens))
    end)

    it("sends an overloaded error event after the first delta", function()
      srv:queue({ content = "alpha beta gamma delta epsilon zeta", error_event = true })
      local resp = request("/v1/messages", ANTHROPIC, anthropic_doc(true))
      assert.is_true(resp.terminated)
      local f = anthropic_fold(resp.body)
      assert.same({ "message_start", "content_block_start", "ping", "content_block_delta", "error" }, f.names)
      assert.same({ type = "overloaded_error", message = "Overloaded" }, f.error)
      assert.equal("alpha beta gamma", f.content)
    end)

    it("interleaves keep-alive comments and pings with comments = true, same content", function()
      srv:queue({ content = "a b c d e f g h i", comments = true })
      local resp = request("/v1/messages", ANTHROPIC, anthropic_doc(true))
      local events, comments = parse_sse(resp.body)
      local pings = 0
      for _, e in ipairs(events) do if e.event == "ping" then pings = pings + 1 end end
      assert.is_true(comments >= 3)
      assert.is_true(pings >= 3)
      assert.equal("a b c d e f g h i", anthropic_fold(resp.body).content)
    end)
  end)

  describe("chunking", function()
    local content = "Zürich – 東京 🙂 and more words to cut into many little pieces here"

    it("chunk_sizes = 1 writes one byte per chunk, the stream unchanged", function()
      srv:queue({ content = content, chunk_sizes = 1 })
      local resp = request("/v1/chat/completions", OPENAI, openai_doc(true))
      assert.is_true(resp.terminated)
      assert.equal(#resp.body, #resp.chunks)
      for _, c in ipairs(resp.chunks) do assert.equal(1, #c) end
      assert.equal(content, openai_fold((openai_chunks(resp.body))).content)
    end)

    it("cycles an array of chunk sizes", function()
      srv:queue({ content = content, chunk_sizes = { 5, 2, 9 } })
      local resp = request("/v1/messages", ANTHROPIC, anthropic_doc(true))
      local pattern = { 5, 2, 9 }
      for i = 1, #resp.chunks - 1 do assert.equal(pattern[(i - 1) % 3 + 1], #resp.chunks[i]) end
      assert.is_true(#resp.chunks[#resp.chunks] <= pattern[(#resp.chunks - 1) % 3 + 1])
      assert.equal(content, anthropic_fold(resp.body).content)
    end)

    it("random sizes are 1..chunk_max and the same for the same seed", function()
      local runs = {}
      for r = 1, 2 do
        srv:reset()
        srv:queue({ content = content, chunk_sizes = "random", chunk_seed = 42, chunk_max = 7 })
        local resp = request("/v1/chat/completions", OPENAI, openai_doc(true))
        local sizes = {}
        for i, c in ipairs(resp.chunks) do
          sizes[i] = #c
          assert.is_true(#c >= 1 and #c <= 7)
        end
        runs[r] = sizes
        assert.equal(content, openai_fold((openai_chunks(resp.body))).content)
      end
      assert.same(runs[1], runs[2])
      local distinct = {}
      for _, n in ipairs(runs[1]) do distinct[n] = true end
      assert.is_true(#keys(distinct) > 3)
    end)

    it("drop_after_bytes closes the connection after exactly N bytes, without the terminator", function()
      srv:queue({ content = content, drop_after_bytes = 333, chunk_sizes = { 50 } })
      local resp = request("/v1/chat/completions", OPENAI, openai_doc(true))
      assert.is_false(resp.terminated)
      assert.equal(333, #resp.body)
      assert.equal(33, #resp.chunks[#resp.chunks])
      local _, done = openai_chunks(resp.body)
      assert.is_false(done)
    end)

    it("stall_after_bytes puts a write boundary at N and then sends the rest", function()
      srv:queue({ content = content, stall_after_bytes = 100, stall_ms = 50, chunk_delay_ms = 1 })
      local resp = request("/v1/messages", ANTHROPIC, anthropic_doc(true))
      assert.is_true(resp.terminated)
      local off, boundary = 0, false
      for _, c in ipairs(resp.chunks) do
        off = off + #c
        if off == 100 then boundary = true end
      end
      assert.is_true(boundary)
      assert.equal(content, anthropic_fold(resp.body).content)
    end)
  end)

  describe("script checks", function()
    local function queue_error(script)
      local s = assert(socket.connect("127.0.0.1", srv.port))
      s:settimeout(5)
      local body = cjson.encode({ script })
      s:send("POST /__mock/queue HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: " .. #body
             .. "\r\n\r\n" .. body)
      local resp = read_body(s, read_head(s))
      s:close()
      return resp.status, cjson.decode(resp.body).error
    end

    it("rejects malformed streaming fields with 400 and the reason", function()
      local cases = {
        { { chunk_sizes = 0 }, 'chunk_sizes must be "random", an integer >= 1 or a non-empty array of them' },
        { { chunk_sizes = { 3, 0 } }, "chunk_sizes[i] must be integers >= 1" },
        { { chunk_sizes = "random", chunk_max = 0 }, "chunk_max must be an integer >= 1" },
        { { chunk_delay_ms = -1 }, "chunk_delay_ms must be a number >= 0" },
        { { drop_after_bytes = 1.5 }, "drop_after_bytes must be an integer >= 0" },
        { { stall_after_bytes = 10 }, "stall_after_bytes and stall_ms go together" },
        { { deltas = { "a" } }, "deltas must be an array of strings, with content" },
        { { content = "ab", deltas = { "a", "c" } }, "deltas must concatenate to content" },
        { { content = "\255", deltas = { "\255" } }, "deltas[i] must be UTF-8 strings" },
        { { error_event = 1 }, "error_event must be true or a message string" },
        { { comments = "yes" }, "comments must be a boolean" },
        { { sse_body = "data: x\n\n", body = "{}" }, "body and sse_body exclude each other" },
      }
      for _, c in ipairs(cases) do
        local status, err = queue_error(c[1])
        assert.equal(400, status)
        assert.equal("script 1: " .. c[2], err)
      end
      assert.equal(0, srv:health().pending)
    end)
  end)

  describe("recorded real streams (spec/fixtures/provider_streams)", function()
    local expected = dofile(FIX .. "expected.lua")
    local readme = read(FIX .. "README.md")

    it("lists at least 6 streams, each with its sha256 in the README", function()
      assert.is_true(#expected >= 6)
      for _, e in ipairs(expected) do
        local p = io.popen("sha256sum " .. FIX .. e.file)
        local sum = p:read("a"):match("^(%x+)")
        p:close()
        assert.truthy(readme:find(sum .. "  " .. e.file, 1, true), e.file .. " sha256 " .. sum .. " not in README")
      end
    end)

    it("replays every stream byte-exact through sse_body, chunked", function()
      for _, e in ipairs(expected) do
        local bytes = read(FIX .. e.file)
        srv:queue({ sse_body = bytes, chunk_sizes = "random", chunk_seed = #bytes, chunk_max = 97 })
        local path = e.wire == "anthropic" and "/v1/messages" or "/v1/chat/completions"
        local doc = e.wire == "anthropic" and anthropic_doc(true) or openai_doc(true)
        local resp = request(path, e.wire == "anthropic" and ANTHROPIC or OPENAI, doc)
        assert.equal("text/event-stream", resp.headers["content-type"])
        assert.is_true(resp.terminated)
        assert.is_true(#resp.chunks > 1)
        assert.equal(bytes, resp.body, e.file)
      end
    end)

    it("says what expected.lua (written by hand) says", function()
      for _, e in ipairs(expected) do
        local bytes = read(FIX .. e.file)
        local f
        if e.wire == "anthropic" then
          f = anthropic_fold(bytes)
        else
          f = openai_fold((openai_chunks(bytes)))
          f.id, f.model = keys(f.ids)[1], keys(f.models)[1]
          assert.equal(1, #keys(f.ids), e.file)
        end
        assert.equal(e.content, f.content, e.file)
        assert.equal(e.refusal, f.refusal, e.file)
        assert.equal(e.model, f.model, e.file)
        assert.equal(e.response_id, f.id, e.file)
        assert.equal(e.finish_reason, f.finish, e.file)
        local tools = {}
        for i, t in ipairs(f.tools) do tools[i] = { id = t.id, name = t.name, arguments = t.arguments } end
        assert.same(e.tool_calls or {}, tools, e.file)
        local u = f.usage or {}
        if e.usage == nil then
          assert.is_nil(f.usage, e.file)
        elseif e.wire == "anthropic" then
          assert.equal(e.usage.prompt, u.input_tokens, e.file)
          assert.equal(e.usage.completion, u.output_tokens, e.file)
          assert.equal(e.usage.cached, u.cache_read_input_tokens, e.file)
        else
          assert.equal(e.usage.prompt, u.prompt_tokens, e.file)
          assert.equal(e.usage.completion, u.completion_tokens, e.file)
          assert.equal(e.usage.total, u.total_tokens, e.file)
          assert.equal(e.usage.cached, (u.prompt_tokens_details or {}).cached_tokens or 0, e.file)
          assert.equal(e.usage.reasoning, (u.completion_tokens_details or {}).reasoning_tokens or 0, e.file)
        end
      end
    end)
  end)
end)
