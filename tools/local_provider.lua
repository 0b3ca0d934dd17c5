#!/usr/bin/env lua5.4
-- tools/local_provider.lua
-- Owns: the local mock LLM provider used by genaudit's specs and demo. A real
-- HTTP/1.1 server on loopback that speaks the OpenAI chat-completions and the
-- Anthropic Messages wire formats, with a scripting API under /__mock/.
-- Runs under lua5.4 and luajit; needs only lua-socket and lua-cjson.
--
-- Usage:
--   lua5.4 tools/local_provider.lua [--host 127.0.0.1] [--port N] [--port-file PATH]
--                                   [--api-key KEY] [--watch-pid PID] [--quiet]
--
--   --port 0 (default) picks a free port. Once listening, the port is written
--   to --port-file (tmp file + rename) and "listening HOST:PORT" is printed on
--   stdout. --watch-pid makes the server exit when that process is gone.
--   --quiet silences the per-request log lines on stderr. The API key is never
--   written to any response or log line.
--
-- Routes:
--   POST /v1/chat/completions, POST /chat/completions   OpenAI format
--   POST /v1beta/openai/chat/completions                OpenAI format (Gemini)
--   POST /openai/deployments/DEPLOYMENT/chat/completions?api-version=V,
--   POST /openai/v1/chat/completions                    OpenAI format (Azure:
--        key in the api-key header; without api-version -> 400)
--   POST /v1/messages                                   Anthropic format
--   POST /__mock/queue     JSON array of scripts (or one object), FIFO
--   POST /__mock/reset     clear queue, request log and id counter
--   GET  /__mock/requests  JSON array of logged completion requests (last 1000)
--   GET  /__mock/health    {"ok":true,"pending":N,"logged":N}
--   POST /__mock/shutdown  answer, then stop the server
--
-- Script fields (all optional): content, model, usage (table replaces the
-- usage object verbatim; false omits it), status (200..599), headers, body
-- (raw string sent verbatim), delay_ms, hang, reset, message (error message
-- for an error status without body), finish_reason (OpenAI), stop_reason
-- (Anthropic) — sent as given, false omits the field; tool_calls (an array
-- of {id, name, arguments = JSON text}: OpenAI message.tool_calls with
-- content null unless content is given, finish_reason "tool_calls";
-- Anthropic tool_use blocks with input = the decoded arguments, after a text
-- block only when content is given, stop_reason "tool_use"); refusal (OpenAI
-- message.refusal, content null). Scripts are consumed
-- only by requests that pass auth and validation (401/400 answers do not
-- consume one).
--
-- Default (unscripted) replies, deterministic per request:
--   h(s) = djb2: h = 5381; for each byte b: h = (h * 33 + b) % 2^32
--   first turn (no assistant message before the last user message):
--     30 + h(last user text) % 90 whitespace-separated tokens, the last one
--     being a hashtag line ("\n\n#launch" etc.)
--   repair turn (an assistant message before the last user message): the
--     first tokens of that assistant draft, 15 + h(last user text) % 26
--     tokens (<= 40; fewer when the draft is shorter) including the
--     draft's hashtag line
--   usage: P = ceil(bytes of all message text incl. system / 4),
--          C = ceil(bytes of reply / 4)
--   max_tokens (OpenAI: max_completion_tokens, else max_tokens): a reply
--     (default or scripted content) with C > max_tokens is cut to its first
--     4 * max_tokens bytes (at a UTF-8 boundary), finish_reason "length" /
--     stop_reason "max_tokens"; otherwise "stop" / "end_turn"
--   id: "chatcmpl-" + 29 letters/digits (OpenAI), "msg_01" + 22 (Anthropic),
--     a function of the request counter: distinct per request, repeated
--     after /__mock/reset
--   model: echoed, with "-2024-07-18" appended unless it already ends in
--     -YYYY-MM-DD or -YYYYMMDD
--
-- Request log entries: {path, query (the raw text after "?", "" when none),
-- method, headers (lower-case names; credential headers redacted), body (raw),
-- auth ("valid"|"invalid"|"missing"|"unchecked"), status (absent for
-- hang/reset, which set outcome)}.

local socket = require("socket")
local cjson = require("cjson")

local MAX_BODY = 64 * 1024 * 1024
local MAX_HEAD = 64 * 1024
local MAX_LOG = 1000
local IO_TIMEOUT = 60       -- seconds of silence before an idle connection is dropped
local TICK = 0.5            -- longest select() wait, so flags and --watch-pid are checked

