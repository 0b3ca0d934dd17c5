-- genaudit.stream — one streamed model answer, read as it arrives.
--
-- A transport hands the 2xx body's bytes to acc:feed(bytes) in whatever
-- pieces the network gave; they go through core.sse_parser (the one SSE
-- parser of both transports) and each event is read per wire format:
--   OpenAI-compatible (OpenAI, Azure, OpenRouter, Gemini, Groq, DeepSeek,
--   vLLM, Ollama): `data: {chunk}` with choices[1].delta.content / refusal /
--   tool_calls (merged by index, argument fragments appended as sent),
--   finish_reason, usage on a final chunk (or under x_groq.usage), ending in
--   `data: [DONE]`; a chunk with empty id and model and no choices (Azure's
--   content-filter preamble) adds only its prompt_filter_results; a chunk
--   `{"error": ...}` or an `event: error` is the provider's error; a tool
--   call's name repeated with every fragment (Mistral) is kept once, and
--   tool calls without index or all with index 0 (Ollama) are told apart by
--   their ids.
--   Anthropic Messages: message_start (id, model, usage), content_block_start
--   / _delta (text_delta, input_json_delta partial_json) / _stop,
--   message_delta (stop_reason; its usage fields replace message_start's:
--   output_tokens there is the final count, never added), message_stop,
--   ping, error.
-- The host's on_chunk(text, info) receives every text (and refusal) delta
-- as it is read; raising or returning false stops the stream
-- (STREAM_ABORTED). When the stream is complete, acc:body() assembles the
-- JSON body the same answer would have had unstreamed, so that
-- provider:parse_response reads usage, model, finish reason and tool calls
-- by the very code of the unstreamed path (every quirk and the key scrub
-- included). A 2xx body that is not an event stream at all (a provider that
-- ignored "stream": true) is kept as it came and parsed as a normal body.
local core = require("genaudit.core")
local json = require("genaudit.json")
local providers = require("genaudit.providers")

local M = {}

local Acc = {}
Acc.__index = Acc

local function now_us() return core.monotonic_us() end

-- Raw JSON text as a value the encoder writes back byte for byte, or nil
-- when the text is not one JSON value.
local function raw_value(text)
  local v = json.decode("[" .. text .. "]", 1)
  if type(v) ~= "table" or #v ~= 1 then return nil end
  return v[1]
end

-- stream.new{ wire = "openai"|"anthropic", on_chunk = fn|nil, kind = "initial"|…,
--   max_event_bytes = N|nil } -> accumulator
function M.new(opts)
  return setmetatable({
    wire = opts.wire, on_chunk = opts.on_chunk, kind = opts.kind,
    parser = core.sse_parser{ max_event_bytes = opts.max_event_bytes },
    raw = {},        -- the body's bytes until the first event: a non-SSE body is kept whole
    events = 0,      -- SSE events read
    chunks = 0,      -- text/refusal/tool-call deltas read
    text = {},       -- content deltas in order
    refusal = nil,   -- refusal deltas, concatenated
    tools = {},      -- tool calls by position: { id, type, name, args = {fragments} }
    done = false,    -- the end marker ([DONE] / message_stop) came
  }, Acc)
end

-- Stops the stream with an error the client reports as the call's.
function Acc:fail(msg, code)
  if not self.err then self.err, self.code = msg, code end
  return nil, msg
end

-- Hands one delta to the host; its raise or `false` stops the stream.
function Acc:emit(text, what)
  if text == "" and what ~= "tool_call" then return true end -- the opening role-only delta is no token
  self.chunks = self.chunks + 1
  self.t_token = self.t_token or now_us()
  if not self.on_chunk or what == "tool_call" then return true end
  local ok, r, why = pcall(self.on_chunk, text, { kind = self.kind, type = what, index = self.chunks })
  if not ok then
    return self:fail("STREAM_ABORTED: on_chunk raised: " .. tostring(r), "STREAM_ABORTED")
  end
  if r == false or (r == nil and type(why) == "string") then -- false[, why], or Lua's nil, err
    return self:fail("STREAM_ABORTED: " .. (type(why) == "string" and why or "on_chunk stopped the stream"),
      "STREAM_ABORTED")
  end
  return true
end

local function str(v) return type(v) == "string" and v or nil end

-- The provider's own error text of an error event's payload.
local function error_text(doc)
  local e = type(doc) == "table" and doc.error
  if type(e) == "table" then
    local t, m = str(e.type) or str(e.code), str(e.message)
    return (t and m) and (t .. ": " .. m) or m or t or "an error without a message"
  end
  return str(e) or "an error without a message"
end

