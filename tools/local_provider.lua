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
-- Streaming: a request body with "stream": true (and a status < 400, no
-- `body`) is answered as an event stream: 200, Content-Type:
-- text/event-stream, Transfer-Encoding: chunked (HTTP/1.1; an HTTP/1.0
-- request gets the raw bytes and Connection: close), carrying the same reply
-- as the non-streamed answer (same content, finish/stop reason, tool calls,
-- refusal, model, id, usage numbers):
--   OpenAI (all OpenAI-compatible routes): `data: {chunk}\n\n` per
--     chat.completion.chunk: a first delta {role "assistant", content ""}
--     (content null for tool calls / refusal without content, refusal ""
--     with a refusal), the content in deltas, the refusal in refusal deltas,
--     each tool call as a delta {index, id, type, function {name, arguments
--     ""}} then its arguments in 8-byte fragments, a last chunk with delta {}
--     and finish_reason; with stream_options.include_usage = true every chunk
--     has "usage": null and one more chunk has "choices": [] and the usage;
--     then `data: [DONE]\n\n`.
--   Anthropic: message_start (usage with output_tokens 1), per block
--     content_block_start, a ping after the first block's start,
--     content_block_delta (text_delta, or input_json_delta with the tool
--     call's arguments text in 8-byte fragments), content_block_stop;
--     message_delta (stop_reason, the full usage), message_stop.
-- Streaming script fields (all optional):
--   chunk_sizes       how the event stream's bytes are cut into network
--                     writes (each one HTTP chunk, sent on its own): an array
--                     of byte counts (cycled), an integer N (N-byte writes; 1
--                     = one byte per write), or "random": sizes 1..chunk_max
--                     (default 16) from the LCG s = (s * 69069 + 1) % 2^32,
--                     size = floor(s / 65536) % chunk_max + 1, s starting at
--                     chunk_seed (default 1). Default: one write per event.
--   chunk_delay_ms    sleep between writes (other connections are served)
--   deltas            array of UTF-8 strings: the content's deltas (needs
--                     content, must concatenate to it; when a max_tokens cut
--                     changed the text the default split is used). Default:
--                     pieces of three whitespace-separated words.
--   drop_after_bytes  after N bytes of the event stream, close the
--                     connection (no chunked terminator)
--   stall_after_bytes, stall_ms   after N bytes, silence for stall_ms, then
--                     the rest
--   error_event       true or a message: after the first delta event (the
--                     first event when there is none) a provider error event
--                     instead of the rest, then the stream ends properly
--                     (chunked terminator; no [DONE]). Anthropic: event: error
--                     {"type":"error","error":{"type":"overloaded_error",
--                     "message":"Overloaded"}}; OpenAI: data: {"error":
--                     {"message":...,"type":"server_error"}}
--   stream_usage      false: no usage chunk (OpenAI) even when include_usage
--                     is asked; Anthropic: no usage in message_delta and no
--                     output_tokens in message_start
--   sse_body          a raw string sent verbatim as the event stream (with
--                     the script's status, headers and chunking; default one
--                     write per event, i.e. up to each blank line), whether
--                     or not the request asked to stream; excludes `body`
--   azure_preamble    true: first OpenAI chunk is Azure's content-filter
--                     preamble ("choices": [], empty id/model/object, created
--                     0, prompt_filter_results)
--   comments          true: ": keep-alive" comment lines before every other
--                     event (and, Anthropic, extra ping events there)
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

