-- genaudit.providers — request building and response parsing per wire
-- format: OpenAI-compatible chat completions (OpenAI, OpenRouter, vLLM,
-- Ollama, Gemini's OpenAI endpoint, Azure OpenAI) and Anthropic Messages.
-- A base URL is accepted as each provider documents it: with or without the
-- trailing /v1 (or /v1beta/openai for Gemini), with or without a final "/",
-- or as the full endpoint URL. Usage is normalized to one shape:
--   prompt_tokens         all input tokens, cached and cache-written included
--   completion_tokens     all output tokens, reasoning included
--   total_tokens          as reported (Gemini reports more than the sum)
--   cached_prompt_tokens, cache_write_tokens, reasoning_tokens
-- A provider object never exposes its API key: it lives in a closure, and
-- every string derived from a provider answer (error texts, the reported
-- model, the content) is scrubbed of it, in every usual encoding.
-- Request bodies are built with genaudit's exact C encoder (core.json_encode),
-- never with lua-cjson: Debian's cjson rounds numbers to 14 digits (a seed or
-- a temperature would be sent other than stored) and crashes on huge strings.
local core = require("genaudit.core")
local json = require("genaudit.json")

local M = {}

-- The default cap on a request body (prompts, draft, feedback, parameters).
M.MAX_REQUEST_BYTES = 32 * 1024 * 1024

