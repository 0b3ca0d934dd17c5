-- spec/local_provider_spec.lua
-- Owns: the busted specs for tools/local_provider.lua (the local mock
-- OpenAI/Anthropic HTTP server) and spec/support/provider.lua. Everything is
-- exercised through real HTTP on 127.0.0.1 with raw luasocket clients.

local socket = require("socket")
local cjson = require("cjson")
local provider = require("spec.support.provider")

local KEY = "sk-spec-local-provider-0123456789"
local LONG_PROMPT = "Write a launch post for our new analytics dashboard."
local SHORT_PROMPT = "Write a launch post for our mobile app."
local FEEDBACK = "Too long: keep it under 80 words."

-- Independent implementation of the documented word-count rule.
local function djb2(s)
  local h = 5381
  for i = 1, #s do h = (h * 33 + s:byte(i)) % 4294967296 end
  return h
end

local function ceil4(n) return math.floor((n + 3) / 4) end

-- Independent implementation of the documented response id: "chatcmpl-" + 29
-- (OpenAI) or "msg_01" + 22 (Anthropic) letters/digits from the counter.
local function mock_id(fmt, seq)
  local alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
  local prefix, n = "chatcmpl-", 29
  if fmt == "anthropic" then prefix, n = "msg_01", 22 end
  local s, out = (seq * 2654435761 + 12345) % 4294967296, ""
  for _ = 1, n do
    s = (s * 69069 + 1) % 4294967296
    local k = math.floor(s / 65536) % 62 + 1
    out = out .. alnum:sub(k, k)
  end
  return prefix .. out
end

local function count_words(s)
  local n = 0
  for _ in s:gmatch("%S+") do n = n + 1 end
  return n
end