local REASONS = {
  [100] = "Continue", [200] = "OK", [201] = "Created", [202] = "Accepted",
  [204] = "No Content", [400] = "Bad Request", [401] = "Unauthorized",
  [402] = "Payment Required", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Method Not Allowed", [408] = "Request Timeout", [409] = "Conflict",
  [413] = "Payload Too Large", [422] = "Unprocessable Entity",
  [429] = "Too Many Requests", [431] = "Request Header Fields Too Large",
  [500] = "Internal Server Error", [501] = "Not Implemented", [502] = "Bad Gateway",
  [503] = "Service Unavailable", [504] = "Gateway Timeout", [529] = "Overloaded",
}

local VOCAB = {
  "today", "we", "are", "launching", "a", "new", "way", "to", "ship", "faster",
  "with", "less", "stress", "our", "team", "built", "this", "for", "builders",
  "who", "care", "about", "quality", "every", "release", "matters", "and",
  "feedback", "shapes", "the", "product", "try", "it", "now", "share", "what",
  "you", "think", "simple", "tools", "help", "people", "do", "great", "work",
  "together", "early", "access", "is", "open",
}
local TAGS = { "#launch", "#product", "#startup", "#buildinpublic", "#shipping" }

----------------------------------------------------------------------------
-- command line

local config = { host = "127.0.0.1", port = 0, quiet = false }

local function die(msg)
  io.stderr:write("local_provider: ", msg, "\n")
  os.exit(2)
end

local function parse_args(argv)
  local i = 1
  while argv[i] do
    local a = argv[i]
    local function value()
      local v = argv[i + 1]
      if v == nil then die("missing value for " .. a) end
      i = i + 1
      return v
    end
    if a == "--host" then config.host = value()
    elseif a == "--port" then
      config.port = tonumber(value())
      if not config.port then die("--port wants a number") end
    elseif a == "--port-file" then config.port_file = value()
    elseif a == "--api-key" then config.api_key = value()
    elseif a == "--watch-pid" then
      config.watch_pid = tonumber(value())
      if not config.watch_pid then die("--watch-pid wants a number") end
    elseif a == "--quiet" then config.quiet = true
    elseif a == "-h" or a == "--help" then
      io.stdout:write("usage: local_provider.lua [--host H] [--port N] [--port-file PATH]",
        " [--api-key KEY] [--watch-pid PID] [--quiet]\n")
      os.exit(0)
    else
      die("unknown argument " .. a)
    end
    i = i + 1
  end
  if config.api_key == "" then config.api_key = nil end
end

local function logline(fmt, ...)
  if config.quiet then return end
  io.stderr:write(os.date("!%H:%M:%S "), string.format(fmt, ...), "\n")
  io.stderr:flush()
end

----------------------------------------------------------------------------
-- shared state

local state = {
  running = true,
  queue = {},   -- pending scripts, FIFO
  log = {},     -- completion request log, oldest first
  seq = 0,      -- request counter: the response ids derive from it
}

----------------------------------------------------------------------------
-- scheduler: one coroutine per connection; a coroutine yields
-- (mode, sock, deadline) with mode "r", "w" or nil (pure timer) and is resumed
-- with "ready" or "timeout".

local tasks = {}

local function wait(mode, sock, deadline)
  return coroutine.yield(mode, sock, deadline)
end

local function sleep(seconds)
  wait(nil, nil, socket.gettime() + seconds)
end

local function finish_task(task)
  tasks[task] = nil
  if task.sock then task.sock:close() end
end

local function resume(task, why)
  local ok, mode, sock, deadline = coroutine.resume(task.co, why)
  if not ok then
    logline("connection error: %s", tostring(mode))
    finish_task(task)
  elseif coroutine.status(task.co) == "dead" then
    finish_task(task)
  else
    task.mode, task.wsock, task.deadline = mode, sock, deadline
  end
end

local function spawn(fn, sock)
  local task = { co = coroutine.create(fn), sock = sock }
  tasks[task] = true
  resume(task, sock)
end

----------------------------------------------------------------------------
-- connection I/O (coroutine side)

-- Returns the next chunk (at most maxn bytes) or nil, err ("closed"/"timeout"/...).
-- Always tries to receive before waiting: luasocket may hold buffered bytes
-- that select() cannot see.
local function recv_some(c, maxn)
  if c.eof then return nil, "closed" end
  local deadline = socket.gettime() + IO_TIMEOUT
  while true do
    local data, err, partial = c.sock:receive(maxn)
    local chunk = data or partial
    if err and err ~= "timeout" then c.eof = true end
    if chunk and #chunk > 0 then return chunk end
    if err ~= "timeout" then return nil, err end
    if wait("r", c.sock, deadline) == "timeout" then return nil, "timeout" end
  end
end