local function int(v)
  if type(v) ~= "number" or v ~= v or v < 0 or v % 1 ~= 0 or v >= 2 ^ 53 then return nil end
  return json.integer(v) -- a body's 42.0 counts as 42
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local q = { math.floor(n / 262144) % 64, math.floor(n / 4096) % 64, math.floor(n / 64) % 64, n % 64 }
    local keep = c and 4 or (b and 3 or 2)
    for k = 1, 4 do out[#out + 1] = k <= keep and B64:sub(q[k] + 1, q[k] + 1) or "=" end
  end
  return table.concat(out)
end

-- The forms of the secret a provider may echo, lower-cased (matching ignores
-- case): the key itself, its hex, its percent-encodings, and its base64 and
-- base64url encodings at each of the 3 alignments it can have inside a longer
-- encoded text ("Basic " .. base64("user:" .. key)), minus the edge characters
-- that depend on the neighbouring bytes.
local function secret_forms(secret)
  local forms, seen = {}, {}
  local function add(f, min)
    f = f:lower()
    if #f >= (min or 8) and not seen[f] then
      seen[f] = true
      forms[#forms + 1] = f
    end
  end
  add(secret, 1)
  add((secret:gsub(".", function(ch) return ("%02x"):format(ch:byte()) end)))
  add((secret:gsub(".", function(ch) return ("%%%02x"):format(ch:byte()) end)))
  add((secret:gsub("[^%w%-%._~]", function(ch) return ("%%%02x"):format(ch:byte()) end)))
  for off = 0, 2 do
    local enc = base64(("\0"):rep(off) .. secret)
    local first = math.ceil(8 * off / 6) + 1
    local last = math.floor(8 * (off + #secret) / 6)
    local core_b64 = enc:sub(first, last)
    add(core_b64)
    add((core_b64:gsub("[+/]", { ["+"] = "-", ["/"] = "_" })))
    add((core_b64:gsub("/", "\\/"))) -- as a JSON encoder that escapes '/' writes it
  end
  return forms
end

-- A run of at least PART_RUN consecutive characters of the key is a leak too
-- (a key cut short by one character, or split in two across an answer): it
-- is found through the key's PART_STEP-long windows at every PART_STEP-th
-- offset (any run of 2 * PART_STEP - 1 characters holds one), then widened
-- as far as the text goes on matching the key. Shorter runs (the public
-- "sk-ant-api03-" prefix) stay.
local PART_RUN, PART_STEP = 16, 8

local function key_runs(low, key, ranges)
  if #key <= PART_RUN then return end
  for k = 1, #key - PART_STEP + 1, PART_STEP do
    local w, from = key:sub(k, k + PART_STEP - 1), 1
    while true do
      local a, b = low:find(w, from, true)
      if not a then break end
      local ka, kb = k, k + PART_STEP - 1
      while a > 1 and ka > 1 and low:byte(a - 1) == key:byte(ka - 1) do a, ka = a - 1, ka - 1 end
      while kb < #key and low:byte(b + 1) == key:byte(kb + 1) do b, kb = b + 1, kb + 1 end
      if b - a + 1 >= PART_RUN then ranges[#ranges + 1] = { a, b } end
      from = b + 1
    end
  end
end

-- Removes the secret, in any form secret_forms lists, and any run of
-- PART_RUN or more of its characters, from a text that leaves the provider
-- object. Case-insensitive: an upper-cased echo goes too.
local function scrubber(secret)
  if not secret or secret == "" then return function(s) return s end end
  local forms, key = secret_forms(secret), secret:lower()
  -- a text shorter than every form and than a run holds none of them
  local shortest = #key > PART_RUN and PART_RUN or math.huge
  for _, f in ipairs(forms) do shortest = math.min(shortest, #f) end
  return function(s)
    if type(s) ~= "string" or #s < shortest then return s end
    local low = s:lower()
    local ranges = {}
    for _, f in ipairs(forms) do
      local from = 1
      while true do
        local a, b = low:find(f, from, true)
        if not a then break end
        ranges[#ranges + 1] = { a, b }
        from = b + 1
      end
    end
    key_runs(low, key, ranges)
    if #ranges == 0 then return s end
    table.sort(ranges, function(x, y) return x[1] < y[1] end)
    local out, pos = {}, 1
    for _, r in ipairs(ranges) do
      if r[2] >= pos then
        if r[1] > pos then out[#out + 1] = s:sub(pos, r[1] - 1) end
        if r[1] >= pos then out[#out + 1] = "[REDACTED]" end
        pos = r[2] + 1
      end
    end
    out[#out + 1] = s:sub(pos)
    return table.concat(out)
  end
end

-- v with every string in it (keys too) scrubbed: the provider's own
-- documents kept as sent (filter verdicts, cost details).
local function scrub_deep(scrub, v, depth)
  if type(v) == "string" then return scrub(v) end
  if type(v) ~= "table" or v == json.null or depth > 64 then return v end
  local out = {}
  for k, x in pairs(v) do out[scrub_deep(scrub, k, depth + 1)] = scrub_deep(scrub, x, depth + 1) end
  return out
end

local function decode(body)
  local doc, err = json.decode(body) -- a lone \ud800 escape becomes U+FFFD (ga_jsondec.c)
  if type(doc) ~= "table" then return nil, err or "not a JSON object" end
  return doc
end

local function short(s, n)
  s = tostring(s or "")
  if #s > n then return s:sub(1, n) .. "..." end
  return s
end

-- The provider's own error message out of an error body, if it has one.
local function error_message(doc, body)
  if doc and type(doc.error) == "table" and type(doc.error.message) == "string" then return doc.error.message end
  if doc and type(doc.error) == "string" then return doc.error end
  return short(body, 200)
end

-- OpenAI-style usage -> normalized usage, nil | err, the billed cost (or
-- nil), and notes: what the normalization read or derived that the
-- normalized counts cannot say (token_metrics.calls[i] keeps them):
--   reasoning_tokens_derived = true  the reasoning count is the gap between
--     total_tokens and prompt + completion (Gemini's OpenAI endpoint leaves
--     thinking out of completion_tokens and reports no reasoning_tokens);
--     priced as output, as reasoning tokens are
--   reasoning_outside_completion = true  completion_tokens excluded the
--     reported reasoning_tokens (xAI: total = prompt + completion + reasoning)
--   cached_from = "prompt_cache_hit_tokens"  DeepSeek's own field gave the
--     cached count (no prompt_tokens_details.cached_tokens)
--   is_byok, cost_details  OpenRouter's, as sent
local function openai_usage(u)
  if type(u) ~= "table" then return nil, "usage is not an object" end
  local p, c = int(u.prompt_tokens), int(u.completion_tokens)
  if not p or not c then return nil, "usage.prompt_tokens/completion_tokens missing or not non-negative integers" end
  local pd = type(u.prompt_tokens_details) == "table" and u.prompt_tokens_details or {}
  local cd = type(u.completion_tokens_details) == "table" and u.completion_tokens_details or {}
  local total = int(u.total_tokens) or (p + c)
  if total < p + c then return nil, "usage.total_tokens is less than prompt_tokens + completion_tokens" end
  local notes = {}
  local reasoning = int(cd.reasoning_tokens) or 0
  local completion = c
  local gap = total - p - c
  if gap > 0 and reasoning == 0 then
    -- Gemini's OpenAI endpoint: thinking tokens are billed but left out of
    -- completion_tokens; they only show in total_tokens.
    reasoning = gap
    completion = c + reasoning
    notes.reasoning_tokens_derived = true
  elseif gap > 0 and gap == reasoning then
    -- xAI: completion_tokens excludes the reasoning_tokens it reports
    completion = c + reasoning
    notes.reasoning_outside_completion = true
  end
  local cached = int(pd.cached_tokens)
  if cached == nil and int(u.prompt_cache_hit_tokens) then
    cached = int(u.prompt_cache_hit_tokens) -- DeepSeek (its miss count is prompt_tokens - hits)
    notes.cached_from = "prompt_cache_hit_tokens"
  end
  cached = cached or 0
  local write = int(pd.cache_write_tokens) or 0
  if cached + write > p then return nil, "usage reports more cached tokens than prompt tokens" end
  if reasoning > completion then return nil, "usage reports more reasoning tokens than completion tokens" end
  if type(u.is_byok) == "boolean" then notes.is_byok = u.is_byok end
  if type(u.cost_details) == "table" then notes.cost_details = u.cost_details end
  return {
    prompt_tokens = p, completion_tokens = completion, total_tokens = total,
    cached_prompt_tokens = cached, cache_write_tokens = write, reasoning_tokens = reasoning,
  }, nil, type(u.cost) == "number" and u.cost >= 0 and u.cost or nil, next(notes) and notes or nil
end

-- Anthropic usage -> normalized usage (input_tokens excludes cache reads/writes).
-- A compaction response reports, at the top, only its last iteration; the
-- billed totals are the sums over usage.iterations[] (notes.iterations: how
-- many were summed).
local function anthropic_usage(u)
  if type(u) ~= "table" then return nil, "usage is not an object" end
  local parts, notes = { u }, nil
  if type(u.iterations) == "table" and #u.iterations > 0 then
    parts, notes = u.iterations, { iterations = #u.iterations }
  end
  local p, o, cr, cw = 0, 0, 0, 0
  for k, it in ipairs(parts) do
    if type(it) ~= "table" then return nil, "usage.iterations[" .. k .. "] is not an object" end
    local i, oo = int(it.input_tokens), int(it.output_tokens)
    if not i or not oo then return nil, "usage.input_tokens/output_tokens missing or not non-negative integers" end
    local r, w = int(it.cache_read_input_tokens) or 0, int(it.cache_creation_input_tokens) or 0
    p, o, cr, cw = p + i + r + w, o + oo, cr + r, cw + w
  end
  return {
    prompt_tokens = p, completion_tokens = o, total_tokens = p + o,
    cached_prompt_tokens = cr, cache_write_tokens = cw, reasoning_tokens = 0,
  }, nil, nil, notes
end

local function check_common(kind, opts)
  if type(opts) ~= "table" then
    error("bad argument #1 to '" .. kind .. "' (table expected, got " .. type(opts) .. ")", 3)
  end
  if type(opts.model) ~= "string" or opts.model == "" then
    error("bad argument #1 to '" .. kind .. "' (model: string expected, got " .. type(opts.model) .. ")", 3)
  end
  if opts.api_key ~= nil and type(opts.api_key) ~= "string" then
    error("bad argument #1 to '" .. kind .. "' (api_key: string expected)", 3)
  end
  local mrb = opts.max_request_bytes
  if mrb ~= nil and (type(mrb) ~= "number" or mrb < 1 or mrb % 1 ~= 0) then
    error("bad argument #1 to '" .. kind .. "' (max_request_bytes: positive integer expected)", 3)
  end
  if opts.stream_usage ~= nil and type(opts.stream_usage) ~= "boolean" then
    error("bad argument #1 to '" .. kind .. "' (stream_usage: boolean expected)", 3)
  end
end

-- The endpoint URL for a base URL: `base` ending in /vN (or any of
-- `versioned`) gets `tail`; a base that already ends in `tail` is taken as
-- the endpoint itself; any other base gets `prefix .. tail`.
local function endpoint(base, prefix, tail, versioned)
  if base:sub(-#tail) == tail then return base end
  if base:match("/v%d+$") then return base .. tail end
  for _, v in ipairs(versioned or {}) do
    if base:sub(-#v) == v then return base .. tail end
  end
  return base .. prefix .. tail
end

local function check_base_url(kind, url)
  if url ~= nil and (type(url) ~= "string" or not url:match("^https?://[^/?#%s]+[^?#%s]*$")) then
    error("bad argument #1 to '" .. kind .. "' (base_url: http(s) URL without query or spaces expected)", 4)
  end
end

local Provider = {}
Provider.__index = Provider
Provider.__tostring = function(self) return "genaudit.provider " .. self.name .. " (" .. self.model .. ")" end

-- Shared constructor: `spec` holds the wire-format functions; spec.url(base,
-- opts) gives the endpoint for the base URL (no trailing "/").
local function new_provider(name, opts, spec)
  local key = opts.api_key
  local scrub = scrubber(key)
  if not spec.full_url then check_base_url(name, opts.base_url) end
  local base = (opts.base_url or spec.default_url):gsub("/+$", "")
  local self = setmetatable({
    name = name, model = opts.model, base_url = base, url = spec.url(base, opts),
    -- whether the provider's API needs a key (ollama and vllm run without
    -- one), and whether this object has one: a replay checks before calling
    needs_key = not spec.keyless, has_key = type(key) == "string" and key ~= "",
    wire = spec.wire, timeout_ms = opts.timeout_ms, connect_timeout_ms = opts.connect_timeout_ms,
    retries = opts.retries, verify_tls = opts.verify_tls, max_response_bytes = opts.max_response_bytes,
    max_request_bytes = opts.max_request_bytes or M.MAX_REQUEST_BYTES,
    -- false: a streamed request does not ask for stream_options.include_usage
    -- (a server that refuses the field, e.g. an Azure api-version before 2024-09-01)
    stream_usage = opts.stream_usage,
  }, Provider)
  local extra_headers = opts.headers or {}
  -- headers are built on demand so the key is never stored on the object
  function self.headers()
    local h = { ["Content-Type"] = "application/json" }
    for k, v in pairs(spec.auth_headers(key)) do h[k] = v end
    for k, v in pairs(extra_headers) do h[k] = v end
    return h
  end
  self.scrub = scrub
  self.build_body = spec.build_body
  self.parse = spec.parse
  return self
end

-- The bytes of every string (keys included) in v, up to `limit`: the size a
-- request will have at least, known before anything is encoded. Stops early
-- past the limit and below 64 levels (the encoder refuses those anyway).
local function string_bytes(v, limit, depth)
  if type(v) == "string" then return #v end
  if type(v) ~= "table" or depth > 64 then return 0 end
  local n = 0
  for k, x in next, v do
    n = n + string_bytes(k, limit, depth + 1) + string_bytes(x, limit, depth + 1)
    if n > limit then return n end
  end
  return n
end

local function too_large(self, what)
  return nil, ("TOO_LARGE: the request %s exceeds max_request_bytes=%d"):format(what, self.max_request_bytes),
    "TOO_LARGE"
end

-- The path ("messages[2].content") of the first string in v that is not
-- well-formed UTF-8, or nil. JSON text cannot carry such bytes: the encoder
-- would send U+FFFD in their place, and the provider would then receive
-- something else than the stored prompt. (The path is built on the way
-- out, for the bad string only: a valid request costs no string.)
local function bad_utf8(v, depth)
  if type(v) == "string" then return not core.utf8_valid(v) and "" or nil end
  if type(v) ~= "table" or depth > 64 then return nil end
  for k, x in next, v do
    if type(k) == "string" and not core.utf8_valid(k) then return " (a key)" end
    local bad = bad_utf8(x, depth + 1)
    if bad then return (type(k) == "number" and ("[" .. k .. "]") or ("." .. tostring(k))) .. bad end
  end
  return nil
end
local function invalid_utf8(v, path, depth)
  local bad = bad_utf8(v, depth)
  return bad and path .. bad or nil
end

-- provider:request(messages, params [, { stream = true }]) -> { url, headers,
-- body } | nil, err, code
-- messages: { {role="system"|"user"|"assistant", content=string}, ... }
-- stream: the body asks for a streamed answer ("stream": true) and, on the
-- OpenAI-compatible wire, for its usage (stream_options.include_usage, the
-- caller's other stream_options kept).
-- A request whose strings add up to more than max_request_bytes is refused
-- before it is encoded, and so is one whose encoding (escapes added) does:
-- nil, "TOO_LARGE: ...", "TOO_LARGE". Parameters JSON cannot hold (NaN, a
-- function) or a string that is not UTF-8 give nil, "INVALID: ...", "INVALID":
-- nothing is sent.
function Provider:request(messages, params, opts)
  params = params or {}
  if opts and opts.stream then
    local p = {}
    for k, v in pairs(params) do p[k] = v end
    p.stream = true
    if self.wire == "openai" and self.stream_usage ~= false then
      local so = { include_usage = true }
      if type(params.stream_options) == "table" then
        for k, v in pairs(params.stream_options) do if k ~= "include_usage" then so[k] = v end end
      end
      p.stream_options = so
    end
    params = p
  end
  local limit = self.max_request_bytes
  if string_bytes(messages, limit, 0) + string_bytes(params, limit, 0) > limit then
    return too_large(self, "text")
  end
  local bad = invalid_utf8(messages, "messages", 0) or invalid_utf8(params, "params", 0)
  if bad then
    return nil, "INVALID: " .. bad .. " is not valid UTF-8; a JSON request cannot carry it unchanged", "INVALID"
  end
  local body, err = self.build_body(self, messages, params)
  if not body then
    return nil, "INVALID: the request cannot be sent as JSON: " .. tostring(err):gsub("^INVALID: ", ""), "INVALID"
  end
  if #body > limit then return too_large(self, "body") end
  return { url = self.url, headers = self.headers(), body = body }
end

-- provider:parse_response(status, body) -> { content, model_identifier,
-- usage, usage_missing, provider_cost, usage_notes, finish_reason,
-- response_id, tool_calls, refusal, prompt_filter_results,
-- content_filter_results } | nil, err, code, answer
-- tool_calls: OpenAI-style { id, type, name, arguments (the string as sent) },
-- Anthropic { id, type = "tool_use", name, arguments (the bytes of `input`
-- exactly as the body spelled them) }; a
-- tool-call answer's content is its text, "" when it had none (content null).
-- finish_reason and response_id are the body's own strings, as sent
-- (OpenAI-compatible: choices[1].finish_reason and id; Anthropic:
-- stop_reason and id), nil when the body has none (or not a string): never
-- guessed. A body with no usage at all (no `usage` key, or JSON null; for
-- OpenAI-compatible bodies none under x_groq either) is still an answer:
-- usage is then nil and usage_missing = true (genaudit.client counts it
-- locally or records it as of unknown usage). A usage that is there but
-- does not make one (negative, fractional, a total below the sum, ...) is a
-- BAD_RESPONSE. answer: for a 2xx JSON body that could be read but lacks
-- usable content or has such a usage, what it held ({ content,
-- model_identifier, finish_reason, response_id }), so a failed snapshot
-- keeps it.
-- Every string taken from the body is scrubbed of the API key.
function Provider:parse_response(status, body)
  local doc = decode(body)
  if status < 200 or status >= 300 then
    local code = status == 429 and "RATE_LIMITED" or (status >= 500 and "PROVIDER_ERROR" or "PROVIDER_REJECTED")
    -- scrub the whole body before cutting it short: a key straddling the cut
    -- would otherwise survive in part
    local msg = error_message(doc, self.scrub(body))
    return nil, ("%s: provider answered HTTP %d: %s"):format(code, status, self.scrub(msg)), code
  end
  if not doc then
    return nil, "BAD_RESPONSE: provider body is not JSON: " .. short(self.scrub(body), 120), "BAD_RESPONSE"
  end
  local res, err, answer = self.parse(doc, body)
  if not res then
    if answer then
      answer = { content = self.scrub(answer.content), model_identifier = self.scrub(answer.model_identifier),
                 finish_reason = self.scrub(answer.finish_reason), response_id = self.scrub(answer.response_id) }
    end
    return nil, "BAD_RESPONSE: " .. self.scrub(err), "BAD_RESPONSE", answer
  end
  res.content, res.model_identifier = self.scrub(res.content), self.scrub(res.model_identifier)
  res.finish_reason, res.response_id = self.scrub(res.finish_reason), self.scrub(res.response_id)
  res.refusal = self.scrub(res.refusal)
  for _, tc in ipairs(res.tool_calls or {}) do
    tc.id, tc.name, tc.arguments = self.scrub(tc.id), self.scrub(tc.name), self.scrub(tc.arguments)
    tc.type = self.scrub(tc.type)
  end
  res.prompt_filter_results = scrub_deep(self.scrub, res.prompt_filter_results, 0)
  res.content_filter_results = scrub_deep(self.scrub, res.content_filter_results, 0)
  res.usage_notes = scrub_deep(self.scrub, res.usage_notes, 0)
  return res
end

-- A string field of a body, or nil: a finish reason or id that is not a
-- string (a number, an object) is not one.
local function str(v) return type(v) == "string" and v or nil end

-- A body's usage the provider did not give: no such key, or JSON null. Any
-- other value is a usage to be read (and refused when it is not one).
local function absent(v) return v == nil or v == json.null end

-- ---- OpenAI-compatible chat completions ----
local function openai_body(self, messages, params)
  local req = { model = self.model, messages = messages }
  for k, v in pairs(params) do req[k] = v end
  return core.json_encode(req)
end

-- The tool calls of an OpenAI-style message: { id, type, name, arguments }
-- each, arguments the string exactly as sent (JSON text, not decoded), or
-- nil when there are none.
local function openai_tool_calls(msg)
  if type(msg.tool_calls) ~= "table" or #msg.tool_calls == 0 then return nil end
  local out = {}
  for i, tc in ipairs(msg.tool_calls) do
    local fn = type(tc) == "table" and type(tc["function"]) == "table" and tc["function"] or {}
    out[i] = { id = type(tc) == "table" and str(tc.id) or nil, type = type(tc) == "table" and str(tc.type) or nil,
               name = str(fn.name), arguments = str(fn.arguments) }
  end
  return out
end

local function openai_parse(doc)
  local choice = type(doc.choices) == "table" and doc.choices[1]
  local msg = type(choice) == "table" and choice.message
  local model = str(doc.model)
  local finish = type(choice) == "table" and str(choice.finish_reason) or nil
  local tool_calls = type(msg) == "table" and openai_tool_calls(msg) or nil
  local refusal = type(msg) == "table" and str(msg.refusal) or nil
  -- an answer is text, tool calls (content null or absent) or a refusal
  if type(msg) ~= "table" or (type(msg.content) ~= "string" and not tool_calls and not refusal) then
    return nil, "response has no choices[1].message.content",
      { model_identifier = model, finish_reason = finish, response_id = str(doc.id) }
  end
  local content = type(msg.content) == "string" and msg.content or ""
  -- Groq sends usage at the top, or only under x_groq.usage: one of them,
  -- never both added up
  local u = doc.usage
  if absent(u) and type(doc.x_groq) == "table" then u = doc.x_groq.usage end
  local usage, err, cost, notes
  if not absent(u) then -- present: it must be a usage (else the provider lies, not omits)
    usage, err, cost, notes = openai_usage(u)
    if not usage then
      return nil, err, { content = content, model_identifier = model, finish_reason = finish,
                         response_id = str(doc.id) }
    end
    if u ~= doc.usage then
      notes = notes or {}
      notes.usage_from = "x_groq.usage"
    end
  end
  return {
    content = content, model_identifier = model, tool_calls = tool_calls, refusal = refusal,
    usage = usage, usage_missing = not usage or nil,
    provider_cost = cost, usage_notes = notes, finish_reason = finish, response_id = str(doc.id),
    -- Azure's content-filter verdicts, as sent
    prompt_filter_results = type(doc.prompt_filter_results) == "table" and doc.prompt_filter_results or nil,
    content_filter_results = type(choice.content_filter_results) == "table" and choice.content_filter_results or nil,
  }
end

local function openai_url(base) return endpoint(base, "/v1", "/chat/completions") end

local openai_spec = {
  wire = "openai", default_url = "https://api.openai.com", url = openai_url,
  auth_headers = function(key) return key and key ~= "" and { Authorization = "Bearer " .. key } or {} end,
  build_body = openai_body, parse = openai_parse,
}

function M.openai(opts)
  check_common("openai", opts)
  return new_provider("openai", opts, openai_spec)
end

local function derive(base, overrides)
  local t = {}
  for k, v in pairs(base) do t[k] = v end
  for k, v in pairs(overrides) do t[k] = v end
  return t
end

-- OpenRouter: the OpenAI wire format; the slug it served comes back as `model`,
-- and usage.cost (asked for with usage.include) is the billed cost.
local openrouter_spec = derive(openai_spec, {
  default_url = "https://openrouter.ai/api",
  build_body = function(self, messages, params)
    local p = { usage = { include = true } }
    for k, v in pairs(params) do p[k] = v end
    return openai_body(self, messages, p)
  end,
})
local ollama_spec = derive(openai_spec, { default_url = "http://127.0.0.1:11434", keyless = true })
local vllm_spec = derive(openai_spec, { default_url = "http://127.0.0.1:8000", keyless = true })

function M.openrouter(opts)
  check_common("openrouter", opts)
  return new_provider("openrouter", opts, openrouter_spec)
end

function M.ollama(opts)
  check_common("ollama", opts)
  return new_provider("ollama", opts, ollama_spec)
end

function M.vllm(opts)
  check_common("vllm", opts)
  return new_provider("vllm", opts, vllm_spec)
end

-- Gemini through its OpenAI-compatible endpoint (Bearer key):
-- https://generativelanguage.googleapis.com/v1beta/openai/chat/completions.
-- Its thinking tokens show only in total_tokens (see openai_usage).
local gemini_spec = derive(openai_spec, {
  default_url = "https://generativelanguage.googleapis.com/v1beta/openai",
  url = function(base)
    if base:match("/v%d+beta$") then return base .. "/openai/chat/completions" end
    return endpoint(base, "/v1beta/openai", "/chat/completions", { "/openai" })
  end,
})

function M.gemini(opts)
  check_common("gemini", opts)
  return new_provider("gemini", opts, gemini_spec)
end

-- Azure OpenAI: a deployment URL with an api-version, and the key in an
-- `api-key` header. opts: resource + deployment (+ api_version), or base_url
-- (https://R.openai.azure.com, …/openai/deployments/D, the full
-- …/chat/completions?api-version=V URL, or the v1 API's …/openai/v1);
-- model defaults to the deployment, and the deployment to model.
local AZURE_API_VERSION = "2024-10-21"
local NAME = "^[%w][%w._-]*$"

local function azure_url(base, opts)
  local api_version = opts.api_version or AZURE_API_VERSION
  local u = base:match("^(.-)%?") or base
  if u:match("/openai/v1$") then return u .. "/chat/completions" end
  if u:match("/openai/v1/chat/completions$") then return u end
  local v = base:match("[?&]api%-version=([^&]+)") or api_version
  if not u:match("/openai/deployments/[^/]+") then
    u = u .. "/openai/deployments/" .. opts.deployment
  end
  if not u:match("/chat/completions$") then u = u .. "/chat/completions" end
  return u .. "?api-version=" .. v
end

local azure_spec = derive(openai_spec, {
  full_url = true, url = azure_url,
  auth_headers = function(key) return key and key ~= "" and { ["api-key"] = key } or {} end,
})

function M.azure(opts)
  if type(opts) ~= "table" then
    error("bad argument #1 to 'azure' (table expected, got " .. type(opts) .. ")", 2)
  end
  local function bad(what) error("bad argument #1 to 'azure' (" .. what .. ")", 3) end
  for _, k in ipairs({ "resource", "deployment" }) do
    if opts[k] ~= nil and (type(opts[k]) ~= "string" or not opts[k]:match(NAME)) then
      bad(k .. ": a resource or deployment name expected")
    end
  end
  if opts.api_version ~= nil and (type(opts.api_version) ~= "string" or not opts.api_version:match("^[%w.-]+$")) then
    bad("api_version: a version such as " .. AZURE_API_VERSION .. " expected")
  end
  local base = opts.base_url
  if base ~= nil and (type(base) ~= "string" or not base:match("^https?://[^/?#%s]+[^#%s]*$")) then
    bad("base_url: http(s) URL expected")
  end
  if base == nil then
    if not opts.resource then bad("resource or base_url required") end
    base = "https://" .. opts.resource .. ".openai.azure.com"
  end
  local v1 = (base:match("^(.-)%?") or base):match("/openai/v1[/]*$") or base:match("/openai/v1/chat/completions")
  local deployment = opts.deployment or base:match("/openai/deployments/([^/?]+)") or (not v1 and opts.model) or nil
  if deployment ~= nil and (type(deployment) ~= "string" or not deployment:match(NAME)) then
    bad("deployment: a deployment name expected")
  end
  if not deployment and not v1 then bad("deployment or model required (or a base_url naming the deployment)") end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.base_url, o.deployment, o.model = base, deployment, opts.model or deployment
  check_common("azure", o)
  return new_provider("azure", o, azure_spec)
end

-- ---- Anthropic Messages ----
local anthropic_spec = {
  wire = "anthropic", default_url = "https://api.anthropic.com",
  url = function(base) return endpoint(base, "/v1", "/messages") end,
  auth_headers = function(key)
    local h = { ["anthropic-version"] = "2023-06-01" }
    if key and key ~= "" then h["x-api-key"] = key end
    return h
  end,
  build_body = function(self, messages, params)
    local req = { model = self.model, messages = {}, max_tokens = 1024 }
    for _, m in ipairs(messages) do
      if m.role == "system" then req.system = m.content else req.messages[#req.messages + 1] = m end
    end
    for k, v in pairs(params) do req[k] = v end
    if req.seed ~= nil then req.seed = nil end -- not part of the Messages API
    return core.json_encode(req)
  end,
  parse = function(doc, body)
    local model, finish, id = str(doc.model), str(doc.stop_reason), str(doc.id)
    local bare = { model_identifier = model, finish_reason = finish, response_id = id }
    if type(doc.content) ~= "table" then return nil, "response has no content", bare end
    local parts, tool_calls = {}, {}
    local raw -- the body again, content[i].input kept as its own bytes
    for k, block in ipairs(doc.content) do
      if type(block) == "table" and block.type == "text" and type(block.text) == "string" then
        parts[#parts + 1] = block.text
      elseif type(block) == "table" and block.type == "tool_use" then
        -- input is a JSON object in the body: its bytes are kept as sent
        -- (a decoded table would lose key order, number spelling and {})
        raw = raw or json.decode(body, 3)
        local r = type(raw) == "table" and type(raw.content) == "table" and raw.content[k]
        local args = type(r) == "table" and r.input
        if type(args) ~= "userdata" then args = block.input ~= nil and json.encode(block.input) or nil end
        tool_calls[#tool_calls + 1] = { id = str(block.id), type = "tool_use", name = str(block.name),
                                        arguments = args ~= nil and tostring(args) or nil }
      end
    end
    if #parts == 0 and #tool_calls == 0 then return nil, "response has no text content", bare end
    local usage, err, _, notes
    if not absent(doc.usage) then -- present: it must be a usage
      usage, err, _, notes = anthropic_usage(doc.usage)
      if not usage then
        return nil, err, { content = table.concat(parts), model_identifier = model, finish_reason = finish,
                           response_id = id }
      end
    end
    return {
      content = table.concat(parts), model_identifier = model, tool_calls = #tool_calls > 0 and tool_calls or nil,
      usage = usage, usage_missing = not usage or nil, usage_notes = notes, finish_reason = finish, response_id = id,
    }
  end,
}

function M.anthropic(opts)
  check_common("anthropic", opts)
  return new_provider("anthropic", opts, anthropic_spec)
end

-- exposed for specs and for hosts with their own transport
M.normalize = { openai = openai_usage, anthropic = anthropic_usage }

return M