-- The status line and headers of a response. headers: array of {name,
-- value}; framing: a number (Content-Length), "chunked" (Transfer-Encoding:
-- chunked) or "close" (no length: the body ends when the connection closes).
-- content_type is the default when the headers name none.
local function serialize_head(status, headers, framing, keep_alive, content_type)
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
    out[#out + 1] = "Content-Type: " .. content_type .. "\r\n"
  end
  if framing == "chunked" then
    out[#out + 1] = "Transfer-Encoding: chunked\r\n"
    if not seen["cache-control"] then out[#out + 1] = "Cache-Control: no-cache\r\n" end
  elseif framing ~= "close" then
    out[#out + 1] = "Content-Length: " .. fmt_int(framing) .. "\r\n"
  end
  out[#out + 1] = keep_alive and "Connection: keep-alive\r\n" or "Connection: close\r\n"
  out[#out + 1] = "Server: genaudit-local-provider\r\n\r\n"
  return table.concat(out)
end

-- Serialises a buffered response. headers: array of {name, value}.
local function serialize(status, headers, body, keep_alive)
  return serialize_head(status, headers, #body, keep_alive, "application/json") .. body
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

-- The successful reply for a request (and its script, or nil) as a Lua table
-- in the request's wire format: the one source of the content, finish reason,
-- tool calls, refusal, model, id and usage that both the JSON answer
-- (build_success) and the event stream (stream_events) send. Advances the
-- request counter.
local function build_reply(fmt, doc, script)
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
    return {
      id = response_id(fmt, state.seq), type = "message", role = "assistant",
      model = model, content = content,
      stop_reason = stop, stop_sequence = cjson.null, usage = usage,
    }
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
  return {
    id = response_id(fmt, state.seq), object = "chat.completion",
    created = os.time(), model = model,
    choices = { { index = 0, message = message, finish_reason = finish } },
    usage = usage,
  }
end

-- The non-streamed answer: the reply table as JSON text.
local function build_success(fmt, doc, script)
  return cjson.encode(build_reply(fmt, doc, script))
end

----------------------------------------------------------------------------
-- streaming (SSE): the reply of build_reply as the provider's event stream

local EMPTY_ARRAY = "\1ga-empty-array\1" -- placeholder: cjson has no empty-array value

-- JSON text of v, with every EMPTY_ARRAY placeholder written as [].
local function encode(v)
  return (cjson.encode(v):gsub('"\\u0001ga%-empty%-array\\u0001"', "[]"))
end

-- True when s is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF).
local function valid_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local b = s:byte(i)
    local len, min
    if b < 0x80 then len, min = 1, 0
    elseif b >= 0xC2 and b <= 0xDF then len, min = 2, 0x80
    elseif b >= 0xE0 and b <= 0xEF then len, min = 3, 0x800
    elseif b >= 0xF0 and b <= 0xF4 then len, min = 4, 0x10000
    else return false end
    if i + len - 1 > n then return false end
    local cp = len == 1 and b or (b % (2 ^ (7 - len)))
    for k = i + 1, i + len - 1 do
      local x = s:byte(k)
      if x < 0x80 or x > 0xBF then return false end
      cp = cp * 64 + (x - 0x80)
    end
    if cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then return false end
    i = i + len
  end
  return true
end

-- The text cut into deltas: the script's `deltas` when they concatenate to
-- text, else pieces of three whitespace-separated words (each piece keeps the
-- whitespace before its words; trailing whitespace goes to the last piece).
-- Every piece is whole UTF-8; "" gives no piece.
local function split_deltas(text, script)
  if script and type(script.deltas) == "table" and table.concat(script.deltas) == text then
    return script.deltas
  end
  local out, start, words, pos = {}, 1, 0, 1
  while true do
    local _, e = text:find("^%s*%S+", pos)
    if not e then break end
    words, pos = words + 1, e + 1
    if words == 3 then
      out[#out + 1] = text:sub(start, e)
      start, words = e + 1, 0
    end
  end
  if start <= #text then out[#out + 1] = text:sub(start) end
  return out
end

-- JSON text cut into fragments of 8 bytes (never inside a UTF-8 sequence),
-- as providers stream tool-call arguments.
local function split_fragments(s)
  local out, i = {}, 1
  while i <= #s do
    local piece = cut_utf8(s:sub(i), 8)
    if piece == "" then piece = s:sub(i, i + 3):match("^[\192-\255][\128-\191]*") or s:sub(i, i) end
    out[#out + 1] = piece
    i = i + #piece
  end
  return out
end

local KEEPALIVE = ": keep-alive\n\n"

local function openai_event(obj) return "data: " .. encode(obj) .. "\n\n" end
local function anthropic_event(obj) return "event: " .. obj.type .. "\ndata: " .. encode(obj) .. "\n\n" end

-- The OpenAI chat.completion.chunk stream of a reply table. Returns an array
-- of {text, delta = true when the event carries content/refusal/arguments}.
local function openai_stream(reply, doc, script)
  local choice, events = reply.choices[1], {}
  local msg = choice.message
  local opts = type(doc.stream_options) == "table" and doc.stream_options or {}
  local with_usage = opts.include_usage == true and reply.usage ~= nil
                     and not (script and script.stream_usage == false)
  local function chunk(delta, finish, is_delta)
    local obj = { id = reply.id, object = "chat.completion.chunk", created = reply.created, model = reply.model,
                  choices = { { index = 0, delta = delta, finish_reason = finish or cjson.null } } }
    if with_usage then obj.usage = cjson.null end
    events[#events + 1] = { openai_event(obj), delta = is_delta }
  end
  if script and script.azure_preamble then
    events[#events + 1] = { openai_event({ choices = EMPTY_ARRAY, created = 0, id = "", model = "", object = "",
      prompt_filter_results = { { prompt_index = 0, content_filter_results = {
        hate = { filtered = false, severity = "safe" }, jailbreak = { filtered = false, detected = false },
        self_harm = { filtered = false, severity = "safe" }, sexual = { filtered = false, severity = "safe" },
        violence = { filtered = false, severity = "safe" } } } } }) }
  end
  local text = msg.content ~= cjson.null and msg.content or nil
  local first = { role = "assistant", content = text and "" or cjson.null }
  if msg.refusal then first.refusal = "" end
  chunk(first)
  for _, piece in ipairs(split_deltas(text or "", script)) do chunk({ content = piece }, nil, true) end
  for _, piece in ipairs(msg.refusal and split_deltas(msg.refusal, nil) or {}) do
    chunk({ refusal = piece }, nil, true)
  end
  for i, t in ipairs(msg.tool_calls or {}) do
    chunk({ tool_calls = { { index = i - 1, id = t.id, type = "function",
                             ["function"] = { name = t["function"].name, arguments = "" } } } }, nil, true)
    for _, frag in ipairs(split_fragments(t["function"].arguments)) do
      chunk({ tool_calls = { { index = i - 1, ["function"] = { arguments = frag } } } }, nil, true)
    end
  end
  chunk({}, choice.finish_reason)
  if with_usage then
    events[#events + 1] = { openai_event({ id = reply.id, object = "chat.completion.chunk", created = reply.created,
                                           model = reply.model, choices = EMPTY_ARRAY, usage = reply.usage }) }
  end
  events[#events + 1] = { "data: [DONE]\n\n", done = true }
  return events
end

-- The Anthropic Messages event stream of a reply table (same shape of result
-- as openai_stream).
local function anthropic_stream(reply, script)
  local events = {}
  local function ev(obj, is_delta) events[#events + 1] = { anthropic_event(obj), delta = is_delta } end
  local no_usage = script and script.stream_usage == false
  local start_usage
  if type(reply.usage) == "table" then
    start_usage = {}
    for k, v in pairs(reply.usage) do start_usage[k] = v end
    if no_usage then start_usage.output_tokens = nil
    elseif type(start_usage.output_tokens) == "number" then start_usage.output_tokens = 1 end
  end
  ev({ type = "message_start", message = { id = reply.id, type = "message", role = "assistant", model = reply.model,
       content = EMPTY_ARRAY, stop_reason = cjson.null, stop_sequence = cjson.null, usage = start_usage } })
  for i, block in ipairs(reply.content) do
    local index = i - 1
    if block.type == "text" then
      ev({ type = "content_block_start", index = index, content_block = { type = "text", text = "" } })
      if i == 1 then ev({ type = "ping" }) end
      for _, piece in ipairs(split_deltas(block.text, script)) do
        ev({ type = "content_block_delta", index = index, delta = { type = "text_delta", text = piece } }, true)
      end
    else
      local args
      for _, t in ipairs(script and script.tool_calls or {}) do
        if t.id == block.id then args = t.arguments end
      end
      ev({ type = "content_block_start", index = index,
           content_block = { type = "tool_use", id = block.id, name = block.name, input = {} } })
      if i == 1 then ev({ type = "ping" }) end
      for _, frag in ipairs(split_fragments(args or encode(block.input))) do
        ev({ type = "content_block_delta", index = index, delta = { type = "input_json_delta", partial_json = frag } },
           true)
      end
    end
    ev({ type = "content_block_stop", index = index })
  end
  ev({ type = "message_delta", delta = { stop_reason = reply.stop_reason, stop_sequence = cjson.null },
       usage = not no_usage and reply.usage or nil })
  ev({ type = "message_stop" })
  events[#events].done = true
  return events
end

-- The SSE event texts (an array of strings) for a streamed reply, with the
-- script's error_event and comments applied.
local function stream_events(fmt, doc, script)
  local reply = build_reply(fmt, doc, script)
  local events = fmt == "anthropic" and anthropic_stream(reply, script) or openai_stream(reply, doc, script)
  if script and script.error_event then
    local cut = 1
    for i, e in ipairs(events) do
      if e.delta then cut = i break end
    end
    for i = #events, cut + 1, -1 do events[i] = nil end
    local msg = type(script.error_event) == "string" and script.error_event or nil
    if fmt == "anthropic" then
      events[#events + 1] = { anthropic_event({ type = "error",
        error = { type = "overloaded_error", message = msg or "Overloaded" } }) }
    else
      events[#events + 1] = { openai_event({ error = {
        message = msg or "The server had an error while processing your request. Sorry about that!",
        type = "server_error" } }) }
    end
  end
  local out = {}
  for i, e in ipairs(events) do
    if script and script.comments and i % 2 == 1 then
      out[#out + 1] = KEEPALIVE
      if fmt == "anthropic" and i > 1 then out[#out + 1] = anthropic_event({ type = "ping" }) end
    end
    out[#out + 1] = e[1]
  end
  return out
end

-- The network writes of a stream: `pieces` (an array of strings making up the
-- event stream, one per event) re-cut per the script's chunk_sizes, and cut
-- again at stall_after_bytes and drop_after_bytes so those fall on a write
-- boundary.
local function plan_writes(pieces, script)
  local bytes = table.concat(pieces)
  local sizes = script and script.chunk_sizes
  local writes = {}
  if sizes == nil then
    for _, p in ipairs(pieces) do
      if p ~= "" then writes[#writes + 1] = p end
    end
  else
    local seed = (type(script.chunk_seed) == "number" and script.chunk_seed or 1) % 4294967296
    local max = type(script.chunk_max) == "number" and script.chunk_max or 16
    local i, k = 1, 0
    while i <= #bytes do
      local n
      if sizes == "random" then
        seed = (seed * 69069 + 1) % 4294967296
        n = math.floor(seed / 65536) % max + 1
      elseif type(sizes) == "number" then
        n = sizes
      else
        n = sizes[k % #sizes + 1]
        k = k + 1
      end
      writes[#writes + 1] = bytes:sub(i, i + n - 1)
      i = i + n
    end
  end
  for _, key in ipairs({ "stall_after_bytes", "drop_after_bytes" }) do
    local at = script and script[key]
    if type(at) == "number" then
      local off, out = 0, {}
      for _, w in ipairs(writes) do
        if off < at and at < off + #w then
          out[#out + 1] = w:sub(1, at - off)
          out[#out + 1] = w:sub(at - off + 1)
        else
          out[#out + 1] = w
        end
        off = off + #w
      end
      writes = out
    end
  end
  return writes
end

-- A raw event stream (sse_body) cut after each blank line: one piece per event.
local function split_raw_events(body)
  local pieces, i = {}, 1
  while i <= #body do
    local _, e = body:find("\r?\n\r?\n", i)
    if not e then pieces[#pieces + 1] = body:sub(i) break end
    pieces[#pieces + 1] = body:sub(i, e)
    i = e + 1
  end
  return pieces
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

  local streaming = doc.stream == true
  local script = table.remove(state.queue, 1)
  if not script then
    if streaming then return reply({ status = 200, stream = stream_events(fmt, doc, nil) }) end
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
  if type(script.sse_body) == "string" then
    return reply({ status = status, headers = headers, stream = split_raw_events(script.sse_body), script = script })
  elseif type(script.body) == "string" then
    body = script.body
  elseif status >= 400 then
    body = error_body(fmt, status, type(script.message) == "string" and script.message or nil)
  elseif streaming then
    return reply({ status = status, headers = headers, stream = stream_events(fmt, doc, script), script = script })
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

local function is_count(v, min)
  return type(v) == "number" and v % 1 == 0 and v >= min and v < 2 ^ 53
end

-- The streaming fields of a script (see the header): nil when valid, else the
-- problem, prefixed by `where`.
local function check_stream_fields(s, where)
  local cs = s.chunk_sizes
  if cs ~= nil and cs ~= "random" and not is_count(cs, 1) then
    if type(cs) ~= "table" or #cs == 0 then
      return where .. 'chunk_sizes must be "random", an integer >= 1 or a non-empty array of them'
    end
    for _, n in ipairs(cs) do
      if not is_count(n, 1) then return where .. "chunk_sizes[i] must be integers >= 1" end
    end
  end
  if s.chunk_seed ~= nil and not is_count(s.chunk_seed, 0) then
    return where .. "chunk_seed must be an integer >= 0"
  end
  if s.chunk_max ~= nil and not is_count(s.chunk_max, 1) then
    return where .. "chunk_max must be an integer >= 1"
  end
  for _, k in ipairs({ "chunk_delay_ms", "stall_ms" }) do
    if s[k] ~= nil and (type(s[k]) ~= "number" or s[k] < 0) then return where .. k .. " must be a number >= 0" end
  end
  for _, k in ipairs({ "drop_after_bytes", "stall_after_bytes" }) do
    if s[k] ~= nil and not is_count(s[k], 0) then return where .. k .. " must be an integer >= 0" end
  end
  if (s.stall_after_bytes == nil) ~= (s.stall_ms == nil) then
    return where .. "stall_after_bytes and stall_ms go together"
  end
  if s.deltas ~= nil then
    if type(s.deltas) ~= "table" or type(s.content) ~= "string" then
      return where .. "deltas must be an array of strings, with content"
    end
    for _, d in ipairs(s.deltas) do
      if type(d) ~= "string" or not valid_utf8(d) then return where .. "deltas[i] must be UTF-8 strings" end
    end
    if table.concat(s.deltas) ~= s.content then return where .. "deltas must concatenate to content" end
  end
  if s.error_event ~= nil and s.error_event ~= true and type(s.error_event) ~= "string" then
    return where .. "error_event must be true or a message string"
  end
  for _, k in ipairs({ "stream_usage", "azure_preamble", "comments" }) do
    if s[k] ~= nil and type(s[k]) ~= "boolean" then return where .. k .. " must be a boolean" end
  end
  if s.sse_body ~= nil then
    if type(s.sse_body) ~= "string" then return where .. "sse_body must be a string" end
    if s.body ~= nil then return where .. "body and sse_body exclude each other" end
  end
  return nil
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
  return check_stream_fields(s, where)
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

-- Sends a streamed response (resp.stream: the event texts; resp.script: the
-- script, for chunking, delays, stall and drop). HTTP/1.1 gets chunked
-- transfer-encoding, one chunk per network write; HTTP/1.0 gets the raw bytes
-- and Connection: close. Returns true when the connection may be reused,
-- false when it must be closed (a drop closes it here, without the chunked
-- terminator).
local function send_stream(c, req, resp, keep)
  local script = resp.script or {}
  local chunked = req.version == "1.1"
  if not chunked then keep = false end
  if type(script.drop_after_bytes) == "number" then keep = false end
  local head = serialize_head(resp.status, resp.headers or {}, chunked and "chunked" or "close", keep,
                              "text/event-stream")
  if not send_all(c, head) then return false end
  local writes = plan_writes(resp.stream, script)
  local delay = type(script.chunk_delay_ms) == "number" and script.chunk_delay_ms / 1000 or 0
  local stall_at, drop_at = script.stall_after_bytes, script.drop_after_bytes
  local sent = 0
  if stall_at == 0 and type(script.stall_ms) == "number" then sleep(script.stall_ms / 1000) end
  if drop_at == 0 then c.sock:close() return false end
  for i, w in ipairs(writes) do
    if i > 1 and delay > 0 then sleep(delay) end
    local frame = chunked and (string.format("%x", #w) .. "\r\n" .. w .. "\r\n") or w
    if not send_all(c, frame) then return false end
    sent = sent + #w
    if sent == stall_at and type(script.stall_ms) == "number" then sleep(script.stall_ms / 1000) end
    if drop_at and sent >= drop_at then
      c.sock:close()
      return false
    end
  end
  if drop_at then c.sock:close() return false end
  if chunked and not send_all(c, "0\r\n\r\n") then return false end
  return keep
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
    local sent
    if resp.stream then
      keep = send_stream(c, req, resp, keep)
      sent = keep
    else
      sent = send_all(c, serialize(resp.status, resp.headers or {}, resp.body, keep))
    end
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