local function read_exact(c, n)
  if #c.buf >= n then
    local s = c.buf:sub(1, n)
    c.buf = c.buf:sub(n + 1)
    return s
  end
  local parts, have = { c.buf }, #c.buf
  c.buf = ""
  while have < n do
    local chunk, err = recv_some(c, math.min(n - have, 1048576))
    if not chunk then return nil, err end
    parts[#parts + 1] = chunk
    have = have + #chunk
  end
  return table.concat(parts)
end

local function read_line(c, limit)
  while true do
    local s = c.buf:find("\r\n", 1, true)
    if s then
      local line = c.buf:sub(1, s - 1)
      c.buf = c.buf:sub(s + 2)
      return line
    end
    if #c.buf > limit then return nil, "too long" end
    local chunk, err = recv_some(c, 65536)
    if not chunk then return nil, err end
    c.buf = c.buf .. chunk
  end
end

local function send_all(c, data)
  local i, n = 1, #data
  local deadline = socket.gettime() + IO_TIMEOUT
  while i <= n do
    local last, err, lastpartial = c.sock:send(data, i)
    if last then
      i = last + 1
    elseif err == "timeout" then
      i = lastpartial + 1
      if i <= n and wait("w", c.sock, deadline) == "timeout" then return nil, "timeout" end
    else
      return nil, err
    end
  end
  return true
end

----------------------------------------------------------------------------
-- HTTP framing

local function lower(s) return (s:lower()) end

local function has_token(value, token)
  if not value then return false end
  for t in value:gmatch("[^,%s]+") do
    if t:lower() == token then return true end
  end
  return false
end

local function fmt_int(n) return string.format("%d", n) end

-- Serialises a response. headers: array of {name, value}.
local function serialize(status, headers, body, keep_alive)
  local out = { "HTTP/1.1 ", fmt_int(status), " ", REASONS[status] or "Status", "\r\n" }
  local seen = {}
  for _, h in ipairs(headers) do
    local lname = lower(h[1])
    if lname ~= "content-length" and lname ~= "connection" and lname ~= "transfer-encoding" then
      seen[lname] = true
      out[#out + 1] = h[1] .. ": " .. h[2] .. "\r\n"
    end
  end
  if not seen["content-type"] then
    out[#out + 1] = "Content-Type: application/json\r\n"
  end
  out[#out + 1] = "Content-Length: " .. fmt_int(#body) .. "\r\n"
  out[#out + 1] = keep_alive and "Connection: keep-alive\r\n" or "Connection: close\r\n"
  out[#out + 1] = "Server: genaudit-local-provider\r\n\r\n"
  out[#out + 1] = body
  return table.concat(out)
end

local function simple_error(status, msg)
  return { status = status, body = cjson.encode({ error = { message = msg, type = "invalid_request_error" } }),
           close = true }
end

-- Reads one request. Returns req, or nil (connection done), or nil, response
-- (protocol error to answer before closing).
local function read_request(c)
  local hend
  while true do
    if c.buf:find("^[\r\n]") then c.buf = c.buf:gsub("^[\r\n]+", "") end
    hend = c.buf:find("\r\n\r\n", 1, true)
    if hend then break end
    if #c.buf > MAX_HEAD then return nil, simple_error(431, "request head too large") end
    local chunk, err = recv_some(c, 65536)
    if not chunk then
      if #c.buf > 0 and err == "timeout" then return nil, simple_error(408, "request timeout") end
      return nil
    end
    c.buf = c.buf .. chunk
  end
  local head = c.buf:sub(1, hend - 1)
  c.buf = c.buf:sub(hend + 4)

  local first = true
  local req = { headers = {} }
  for line in head:gmatch("[^\r\n]+") do
    if first then
      first = false
      req.method, req.target, req.version = line:match("^(%u+) (%S+) HTTP/(%d%.%d)$")
      if not req.method then return nil, simple_error(400, "malformed request line") end
    else
      local name, value = line:match("^([^:%s]+):%s*(.-)%s*$")
      if not name then return nil, simple_error(400, "malformed header line") end
      name = lower(name)
      local prev = req.headers[name]
      req.headers[name] = prev and (prev .. ", " .. value) or value
    end
  end
  local h = req.headers
  req.path = req.target:match("^[^?#]*")
  req.query = req.target:match("^[^?#]*%?([^#]*)") or ""
  if req.version == "1.1" then
    req.keep_alive = not has_token(h["connection"], "close")
  else
    req.keep_alive = has_token(h["connection"], "keep-alive")
  end

  local te, cl = h["transfer-encoding"], h["content-length"]
  local chunked = false
  if te then
    if not has_token(te, "chunked") then return nil, simple_error(501, "unsupported transfer-encoding") end
    chunked = true
  end
  local length = 0
  if not chunked and cl then
    if not cl:match("^%d+$") then return nil, simple_error(400, "bad content-length") end
    length = tonumber(cl)
    if length > MAX_BODY then return nil, simple_error(413, "request body larger than 64 MiB") end
  end
  if has_token(h["expect"], "100-continue") and req.version == "1.1" then
    local ok = send_all(c, "HTTP/1.1 100 Continue\r\n\r\n")
    if not ok then return nil end
  end

  if chunked then
    local parts, total = {}, 0
    while true do
      local line = read_line(c, 4096)
      if not line then return nil end
      local hex = line:match("^%s*(%x+)")
      if not hex then return nil, simple_error(400, "bad chunk size") end
      local size = tonumber(hex, 16)
      if size == 0 then
        repeat -- trailers
          local t = read_line(c, MAX_HEAD)
          if not t then return nil end
        until t == ""
        break
      end
      total = total + size
      if total > MAX_BODY then return nil, simple_error(413, "request body larger than 64 MiB") end
      local data = read_exact(c, size)
      if not data then return nil end
      parts[#parts + 1] = data
      local crlf = read_exact(c, 2)
      if crlf ~= "\r\n" then return nil, simple_error(400, "bad chunk terminator") end
    end
    req.body = table.concat(parts)
  elseif length > 0 then
    req.body = read_exact(c, length)
    if not req.body then return nil end
  else
    req.body = ""
  end
  return req
end

----------------------------------------------------------------------------
-- deterministic content

local function yieldable()
  local co, ismain = coroutine.running()
  return co ~= nil and not ismain
end

-- djb2 over the bytes of s, modulo 2^32. Works in 4 KiB slices and, for big
-- inputs, yields to the scheduler every 1 MiB so other connections keep going.
local function djb2(s)
  local h, n, byte = 5381, #s, string.byte
  for i = 1, n, 4096 do
    local bs = { byte(s, i, math.min(i + 4095, n)) }
    for k = 1, #bs do h = (h * 33 + bs[k]) % 4294967296 end
    if i % 1048576 == 1 and i > 1 and yieldable() then sleep(0) end
  end
  return h
end

local function content_text(content)
  if type(content) == "string" then return content end
  if type(content) == "table" then
    local parts = {}
    for _, p in ipairs(content) do
      if type(p) == "table" and type(p.text) == "string" then parts[#parts + 1] = p.text end
    end
    return table.concat(parts)
  end
  return ""
end

local function ceil_div4(n) return math.floor((n + 3) / 4) end

-- body_words words plus sentence punctuation, then a blank line and the tag.
local function compose(words, tag)
  local out = {}
  local since = 0
  for i, w in ipairs(words) do
    if since == 0 then w = w:sub(1, 1):upper() .. w:sub(2) end
    since = since + 1
    if i == #words or since >= 7 + (i % 5) then
      w = w .. "."
      since = 0
    end
    out[#out + 1] = w
  end
  return table.concat(out, " ") .. "\n\n" .. tag
end

local function gen_words(seed, n)
  local s, out = seed, {}
  for i = 1, n do
    s = (s * 69069 + 1) % 4294967296
    out[i] = VOCAB[math.floor(s / 65536) % #VOCAB + 1]
  end
  return out
end

local textgen = {}

-- First turn: 30 + djb2(last user text) % 90 whitespace-separated tokens,
-- the last token being the hashtag line.
function textgen.draft(prompt)
  local h = djb2(prompt)
  local n = 30 + h % 90
  return compose(gen_words(h, n - 1), TAGS[h % #TAGS + 1])
end

-- Repair turn: the first tokens of the previous draft, at most
-- 15 + djb2(feedback) % 26 (<= 40) tokens including the hashtag line.
function textgen.repair(draft, feedback)
  local h = djb2(feedback)
  local limit = 15 + h % 26
  local body, tag = {}, nil
  for tok in draft:gmatch("%S+") do
    if tok:sub(1, 1) == "#" then tag = tok else body[#body + 1] = tok end
  end
  tag = tag or TAGS[h % #TAGS + 1]
  if #body == 0 then return compose(gen_words(h, limit - 1), tag) end
  local out = {}
  for i = 1, math.min(#body, limit - 1) do out[i] = body[i] end
  local last = out[#out]
  if not last:match("[%.!?]$") then out[#out] = last:gsub("[,;:]+$", "") .. "." end
  return table.concat(out, " ") .. "\n\n" .. tag
end

local function default_reply(messages)
  local last_user
  for i = #messages, 1, -1 do
    if type(messages[i]) == "table" and messages[i].role == "user" then last_user = i break end
  end
  if not last_user then return textgen.draft("") end
  local feedback = content_text(messages[last_user].content)
  for i = last_user - 1, 1, -1 do
    local m = messages[i]
    if type(m) == "table" and m.role == "assistant" then
      return textgen.repair(content_text(m.content), feedback)
    end
  end
  return textgen.draft(feedback)
end

local function echo_model(model)
  if type(model) ~= "string" then return model end
  if model:match("%-%d%d%d%d%-%d%d%-%d%d$") or model:match("%-%d%d%d%d%d%d%d%d$") then
    return model
  end
  return model .. "-2024-07-18"
end

----------------------------------------------------------------------------
-- provider formats

local function error_kind(fmt, status)
  if fmt == "anthropic" then
    local t = ({ [400] = "invalid_request_error", [401] = "authentication_error",
                 [403] = "permission_error", [404] = "not_found_error",
                 [413] = "request_too_large", [429] = "rate_limit_error",
                 [503] = "overloaded_error", [529] = "overloaded_error" })[status]
    return t or (status >= 500 and "api_error" or "invalid_request_error")
  end
  if status == 429 then return "rate_limit_error", "rate_limit_exceeded" end
  if status >= 500 then return "server_error", nil end
  if status == 401 then return "invalid_request_error", "invalid_api_key" end
  return "invalid_request_error", nil
end

local function error_body(fmt, status, message)
  message = message or ("mock provider error (HTTP " .. fmt_int(status) .. ")")
  local etype, code = error_kind(fmt, status)
  if fmt == "anthropic" then
    return cjson.encode({ type = "error", error = { type = etype, message = message } })
  end
  return cjson.encode({ error = { message = message, type = etype, param = cjson.null,
                                  code = code or cjson.null } })
end

local function script_headers(script)
  local out = {}
  if type(script) == "table" and type(script.headers) == "table" then
    local names = {}
    for k in pairs(script.headers) do names[#names + 1] = k end
    table.sort(names)
    for _, k in ipairs(names) do
      local v = script.headers[k]
      if type(v) == "number" then v = fmt_int(v) end
      out[#out + 1] = { k, tostring(v) }
    end
  end
  return out
end

local function prompt_bytes(doc)
  local n = 0
  if doc.system ~= nil then n = n + #content_text(doc.system) end
  for _, m in ipairs(doc.messages) do
    if type(m) == "table" then n = n + #content_text(m.content) end
  end
  return n
end

local function validate(fmt, doc)
  if type(doc) ~= "table" then return "request body must be a JSON object" end
  if type(doc.model) ~= "string" or doc.model == "" then return "model: field required" end
  if type(doc.messages) ~= "table" or #doc.messages == 0 then
    return "messages: must be a non-empty array"
  end
  for i, m in ipairs(doc.messages) do
    if type(m) ~= "table" or type(m.role) ~= "string" then
      return "messages." .. fmt_int(i - 1) .. ": role required"
    end
  end
  if fmt == "anthropic" and type(doc.max_tokens) ~= "number" then
    return "max_tokens: field required"
  end
  return nil
end

-- A response id shaped like the real ones, a function of the request
-- counter (distinct per request, the same after a reset): OpenAI
-- "chatcmpl-" + 29 letters/digits, Anthropic "msg_01" + 22.
local ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

local function response_id(fmt, seq)
  local prefix, n = "chatcmpl-", 29
  if fmt == "anthropic" then prefix, n = "msg_01", 22 end
  local s, out = (seq * 2654435761 + 12345) % 4294967296, {}
  for i = 1, n do
    s = (s * 69069 + 1) % 4294967296
    local k = math.floor(s / 65536) % #ALNUM + 1
    out[i] = ALNUM:sub(k, k)
  end
  return prefix .. table.concat(out)
end

-- The output cap the request asks for (OpenAI max_completion_tokens or
-- max_tokens, Anthropic max_tokens), or nil.
local function token_cap(fmt, doc)
  local v = doc.max_tokens
  if fmt ~= "anthropic" and doc.max_completion_tokens ~= nil then v = doc.max_completion_tokens end
  if type(v) == "number" and v >= 1 and v % 1 == 0 then return v end
  return nil
end

-- text cut to at most `bytes` bytes, never inside a UTF-8 sequence
local function cut_utf8(text, bytes)
  local n = bytes
  while n > 0 and (text:byte(n + 1) or 0) >= 0x80 and (text:byte(n + 1) or 0) < 0xC0 do n = n - 1 end
  return text:sub(1, n)
end

local function build_success(fmt, doc, script)
  state.seq = state.seq + 1
  local text = script and type(script.content) == "string" and script.content
               or default_reply(doc.messages)
  local model = script and type(script.model) == "string" and script.model or echo_model(doc.model)
  -- a reply longer than the request's output cap (C > cap) is cut to cap
  -- tokens (4 * cap bytes) and says so: finish_reason "length" (OpenAI),
  -- stop_reason "max_tokens" (Anthropic)
  local cap, cut = token_cap(fmt, doc), false
  if cap and ceil_div4(#text) > cap then
    text, cut = cut_utf8(text, cap * 4), true
  end
  local p, cnt = ceil_div4(prompt_bytes(doc)), ceil_div4(#text)
  local usage
  if script and script.usage == false then
    usage = nil
  elseif script and type(script.usage) == "table" then
    usage = script.usage
  elseif fmt == "anthropic" then
    usage = { input_tokens = p, output_tokens = cnt, cache_read_input_tokens = 0,
              cache_creation_input_tokens = 0 }
  else
    usage = { prompt_tokens = p, completion_tokens = cnt, total_tokens = p + cnt,
              prompt_tokens_details = { cached_tokens = 0 },
              completion_tokens_details = { reasoning_tokens = 0 } }
  end
  local tools = script and type(script.tool_calls) == "table" and #script.tool_calls > 0 and script.tool_calls
  local refusal = script and type(script.refusal) == "string" and script.refusal or nil
  local own_text = script and type(script.content) == "string"
  if fmt == "anthropic" then
    local stop = script and script.stop_reason
    if stop == nil then stop = tools and "tool_use" or (cut and "max_tokens" or "end_turn") end
    if stop == false then stop = nil end
    local content = {}
    if not tools or own_text then content[1] = { type = "text", text = text } end
    for _, t in ipairs(tools or {}) do
      content[#content + 1] = { type = "tool_use", id = t.id, name = t.name, input = cjson.decode(t.arguments) }
    end
    return cjson.encode({
      id = response_id(fmt, state.seq), type = "message", role = "assistant",
      model = model, content = content,
      stop_reason = stop, stop_sequence = cjson.null, usage = usage,
    })
  end
  local finish = script and script.finish_reason
  if finish == nil then finish = tools and "tool_calls" or (cut and "length" or "stop") end
  if finish == false then finish = nil end
  local message = { role = "assistant", content = text }
  if (tools or refusal) and not own_text then message.content = cjson.null end
  message.refusal = refusal
  if tools then
    message.tool_calls = {}
    for i, t in ipairs(tools) do
      message.tool_calls[i] = { id = t.id, type = "function",
                                ["function"] = { name = t.name, arguments = t.arguments } }
    end
  end
  return cjson.encode({
    id = response_id(fmt, state.seq), object = "chat.completion",
    created = os.time(), model = model,
    choices = { { index = 0, message = message, finish_reason = finish } },
    usage = usage,
  })
end

local REDACT = { ["authorization"] = true, ["proxy-authorization"] = true,
                 ["x-api-key"] = true, ["api-key"] = true }

local function auth_state(fmt, headers)
  local presented
  if fmt == "anthropic" then
    presented = headers["x-api-key"]
  elseif fmt == "azure" then
    presented = headers["api-key"]
  else
    presented = headers["authorization"] and headers["authorization"]:match("^[Bb]earer%s+(.-)%s*$")
  end
  if presented == nil or presented == "" then return "missing" end
  if not config.api_key then return "unchecked" end
  return presented == config.api_key and "valid" or "invalid"
end

local function log_request(req, auth)
  local headers = {}
  for k, v in pairs(req.headers) do
    if REDACT[k] then
      local scheme = v:match("^(%a+)%s")
      v = scheme and (scheme .. " [redacted]") or "[redacted]"
    end
    headers[k] = v
  end
  local entry = { path = req.path, query = req.query, method = req.method, headers = headers, body = req.body,
                  auth = auth }
  local log = state.log
  log[#log + 1] = entry
  while #log > MAX_LOG do table.remove(log, 1) end
  return entry
end

local function completion(req, fmt)
  local entry = log_request(req, auth_state(fmt, req.headers))
  local azure = fmt == "azure"
  if azure then fmt = "openai" end
  local function reply(resp)
    entry.status = resp.status
    return resp
  end
  if req.method ~= "POST" then
    return reply({ status = 405, body = error_body(fmt, 405, "use POST"),
                   headers = { { "Allow", "POST" } } })
  end
  if config.api_key and entry.auth ~= "valid" then
    local msg
    if fmt == "anthropic" then msg = "invalid x-api-key"
    elseif azure then msg = "Access denied due to invalid subscription key or wrong API endpoint."
    elseif entry.auth == "missing" then msg = "You didn't provide an API key."
    else msg = "Incorrect API key provided." end
    return reply({ status = 401, body = error_body(fmt, 401, msg) })
  end
  if azure and not req.path:match("^/openai/v1/") and not req.query:match("^api%-version=[^&]+")
     and not req.query:match("&api%-version=[^&]+") then
    return reply({ status = 400, body = error_body(fmt, 400, "Missing required query parameter: api-version") })
  end
  local ok, doc = pcall(cjson.decode, req.body)
  local problem
  if ok then problem = validate(fmt, doc) else problem = "request body is not valid JSON" end
  if problem then return reply({ status = 400, body = error_body(fmt, 400, problem) }) end

  local script = table.remove(state.queue, 1)
  if not script then
    return reply({ status = 200, body = build_success(fmt, doc, nil) })
  end
  if type(script.delay_ms) == "number" and script.delay_ms > 0 then
    sleep(script.delay_ms / 1000)
  end
  if script.reset then entry.outcome = "reset"; return { reset = true } end
  if script.hang then entry.outcome = "hang"; return { hang = true } end
  local status = script.status or 200
  local headers = script_headers(script)
  local body
  if type(script.body) == "string" then
    body = script.body
  elseif status >= 400 then
    body = error_body(fmt, status, type(script.message) == "string" and script.message or nil)
  else
    body = build_success(fmt, doc, script)
  end
  return reply({ status = status, headers = headers, body = body })
end

----------------------------------------------------------------------------
-- control API

local function json_array(list)
  if #list == 0 then return "[]" end
  return cjson.encode(list)
end

local function check_script(s, i)
  local where = "script " .. fmt_int(i) .. ": "
  if type(s) ~= "table" then return where .. "must be an object" end
  if s.status ~= nil and (type(s.status) ~= "number" or s.status < 200 or s.status > 599
                          or s.status % 1 ~= 0) then
    return where .. "status must be an integer 200..599"
  end
  if s.delay_ms ~= nil and (type(s.delay_ms) ~= "number" or s.delay_ms < 0) then
    return where .. "delay_ms must be a number >= 0"
  end
  if s.headers ~= nil and type(s.headers) ~= "table" then return where .. "headers must be an object" end
  if s.body ~= nil and type(s.body) ~= "string" then return where .. "body must be a string" end
  if s.content ~= nil and type(s.content) ~= "string" then return where .. "content must be a string" end
  if s.model ~= nil and type(s.model) ~= "string" then return where .. "model must be a string" end
  if s.refusal ~= nil and type(s.refusal) ~= "string" then return where .. "refusal must be a string" end
  if s.tool_calls ~= nil then
    if type(s.tool_calls) ~= "table" then return where .. "tool_calls must be an array" end
    for _, t in ipairs(s.tool_calls) do
      if type(t) ~= "table" or type(t.id) ~= "string" or type(t.name) ~= "string" or type(t.arguments) ~= "string"
         or not pcall(cjson.decode, t.arguments) then
        return where .. "tool_calls[i] must be {id, name, arguments = JSON text}"
      end
    end
  end
  if s.usage ~= nil and s.usage ~= false and type(s.usage) ~= "table" then
    return where .. "usage must be an object or false"
  end
  return nil
end

local function control(req)
  local p, m = req.path, req.method
  if p == "/__mock/queue" and m == "POST" then
    local ok, list = pcall(cjson.decode, req.body)
    if not ok or type(list) ~= "table" then
      return { status = 400, body = cjson.encode({ error = "body must be a JSON array of scripts" }) }
    end
    if #list == 0 and next(list) ~= nil then list = { list } end -- a single script object
    for i, s in ipairs(list) do
      local problem = check_script(s, i)
      if problem then return { status = 400, body = cjson.encode({ error = problem }) } end
    end
    for _, s in ipairs(list) do state.queue[#state.queue + 1] = s end
    return { status = 200, body = cjson.encode({ queued = #list, pending = #state.queue }) }
  elseif p == "/__mock/reset" and m == "POST" then
    state.queue, state.log, state.seq = {}, {}, 0
    return { status = 200, body = cjson.encode({ ok = true }) }
  elseif p == "/__mock/requests" and m == "GET" then
    return { status = 200, body = json_array(state.log) }
  elseif p == "/__mock/health" and m == "GET" then
    return { status = 200, body = cjson.encode({ ok = true, pending = #state.queue, logged = #state.log }) }
  elseif p == "/__mock/shutdown" and m == "POST" then
    return { status = 200, body = cjson.encode({ ok = true }), close = true, shutdown = true }
  end
  return { status = 404, body = cjson.encode({ error = "no mock route " .. m .. " " .. p }) }
end

local function dispatch(req)
  local p = req.path
  if p == "/v1/chat/completions" or p == "/chat/completions" or p == "/v1beta/openai/chat/completions" then
    return completion(req, "openai")
  elseif p:match("^/openai/deployments/[^/]+/chat/completions$") or p == "/openai/v1/chat/completions" then
    return completion(req, "azure")
  elseif p == "/v1/messages" then
    return completion(req, "anthropic")
  elseif p:sub(1, 8) == "/__mock/" then
    return control(req)
  end
  return { status = 404, body = cjson.encode({ error = { message = "no route for " .. req.method .. " " .. p,
                                                           type = "invalid_request_error" } }) }
end

----------------------------------------------------------------------------
-- connection handler

local function hang_until_closed(c)
  c.buf = ""
  while state.running do
    local data, err, partial = c.sock:receive(65536)
    if err and err ~= "timeout" then return end
    if not data and (partial == nil or partial == "") then
      wait("r", c.sock, nil)
    end
  end
end

local function abort_connection(c)
  c.sock:setoption("linger", { on = true, timeout = 0 })
  c.sock:close()
end

local function serve(sock)
  local c = { sock = sock, buf = "" }
  while state.running do
    local req, early = read_request(c)
    if not req then
      if early then
        send_all(c, serialize(early.status, {}, early.body, false))
        logline("- %d (protocol error)", early.status)
      end
      return
    end
    local t0 = socket.gettime()
    local ok, resp = pcall(dispatch, req)
    if not ok then
      logline("handler error: %s", tostring(resp))
      resp = simple_error(500, "mock handler error")
    end
    if resp.reset then
      logline("%s %s reset", req.method, req.path)
      abort_connection(c)
      return
    end
    if resp.hang then
      logline("%s %s hang", req.method, req.path)
      hang_until_closed(c)
      return
    end
    local keep = req.keep_alive and not resp.close and state.running
    local sent = send_all(c, serialize(resp.status, resp.headers or {}, resp.body, keep))
    logline("%s %s %d %dms", req.method, req.path, resp.status,
            math.floor((socket.gettime() - t0) * 1000 + 0.5))
    if resp.shutdown then state.running = false end
    if not sent or not keep then return end
  end
end

----------------------------------------------------------------------------
-- main

local function process_alive(pid)
  local f = io.open("/proc/" .. fmt_int(pid) .. "/stat", "r")
  if not f then return false end
  local line = f:read("*l") or ""
  f:close()
  local st = line:match("^%d+ %b() (%a)")
  return st ~= "Z" and st ~= "X"
end

local function write_port_file(path, port)
  local tmp = path .. ".tmp." .. fmt_int(math.floor(socket.gettime() * 1000) % 1000000)
  local f = assert(io.open(tmp, "w"))
  f:write(fmt_int(port), "\n")
  f:close()
  assert(os.rename(tmp, path))
end

local function main(argv)
  parse_args(argv)
  local server = socket.tcp()
  server:setoption("reuseaddr", true)
  local ok, err = server:bind(config.host, config.port)
  if not ok then die("bind " .. config.host .. ":" .. fmt_int(config.port) .. ": " .. tostring(err)) end
  ok, err = server:listen(128)
  if not ok then die("listen: " .. tostring(err)) end
  server:settimeout(0)
  local _, port = server:getsockname()
  port = tonumber(port)
  if config.port_file then write_port_file(config.port_file, port) end
  io.stdout:write("listening ", config.host, ":", fmt_int(port), "\n")
  io.stdout:flush()

  local next_watch = 0
  while state.running do
    local recvt, sendt = { server }, {}
    local now = socket.gettime()
    local timeout = TICK
    for task in pairs(tasks) do
      if task.mode == "r" then recvt[#recvt + 1] = task.wsock
      elseif task.mode == "w" then sendt[#sendt + 1] = task.wsock end
      if task.deadline then timeout = math.min(timeout, math.max(0, task.deadline - now)) end
    end
    local r, w = socket.select(recvt, sendt, timeout)
    if r[server] then
      for _ = 1, 64 do
        local client = server:accept()
        if not client then break end
        client:settimeout(0)
        client:setoption("tcp-nodelay", true)
        spawn(serve, client)
      end
    end
    now = socket.gettime()
    local ready = {}
    for task in pairs(tasks) do
      if task.mode == "r" and r[task.wsock] then ready[#ready + 1] = { task, "ready" }
      elseif task.mode == "w" and w[task.wsock] then ready[#ready + 1] = { task, "ready" }
      elseif task.deadline and now >= task.deadline then ready[#ready + 1] = { task, "timeout" }
      end
    end
    for _, item in ipairs(ready) do
      if tasks[item[1]] and state.running then resume(item[1], item[2]) end
    end
    if config.watch_pid and now >= next_watch then
      next_watch = now + TICK
      if not process_alive(config.watch_pid) then
        logline("watched process %d is gone; exiting", config.watch_pid)
        state.running = false
      end
    end
  end

  for task in pairs(tasks) do finish_task(task) end
  server:close()
  if config.port_file then os.remove(config.port_file) end
  logline("stopped")
end

main(arg or {})