local function first_words(s, k)
  local out = {}
  for w in s:gmatch("%S+") do
    if #out == k then break end
    out[#out + 1] = w
  end
  return out
end

----------------------------------------------------------------------------
-- minimal raw HTTP/1.1 client

local srv

local function connect()
  local s = assert(socket.connect("127.0.0.1", srv.port))
  s:settimeout(5)
  return s
end

-- headers: array of {name, value}
local function send_request(s, method, path, headers, body)
  local out = { method .. " " .. path .. " HTTP/1.1\r\n", "Host: 127.0.0.1\r\n" }
  for _, h in ipairs(headers or {}) do out[#out + 1] = h[1] .. ": " .. h[2] .. "\r\n" end
  if body then out[#out + 1] = "Content-Length: " .. #body .. "\r\n" end
  out[#out + 1] = "\r\n"
  out[#out + 1] = body or ""
  assert(s:send(table.concat(out)))
end

local function read_response(s)
  local line, err = s:receive("*l")
  if not line then return nil, err end
  local resp = { status = tonumber(line:match("^HTTP/1%.1 (%d%d%d) ")), headers = {}, body = "" }
  while true do
    local h = assert(s:receive("*l"))
    if h == "" then break end
    local name, value = h:match("^([^:]+):%s*(.-)%s*$")
    resp.headers[name:lower()] = value
  end
  local n = tonumber(resp.headers["content-length"])
  if n and n > 0 then resp.body = assert(s:receive(n)) end
  return resp
end

local function roundtrip(method, path, headers, body)
  local s = connect()
  local h = { { "Connection", "close" } }
  for _, x in ipairs(headers or {}) do h[#h + 1] = x end
  send_request(s, method, path, h, body)
  local resp = assert(read_response(s))
  s:close()
  return resp
end

local function openai_headers(key)
  return { { "Authorization", "Bearer " .. (key or KEY) }, { "Content-Type", "application/json" } }
end

local function anthropic_headers(key)
  local h = { { "anthropic-version", "2023-06-01" }, { "Content-Type", "application/json" } }
  if key ~= false then h[#h + 1] = { "x-api-key", key or KEY } end
  return h
end

local function chat_body(messages, model)
  return cjson.encode({ model = model or "gpt-4o-mini", messages = messages, temperature = 0 })
end

local function chat(messages, model)
  local resp = roundtrip("POST", "/v1/chat/completions", openai_headers(), chat_body(messages, model))
  return resp, cjson.decode(resp.body)
end

local function user(text) return { { role = "user", content = text } } end

local function wait_for_logged(n)
  local deadline = socket.gettime() + 3
  while #srv:requests() < n do
    assert(socket.gettime() < deadline, "server never logged request " .. n)
    socket.sleep(0.01)
  end
end

----------------------------------------------------------------------------

describe("tools/local_provider.lua", function()
  setup(function()
    srv = provider.start({ api_key = KEY })
  end)

  teardown(function()
    if srv then srv:stop() end
  end)

  before_each(function()
    srv:reset()
  end)

  describe("helper", function()
    it("exposes a loopback url matching the chosen port", function()
      assert.equal("http://127.0.0.1:" .. srv.port, srv.url)
      assert.is_true(srv.port > 0)
      assert.is_true(srv:alive())
    end)

    it("stop() kills the process, waits until it is gone and is idempotent", function()
      local other = provider.start({ quiet = true })
      local pid = other.pid
      assert.is_true(provider.pid_alive(pid))
      assert.is_true(other:stop())
      assert.is_false(provider.pid_alive(pid))
      assert.is_true(other:stop())
    end)

    it("POST /__mock/shutdown makes the server exit", function()
      local other = provider.start({ quiet = true })
      local s = assert(socket.connect("127.0.0.1", other.port))
      s:settimeout(5)
      send_request(s, "POST", "/__mock/shutdown", { { "Connection", "close" } }, "")
      local resp = assert(read_response(s))
      s:close()
      local deadline = socket.gettime() + 3
      while provider.pid_alive(other.pid) and socket.gettime() < deadline do socket.sleep(0.02) end
      assert.equal(200, resp.status)
      assert.is_false(provider.pid_alive(other.pid))
      other:stop()
    end)
  end)

  describe("OpenAI chat completions", function()
    it("answers with the chat.completion shape", function()
      local before = os.time()
      local resp, doc = chat(user(SHORT_PROMPT))
      assert.equal(200, resp.status)
      assert.equal("application/json", resp.headers["content-type"])
      assert.equal(mock_id("openai", 1), doc.id)
      assert.equal("chat.completion", doc.object)
      assert.is_true(doc.created >= before and doc.created <= os.time())
      assert.equal(1, #doc.choices)
      assert.equal(0, doc.choices[1].index)
      assert.equal("assistant", doc.choices[1].message.role)
      assert.equal("string", type(doc.choices[1].message.content))
      assert.equal("stop", doc.choices[1].finish_reason)
    end)

    it("computes usage from the bytes of all message contents and of the reply", function()
      local system = "You write short social posts."
      local _, doc = chat({ { role = "system", content = system }, { role = "user", content = LONG_PROMPT } })
      local p = ceil4(#system + #LONG_PROMPT)
      local c = ceil4(#doc.choices[1].message.content)
      assert.same({
        prompt_tokens = p, completion_tokens = c, total_tokens = p + c,
        prompt_tokens_details = { cached_tokens = 0 },
        completion_tokens_details = { reasoning_tokens = 0 },
      }, doc.usage)
    end)

    it("counts text parts of array content toward prompt tokens", function()
      local parts = { { type = "text", text = "Write a post " }, { type = "text", text = "about our app." } }
      local _, doc = chat({ { role = "user", content = parts } })
      assert.equal(ceil4(#"Write a post " + #"about our app."), doc.usage.prompt_tokens)
    end)

    it("also serves POST /chat/completions", function()
      local resp = roundtrip("POST", "/chat/completions", openai_headers(), chat_body(user("hi")))
      assert.equal("chat.completion", cjson.decode(resp.body).object)
    end)

    it("appends -2024-07-18 to a model without a date suffix", function()
      local _, doc = chat(user("hi"), "gpt-4o-mini")
      assert.equal("gpt-4o-mini-2024-07-18", doc.model)
    end)

    it("echoes a model that already has a -YYYY-MM-DD suffix", function()
      local _, doc = chat(user("hi"), "gpt-4o-2024-08-06")
      assert.equal("gpt-4o-2024-08-06", doc.model)
    end)

    it("rejects a body that is not JSON with 400 and the OpenAI error shape", function()
      local resp = roundtrip("POST", "/v1/chat/completions", openai_headers(), "{not json")
      local doc = cjson.decode(resp.body)
      assert.equal(400, resp.status)
      assert.equal("invalid_request_error", doc.error.type)
      assert.equal("request body is not valid JSON", doc.error.message)
    end)
  end)

  describe("default content", function()
    it("writes 30 + djb2(last user message) % 90 words on a first turn", function()
      local _, long = chat(user(LONG_PROMPT))
      local _, short = chat(user(SHORT_PROMPT))
      assert.equal(30 + djb2(LONG_PROMPT) % 90, count_words(long.choices[1].message.content))
      assert.equal(30 + djb2(SHORT_PROMPT) % 90, count_words(short.choices[1].message.content))
    end)

    it("produces some drafts over 80 words and some under", function()
      local _, long = chat(user(LONG_PROMPT))
      local _, short = chat(user(SHORT_PROMPT))
      assert.equal(117, count_words(long.choices[1].message.content))
      assert.equal(44, count_words(short.choices[1].message.content))
    end)

    it("ends a draft with a hashtag line", function()
      local _, doc = chat(user(LONG_PROMPT))
      assert.truthy(doc.choices[1].message.content:match("\n\n#%a+$"))
    end)

    it("shortens the previous draft to at most 40 words on a repair turn", function()
      local _, first = chat(user(LONG_PROMPT))
      local draft = first.choices[1].message.content
      local _, doc = chat({
        { role = "user", content = LONG_PROMPT },
        { role = "assistant", content = draft },
        { role = "user", content = FEEDBACK },
      })
      local repaired = doc.choices[1].message.content
      assert.equal(15 + djb2(FEEDBACK) % 26, count_words(repaired))
      assert.is_true(count_words(repaired) <= 40)
      assert.same(first_words(draft, 10), first_words(repaired, 10))
      assert.equal(draft:match("#%a+$"), repaired:match("#%a+$"))
    end)

    it("gives the same reply to the same request", function()
      local _, a = chat(user(LONG_PROMPT))
      local _, b = chat(user(LONG_PROMPT))
      assert.equal(a.choices[1].message.content, b.choices[1].message.content)
      assert.same(a.usage, b.usage)
      assert.are_not.equal(a.id, b.id)
    end)
  end)

  describe("Anthropic messages", function()
    it("answers with the message shape and usage", function()
      local system = "You write short social posts."
      local body = cjson.encode({ model = "claude-3-5-haiku-20241022", system = system, max_tokens = 256,
                                  messages = user(SHORT_PROMPT) })
      local resp = roundtrip("POST", "/v1/messages", anthropic_headers(), body)
      local doc = cjson.decode(resp.body)
      local text = doc.content[1].text
      assert.equal(200, resp.status)
      assert.equal(mock_id("anthropic", 1), doc.id)
      assert.equal("message", doc.type)
      assert.equal("assistant", doc.role)
      assert.equal("claude-3-5-haiku-20241022", doc.model)
      assert.equal(1, #doc.content)
      assert.equal("text", doc.content[1].type)
      assert.equal(30 + djb2(SHORT_PROMPT) % 90, count_words(text))
      assert.equal("end_turn", doc.stop_reason)
      assert.same({ input_tokens = ceil4(#system + #SHORT_PROMPT), output_tokens = ceil4(#text),
                    cache_read_input_tokens = 0, cache_creation_input_tokens = 0 }, doc.usage)
    end)

    it("requires max_tokens like the real API", function()
      local body = cjson.encode({ model = "claude-3-5-haiku", messages = user("hi") })
      local resp = roundtrip("POST", "/v1/messages", anthropic_headers(), body)
      local doc = cjson.decode(resp.body)
      assert.equal(400, resp.status)
      assert.equal("error", doc.type)
      assert.equal("invalid_request_error", doc.error.type)
    end)
  end)

  describe("finish reasons, response ids and max_tokens", function()
    local function messages(body)
      return cjson.decode(roundtrip("POST", "/v1/messages", anthropic_headers(), cjson.encode(body)).body)
    end

    it("cuts an OpenAI reply longer than max_tokens to 4 * max_tokens bytes: finish_reason length", function()
      local _, full = chat(user(LONG_PROMPT))
      local text = full.choices[1].message.content
      local cap = ceil4(#text) - 3
      local resp = roundtrip("POST", "/v1/chat/completions", openai_headers(),
        cjson.encode({ model = "gpt-4o-mini", messages = user(LONG_PROMPT), max_tokens = cap }))
      local doc = cjson.decode(resp.body)
      assert.same({ text:sub(1, cap * 4), "length", cap }, { doc.choices[1].message.content,
        doc.choices[1].finish_reason, doc.usage.completion_tokens })
      -- max_completion_tokens is the newer name, and wins
      doc = cjson.decode(roundtrip("POST", "/v1/chat/completions", openai_headers(),
        cjson.encode({ model = "gpt-4o-mini", messages = user(LONG_PROMPT), max_tokens = 4000,
                       max_completion_tokens = 2 })).body)
      assert.same({ text:sub(1, 8), "length" }, { doc.choices[1].message.content, doc.choices[1].finish_reason })
      -- a cap the reply fits in changes nothing
      doc = cjson.decode(roundtrip("POST", "/v1/chat/completions", openai_headers(),
        cjson.encode({ model = "gpt-4o-mini", messages = user(LONG_PROMPT), max_tokens = ceil4(#text) })).body)
      assert.same({ text, "stop" }, { doc.choices[1].message.content, doc.choices[1].finish_reason })
    end)

    it("cuts an Anthropic reply (scripted content too) at max_tokens: stop_reason max_tokens", function()
      srv:queue({ { content = "caf\195\169 au lait" } })
      local doc = messages({ model = "claude-3-5-haiku", max_tokens = 1, messages = user("hi") })
      -- 4 bytes would split the two-byte e-acute: the cut backs off to "caf"
      assert.same({ "caf", "max_tokens", 1 }, { doc.content[1].text, doc.stop_reason, doc.usage.output_tokens })
      doc = messages({ model = "claude-3-5-haiku", max_tokens = 1024, messages = user("hi") })
      assert.equal("end_turn", doc.stop_reason)
    end)

    it("sends a scripted finish_reason / stop_reason as given; false omits it, null sends null", function()
      srv:queue({ { content = "x", finish_reason = "content_filter" }, { content = "y", finish_reason = false },
                  { content = "z", stop_reason = "stop_sequence" } })
      local _, a = chat(user("hi"))
      local rb = roundtrip("POST", "/v1/chat/completions", openai_headers(), chat_body(user("hi"))).body
      local c = messages({ model = "claude-3-5-haiku", max_tokens = 10, messages = user("hi") })
      assert.equal("content_filter", a.choices[1].finish_reason)
      assert.is_nil(rb:find("finish_reason", 1, true))
      assert.equal("stop_sequence", c.stop_reason)
      srv:queue({ { body = nil, content = "n", finish_reason = cjson.null } })
      local _, d = chat(user("hi"))
      assert.equal(cjson.null, d.choices[1].finish_reason)
    end)

    it("gives every answer its own id, shaped like the real ones", function()
      local _, a = chat(user("one"))
      local _, b = chat(user("one"))
      local c = messages({ model = "claude-3-5-haiku", max_tokens = 10, messages = user("hi") })
      assert.matches("^chatcmpl%-%w+$", a.id)
      assert.same({ 38, 28 }, { #a.id, #c.id })
      assert.matches("^msg_01%w+$", c.id)
      assert.same({ mock_id("openai", 1), mock_id("openai", 2), mock_id("anthropic", 3) }, { a.id, b.id, c.id })
      assert.are_not.equal(a.id, b.id)
    end)
  end)

  describe("authentication", function()
    it("answers 401 with the OpenAI error shape for a wrong bearer key and does not echo keys", function()
      local wrong = "sk-wrong-key-ABCDEFGH"
      local resp = roundtrip("POST", "/v1/chat/completions", openai_headers(wrong), chat_body(user("hi")))
      local doc = cjson.decode(resp.body)
      assert.equal(401, resp.status)
      assert.equal("invalid_request_error", doc.error.type)
      assert.equal("Incorrect API key provided.", doc.error.message)
      assert.is_nil(resp.body:find(KEY, 1, true))
      assert.is_nil(resp.body:find(wrong, 1, true))
    end)

    it("answers 401 with the Anthropic error shape when x-api-key is missing", function()
      local body = cjson.encode({ model = "claude-3-5-haiku", max_tokens = 10, messages = user("hi") })
      local resp = roundtrip("POST", "/v1/messages", anthropic_headers(false), body)
      assert.equal(401, resp.status)
      assert.same({ type = "error", error = { type = "authentication_error", message = "invalid x-api-key" } },
                  cjson.decode(resp.body))
    end)

    it("never writes the API key to the request log or its log output", function()
      chat(user("hi"))
      local entry = srv:requests()[1]
      assert.equal("Bearer [redacted]", entry.headers["authorization"])
      assert.equal("valid", entry.auth)
      assert.is_nil(cjson.encode(srv:requests()):find(KEY, 1, true))
      assert.is_nil(srv:log():find(KEY, 1, true))
    end)
  end)

  describe("scripting", function()
    it("sends a queued 429 with its Retry-After header", function()
      srv:queue({ { status = 429, headers = { ["Retry-After"] = "1" } } })
      local resp = chat(user("hi"))
      local doc = cjson.decode(resp.body)
      assert.equal(429, resp.status)
      assert.equal("1", resp.headers["retry-after"])
      assert.equal("rate_limit_error", doc.error.type)
      assert.equal("rate_limit_exceeded", doc.error.code)
    end)

    it("sends the default OpenAI error body for a queued 500", function()
      srv:queue({ { status = 500 } })
      local resp = chat(user("hi"))
      assert.equal(500, resp.status)
      assert.same({ error = { message = "mock provider error (HTTP 500)", type = "server_error",
                              param = cjson.null, code = cjson.null } }, cjson.decode(resp.body))
    end)

    it("sends the default Anthropic error body for a queued 529", function()
      srv:queue({ { status = 529 } })
      local body = cjson.encode({ model = "claude-3-5-haiku", max_tokens = 10, messages = user("hi") })
      local resp = roundtrip("POST", "/v1/messages", anthropic_headers(), body)
      assert.equal(529, resp.status)
      assert.same({ type = "error", error = { type = "overloaded_error",
                                              message = "mock provider error (HTTP 529)" } },
                  cjson.decode(resp.body))
    end)

    it("sends a queued malformed body verbatim", function()
      srv:queue({ { body = '{"choices":[' } })
      local resp = roundtrip("POST", "/v1/chat/completions", openai_headers(), chat_body(user("hi")))
      assert.equal(200, resp.status)
      assert.equal('{"choices":[', resp.body)
      assert.equal("12", resp.headers["content-length"])
    end)

    it("uses queued content and model", function()
      srv:queue({ { content = "Scripted reply.", model = "gpt-4o-mini-2024-07-18" } })
      local _, doc = chat(user("hi"), "gpt-4o-mini")
      assert.equal("Scripted reply.", doc.choices[1].message.content)
      assert.equal("gpt-4o-mini-2024-07-18", doc.model)
      assert.equal(ceil4(#"Scripted reply."), doc.usage.completion_tokens)
    end)

    it("omits usage when the script says usage = false", function()
      srv:queue({ { content = "no usage here", usage = false } })
      local resp, doc = chat(user("hi"))
      assert.equal("no usage here", doc.choices[1].message.content)
      assert.is_nil(doc.usage)
      assert.is_nil(resp.body:find('"usage"', 1, true))
    end)

    it("passes a custom usage object through verbatim", function()
      local usage = { prompt_tokens = 12, completion_tokens = 7, total_tokens = 19, cost = 0.00123,
                      prompt_tokens_details = { cached_tokens = 5, cache_write_tokens = 3 } }
      srv:queue({ { usage = usage } })
      local resp, doc = chat(user("hi"))
      assert.same(usage, doc.usage)
      assert.truthy(resp.body:find('"cost":0.00123', 1, true))
    end)

    it("consumes scripts FIFO across both formats", function()
      srv:queue({ { content = "first" }, { content = "second" } })
      local _, a = chat(user("hi"))
      local body = cjson.encode({ model = "claude-3-5-haiku", max_tokens = 10, messages = user("hi") })
      local b = cjson.decode(roundtrip("POST", "/v1/messages", anthropic_headers(), body).body)
      local _, c = chat(user("hi"))
      assert.equal("first", a.choices[1].message.content)
      assert.equal("second", b.content[1].text)
      assert.equal(30 + djb2("hi") % 90, count_words(c.choices[1].message.content))
    end)

    it("delays a response without blocking a request on another connection", function()
      srv:queue({ { delay_ms = 400, content = "slow" } })
      local slow = connect()
      local t0 = socket.gettime()
      send_request(slow, "POST", "/v1/chat/completions", openai_headers(), chat_body(user("slow")))
      wait_for_logged(1)
      local _, fast = chat(user("fast"))
      local t_fast = socket.gettime() - t0
      slow:settimeout(0)
      local early, early_err = slow:receive(1)
      slow:settimeout(5)
      local resp = assert(read_response(slow))
      local t_slow = socket.gettime() - t0
      slow:close()
      assert.is_nil(early)
      assert.equal("timeout", early_err)
      assert.equal(30 + djb2("fast") % 90, count_words(fast.choices[1].message.content))
      assert.is_true(t_fast < 0.4)
      assert.equal("slow", cjson.decode(resp.body).choices[1].message.content)
      assert.is_true(t_slow >= 0.4)
    end)

    it("hangs on a request while other connections are served", function()
      srv:queue({ { hang = true } })
      local hung = connect()
      send_request(hung, "POST", "/v1/chat/completions", openai_headers(), chat_body(user("hang")))
      wait_for_logged(1)
      local resp = chat(user("other"))
      hung:settimeout(0.3)
      local data, err = hung:receive(1)
      hung:close()
      assert.equal(200, resp.status)
      assert.is_nil(data)
      assert.equal("timeout", err)
    end)

    it("closes the connection without a response on reset", function()
      srv:queue({ { reset = true } })
      local s = connect()
      send_request(s, "POST", "/v1/chat/completions", openai_headers(), chat_body(user("reset")))
      local data, err = s:receive("*l")
      s:close()
      assert.is_nil(data)
      assert.truthy(err == "closed" or err == "connection reset by peer")
    end)

    it("rejects a script with an invalid status", function()
      local ok, err = pcall(srv.queue, srv, { { status = "soon" } })
      assert.is_false(ok)
      assert.truthy(tostring(err):find("HTTP 400", 1, true))
    end)

    it("reset clears the queue and the request log", function()
      srv:queue({ { content = "queued" } })
      chat(user("hi"))
      srv:queue({ { content = "queued again" } })
      srv:reset()
      local _, doc = chat(user("hi"))
      assert.equal(30 + djb2("hi") % 90, count_words(doc.choices[1].message.content))
      assert.equal(mock_id("openai", 1), doc.id)
      assert.equal(1, #srv:requests())
      assert.equal(0, srv:health().pending)
    end)
  end)

  describe("Gemini and Azure routes", function()
    it("serves Gemini's OpenAI-compatible path with a bearer key", function()
      local resp = roundtrip("POST", "/v1beta/openai/chat/completions", openai_headers(),
        chat_body(user("hi"), "gemini-2.0-flash"))
      assert.equal(200, resp.status)
      assert.equal("chat.completion", cjson.decode(resp.body).object)
      assert.same({ "/v1beta/openai/chat/completions", "", "valid" },
        { srv:requests()[1].path, srv:requests()[1].query, srv:requests()[1].auth })
    end)

    it("serves an Azure deployment path, checking the api-key header, and records the query", function()
      local path = "/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21"
      local resp = roundtrip("POST", path, { { "api-key", KEY }, { "Content-Type", "application/json" } },
        chat_body(user("hi"), "my-gpt4o"))
      assert.equal(200, resp.status)
      local entry = srv:requests()[1]
      assert.same({ "/openai/deployments/my-gpt4o/chat/completions", "api-version=2024-10-21", "valid", "[redacted]" },
        { entry.path, entry.query, entry.auth, entry.headers["api-key"] })
    end)

    it("answers 401 on Azure for a bearer key instead of api-key", function()
      local resp = roundtrip("POST", "/openai/deployments/d/chat/completions?api-version=2024-10-21",
        openai_headers(), chat_body(user("hi")))
      assert.equal(401, resp.status)
      assert.equal("missing", srv:requests()[1].auth)
    end)

    it("answers 400 on an Azure deployment path without api-version", function()
      local resp = roundtrip("POST", "/openai/deployments/d/chat/completions",
        { { "api-key", KEY }, { "Content-Type", "application/json" } }, chat_body(user("hi")))
      assert.equal(400, resp.status)
      assert.equal("Missing required query parameter: api-version", cjson.decode(resp.body).error.message)
    end)
  end)

  describe("request log", function()
    it("records path, method, lower-case headers and the raw body", function()
      local body = chat_body(user("log me"))
      roundtrip("POST", "/v1/chat/completions", { { "Authorization", "Bearer " .. KEY },
        { "X-Trace-ID", "trace-42" }, { "Content-Type", "application/json" } }, body)
      local log = srv:requests()
      assert.equal(1, #log)
      assert.equal("/v1/chat/completions", log[1].path)
      assert.equal("", log[1].query)
      assert.equal("POST", log[1].method)
      assert.equal("trace-42", log[1].headers["x-trace-id"])
      assert.equal("application/json", log[1].headers["content-type"])
      assert.equal(body, log[1].body)
      assert.equal(200, log[1].status)
    end)

    it("returns an empty JSON array when nothing was received", function()
      local resp = roundtrip("GET", "/__mock/requests")
      assert.equal(200, resp.status)
      assert.equal("[]", resp.body)
    end)

    it("keeps only the last 1000 requests", function()
      local s = connect()
      for i = 1, 1005 do
        send_request(s, "POST", "/v1/chat/completions", openai_headers(), chat_body(user("n" .. i)))
        assert.equal(200, assert(read_response(s)).status)
      end
      s:close()
      local log = srv:requests()
      assert.equal(1000, #log)
      assert.equal("n6", cjson.decode(log[1].body).messages[1].content)
      assert.equal("n1005", cjson.decode(log[1000].body).messages[1].content)
    end)
  end)

  describe("HTTP/1.1", function()
    it("serves two requests on one keep-alive connection", function()
      local s = connect()
      send_request(s, "POST", "/v1/chat/completions", openai_headers(), chat_body(user("one")))
      local a = assert(read_response(s))
      send_request(s, "POST", "/v1/chat/completions", openai_headers(), chat_body(user("two")))
      local b = assert(read_response(s))
      s:close()
      assert.equal(200, a.status)
      assert.equal("keep-alive", a.headers["connection"])
      assert.equal(200, b.status)
      assert.equal(mock_id("openai", 2), cjson.decode(b.body).id)
    end)

    it("closes the connection after a request with Connection: close", function()
      local s = connect()
      local h = openai_headers()
      h[#h + 1] = { "Connection", "close" }
      send_request(s, "POST", "/v1/chat/completions", h, chat_body(user("bye")))
      local resp = assert(read_response(s))
      local data, err = s:receive("*l")
      s:close()
      assert.equal("close", resp.headers["connection"])
      assert.is_nil(data)
      assert.equal("closed", err)
    end)

    it("accepts a chunked request body", function()
      local body = chat_body(user("chunked"))
      local s = connect()
      local h = openai_headers()
      h[#h + 1] = { "Transfer-Encoding", "chunked" }
      h[#h + 1] = { "Connection", "close" }
      send_request(s, "POST", "/v1/chat/completions", h, nil)
      local half = math.floor(#body / 2)
      assert(s:send(string.format("%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n",
        half, body:sub(1, half), #body - half, body:sub(half + 1))))
      local resp = assert(read_response(s))
      s:close()
      assert.equal(200, resp.status)
      assert.equal(body, srv:requests()[1].body)
    end)

    it("answers Expect: 100-continue before the body is sent", function()
      local body = chat_body(user("expect"))
      local s = connect()
      local h = openai_headers()
      h[#h + 1] = { "Expect", "100-continue" }
      h[#h + 1] = { "Content-Length", tostring(#body) }
      send_request(s, "POST", "/v1/chat/completions", h, nil)
      local interim = s:receive("*l")
      local blank = s:receive("*l")
      assert(s:send(body))
      local resp = assert(read_response(s))
      s:close()
      assert.equal("HTTP/1.1 100 Continue", interim)
      assert.equal("", blank)
      assert.equal(200, resp.status)
    end)

    it("refuses a body larger than 64 MiB with 413", function()
      local s = connect()
      local h = openai_headers()
      h[#h + 1] = { "Content-Length", tostring(64 * 1024 * 1024 + 1) }
      send_request(s, "POST", "/v1/chat/completions", h, nil)
      local resp = assert(read_response(s))
      s:close()
      assert.equal(413, resp.status)
    end)

    it("answers 404 for an unknown path", function()
      local resp = roundtrip("GET", "/v1/nothing-here")
      assert.equal(404, resp.status)
    end)
  end)
end)