local function tool_slot(self, i)
  local t = self.tools[i]
  if not t then
    t = { args = {} }
    self.tools[i] = t
  end
  return t
end

-- The position (1-based) of the tool call a tool_calls[k] delta belongs
-- to: its index, unless that call has another id (Ollama >= 0.4.7 sends
-- index 0 for every call, ollama/ollama#15457): then a new call, which
-- that index means from then on. Without index (Ollama before 0.4.7, each
-- call whole), a new id opens a new call and a fragment without id
-- continues the last one.
function Acc:tool_position(tc, k)
  local n = tc.index
  local id = str(tc.id) ~= "" and str(tc.id) or nil
  local last = #self.tools
  if type(n) == "number" and n >= 0 and n % 1 == 0 and n < 1024 then
    self.tool_at = self.tool_at or {}
    local i = self.tool_at[n] or n + 1
    local t = self.tools[i]
    if id and t and t.id and t.id ~= id then
      i = last + 1
      self.tool_at[n] = i
    end
    return i
  end
  if id then
    for i = 1, last do if self.tools[i].id == id then return i end end
    return last + 1
  end
  return last > 0 and last or k
end

-- One OpenAI-compatible chunk.
function Acc:openai_event(ev)
  if ev.data == "[DONE]" then
    self.done = true
    return true
  end
  local doc = json.decode(ev.data)
  if ev.event == "error" then -- an `event: error` (vLLM, TGI, proxies) whatever its data's shape
    local e = type(doc) == "table" and (doc.error ~= nil and doc.error ~= json.null and doc or { error = doc })
      or { error = ev.data:sub(1, 200) }
    return self:fail("PROVIDER_ERROR: the provider sent an error event: " .. error_text(e), "PROVIDER_ERROR")
  end
  if type(doc) ~= "table" then
    return self:fail("BAD_RESPONSE: a stream event is not a JSON object", "BAD_RESPONSE")
  end
  if doc.error ~= nil and doc.error ~= json.null then
    return self:fail("PROVIDER_ERROR: the provider sent an error event: " .. error_text(doc), "PROVIDER_ERROR")
  end
  if str(doc.id) and doc.id ~= "" then self.id = self.id or doc.id end
  if str(doc.model) and doc.model ~= "" then self.model = doc.model end -- the last chunk's word stands
  if type(doc.created) == "number" and doc.created > 0 then self.created = self.created or doc.created end
  if str(doc.system_fingerprint) then self.fingerprint = doc.system_fingerprint end
  if type(doc.prompt_filter_results) == "table" then self.prompt_filter = doc.prompt_filter_results end
  if type(doc.usage) == "table" then self.usage = doc.usage end
  if type(doc.x_groq) == "table" and type(doc.x_groq.usage) == "table" then self.groq_usage = doc.x_groq.usage end
  local choices = doc.choices
  if type(choices) ~= "table" then return true end
  for _, ch in ipairs(choices) do
    if type(ch) == "table" and (ch.index == nil or ch.index == 0) then
      if str(ch.finish_reason) then self.finish = ch.finish_reason end
      if type(ch.content_filter_results) == "table" and next(ch.content_filter_results) then
        self.content_filter = ch.content_filter_results
      end
      local d = type(ch.delta) == "table" and ch.delta or (type(ch.message) == "table" and ch.message) or {}
      if str(d.content) then
        self.text[#self.text + 1] = d.content
        local ok, e = self:emit(d.content, "text")
        if not ok then return nil, e end
      end
      if str(d.refusal) then
        self.refusal = (self.refusal or "") .. d.refusal
        local ok, e = self:emit(d.refusal, "refusal")
        if not ok then return nil, e end
      end
      if type(d.tool_calls) == "table" then
        for k, tc in ipairs(d.tool_calls) do
          if type(tc) == "table" then
            local slot = tool_slot(self, self:tool_position(tc, k))
            slot.id = slot.id or (str(tc.id) ~= "" and str(tc.id) or nil)
            slot.type = slot.type or str(tc.type)
            local fn = type(tc["function"]) == "table" and tc["function"] or {}
            -- name fragments are appended; the whole name sent again with every
            -- fragment (Mistral) is the same name, not a longer one
            if str(fn.name) and fn.name ~= "" and fn.name ~= slot.name then slot.name = (slot.name or "") .. fn.name end
            if str(fn.arguments) then
              slot.args[#slot.args + 1] = fn.arguments
              local ok, e = self:emit("", "tool_call")
              if not ok then return nil, e end
            end
          end
        end
      end
    end
  end
  return true
end

-- One Anthropic Messages event.
function Acc:anthropic_event(ev)
  local t = ev.event
  if t == "ping" then return true end
  local doc = json.decode(ev.data)
  if type(doc) ~= "table" then
    return self:fail("BAD_RESPONSE: a stream event is not a JSON object", "BAD_RESPONSE")
  end
  t = (t ~= "message" and t) or str(doc.type) or t
  if t == "error" then
    local code = type(doc.error) == "table" and doc.error.type == "rate_limit_error" and "RATE_LIMITED"
      or "PROVIDER_ERROR"
    return self:fail(code .. ": the provider sent an error event: " .. error_text(doc), code)
  elseif t == "message_start" then
    local m = type(doc.message) == "table" and doc.message or {}
    self.id, self.model = str(m.id) or self.id, str(m.model) or self.model
    if type(m.usage) == "table" then
      self.usage = {}
      for k, v in pairs(m.usage) do self.usage[k] = v end
    end
  elseif t == "content_block_start" then
    local b = type(doc.content_block) == "table" and doc.content_block or {}
    self.blocks = self.blocks or {}
    local i = type(doc.index) == "number" and doc.index + 1 or #self.blocks + 1
    self.blocks[i] = { type = str(b.type), id = str(b.id), name = str(b.name), parts = {} }
    if b.type == "text" and str(b.text) and b.text ~= "" then
      self.blocks[i].parts[1] = b.text
      self.text[#self.text + 1] = b.text
      local ok, e = self:emit(b.text, "text")
      if not ok then return nil, e end
    end
  elseif t == "content_block_delta" then
    local d = type(doc.delta) == "table" and doc.delta or {}
    self.blocks = self.blocks or {}
    local i = type(doc.index) == "number" and doc.index + 1 or 1
    local b = self.blocks[i]
    if not b then
      b = { type = d.type == "input_json_delta" and "tool_use" or "text", parts = {} }
      self.blocks[i] = b
    end
    if d.type == "text_delta" and str(d.text) then
      b.parts[#b.parts + 1] = d.text
      self.text[#self.text + 1] = d.text
      local ok, e = self:emit(d.text, "text")
      if not ok then return nil, e end
    elseif d.type == "input_json_delta" and str(d.partial_json) then
      b.parts[#b.parts + 1] = d.partial_json
      local ok, e = self:emit("", "tool_call")
      if not ok then return nil, e end
    end
  elseif t == "message_delta" then
    local d = type(doc.delta) == "table" and doc.delta or {}
    if str(d.stop_reason) then self.finish = d.stop_reason end
    if type(doc.usage) == "table" then
      -- the cumulative figures: each field replaces message_start's
      self.usage = self.usage or {}
      for k, v in pairs(doc.usage) do
        if v ~= json.null then self.usage[k] = v end
      end
    end
  elseif t == "message_stop" then
    self.done = true
  end
  return true
end

-- acc:feed(bytes) -> true | nil, reason: the transport's on_data.
function Acc:feed(bytes)
  if self.err then return nil, self.err end
  local t = now_us()
  self.t_first = self.t_first or t
  self.t_last = t
  if self.raw then self.raw[#self.raw + 1] = bytes end
  if self.not_sse == nil then
    -- the first byte that is not white space says which: JSON opens with { or [
    -- (a provider that ignored "stream": true), an event stream never does
    local first = table.concat(self.raw):match("^%s*(%S)")
    if not first then return true end
    self.not_sse = first == "{" or first == "["
    if not self.not_sse then bytes = table.concat(self.raw) end
  end
  if self.not_sse then return true end
  local evs, err, code, before = self.parser:feed(bytes)
  local list = evs or before or {}
  for _, ev in ipairs(list) do
    self.raw = nil -- an event stream: the bytes are not kept
    self.events = self.events + 1
    local ok, e
    if self.wire == "anthropic" then ok, e = self:anthropic_event(ev) else ok, e = self:openai_event(ev) end
    if not ok then return nil, e end
  end
  if not evs then return self:fail(err, code) end
  return true
end

-- acc:plain_body() -> the body as it came when it was not an event stream
-- (a provider that ignored "stream": true), else nil.
function Acc:plain_body()
  if not self.not_sse then return nil end
  return table.concat(self.raw)
end

-- The text received so far.
function Acc:content() return table.concat(self.text) end

-- acc:complete() -> true | nil, err, code: whether the stream ended as a
-- whole answer (its end marker, or at least its finish reason, came).
function Acc:complete()
  if self.err then return nil, self.err, self.code end
  if self.events == 0 then return nil, "BAD_RESPONSE: the stream held no event", "BAD_RESPONSE" end
  if not self.done and self.finish == nil then
    return nil, "BAD_RESPONSE: the stream ended before its end marker (" ..
      (self.wire == "anthropic" and "message_stop" or "[DONE]") .. ")", "BAD_RESPONSE"
  end
  return true
end

local function zero_usage(wire)
  if wire == "anthropic" then return { input_tokens = 0, output_tokens = 0 } end
  return { prompt_tokens = 0, completion_tokens = 0, total_tokens = 0 }
end

-- acc:body() -> the JSON text of the same answer unstreamed, and whether
-- usage came (false: a zero usage stands in so that the content can be
-- read; the caller must not count it). Tool-call arguments are the
-- fragments concatenated exactly as sent (acc:tool_arguments()).
function Acc:body()
  local has_usage = self.usage ~= nil or self.groq_usage ~= nil
  local normalize = providers.normalize[self.wire == "anthropic" and "anthropic" or "openai"]
  if has_usage and not normalize(self:known_usage()) then
    -- usage fields that do not make a usage (Anthropic's input_tokens
    -- without output_tokens): missing, what came kept as partial usage
    self.usage, self.groq_usage, self.partial_usage, has_usage = nil, nil, self:known_usage(), false
  end
  if self.wire == "anthropic" then
    local content = {}
    local idx = {}
    for i in pairs(self.blocks or {}) do idx[#idx + 1] = i end
    table.sort(idx)
    for _, i in ipairs(idx) do
      local b = self.blocks[i]
      if b.type == "text" then
        content[#content + 1] = { type = "text", text = table.concat(b.parts) }
      elseif b.type == "tool_use" then
        local args = table.concat(b.parts)
        content[#content + 1] = { type = "tool_use", id = b.id, name = b.name,
                                  input = raw_value(args ~= "" and args or "{}") or raw_value("{}") }
      end
    end
    if #content == 0 then content[1] = { type = "text", text = "" } end
    return json.encode{
      id = self.id, type = "message", role = "assistant", model = self.model, content = content,
      stop_reason = self.finish or json.null, usage = self.usage or zero_usage("anthropic"),
    }, has_usage
  end
  local msg = { role = "assistant", content = table.concat(self.text), refusal = self.refusal }
  if #self.tools > 0 then
    msg.tool_calls = {}
    for i, t in ipairs(self.tools) do
      msg.tool_calls[i] = { id = t.id, type = t.type or "function",
                            ["function"] = { name = t.name, arguments = table.concat(t.args) } }
    end
  end
  return json.encode{
    id = self.id, object = "chat.completion", created = self.created, model = self.model,
    system_fingerprint = self.fingerprint, prompt_filter_results = self.prompt_filter,
    choices = { { index = 0, message = msg, finish_reason = self.finish or json.null,
                  content_filter_results = self.content_filter } },
    usage = self.usage or (not self.groq_usage and zero_usage("openai")) or nil,
    x_groq = self.groq_usage and { usage = self.groq_usage } or nil,
  }, has_usage
end

-- acc:tool_arguments() -> { [i] = arguments text } of each tool call, as
-- the fragments came (Anthropic: "{}" for a tool_use without input).
function Acc:tool_arguments()
  local out = {}
  if self.wire == "anthropic" then
    local idx = {}
    for i, b in pairs(self.blocks or {}) do if b.type == "tool_use" then idx[#idx + 1] = i end end
    table.sort(idx)
    for k, i in ipairs(idx) do
      local a = table.concat(self.blocks[i].parts)
      out[k] = a ~= "" and a or "{}"
    end
  else
    for i, t in ipairs(self.tools) do out[i] = table.concat(t.args) end
  end
  return out
end

-- acc:known_usage() -> the usage fields read so far (as sent, merged), or nil
function Acc:known_usage() return self.usage or self.groq_usage or self.partial_usage end

-- acc:figures(res_or_info) -> the call's stream figures for its log entry:
-- time_to_first_token_ms (the transport's first byte plus the time from
-- that byte to the first delta; nil when no delta came), stream_duration_ms
-- (first byte to last), chunks, events, reads, stream_bytes.
function Acc:figures(t)
  t = t or {}
  local f = { streamed = true, chunks = self.chunks, events = self.events, reads = t.reads,
              stream_bytes = t.stream_bytes }
  if t.first_byte_us and self.t_token and self.t_first then
    f.time_to_first_token_ms = math.floor(t.first_byte_us + (self.t_token - self.t_first)) / 1000
  end
  if self.t_first then f.stream_duration_ms = math.floor(self.t_last - self.t_first) / 1000 end
  return f
end

function Acc:close()
  if self.parser then self.parser:close() end
  self.parser = nil
end

return M
