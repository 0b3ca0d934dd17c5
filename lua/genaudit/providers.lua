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
-- every error text is scrubbed of it.
local cjson = require("cjson.safe")

local M = {}

local tointeger = rawget(math, "tointeger") -- 5.4: cjson decodes 42 as 42.0

local function int(v)
  if type(v) ~= "number" or v ~= v or v < 0 or v % 1 ~= 0 or v >= 2 ^ 53 then return nil end
  return tointeger and tointeger(v) or v
end

-- Removes the secret from any text that leaves the provider object.
local function scrubber(secret)
  if not secret or secret == "" then return function(s) return s end end
  local pattern = secret:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")
  return function(s)
    if type(s) ~= "string" then return s end
    return (s:gsub(pattern, "[REDACTED]"))
  end
end

local function decode(body)
  local doc, err = cjson.decode(body)
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

-- OpenAI-style usage -> normalized usage.
local function openai_usage(u)
  if type(u) ~= "table" then return nil, "response has no usage" end
  local p, c = int(u.prompt_tokens), int(u.completion_tokens)
  if not p or not c then return nil, "usage.prompt_tokens/completion_tokens missing or not non-negative integers" end
  local pd = type(u.prompt_tokens_details) == "table" and u.prompt_tokens_details or {}
  local cd = type(u.completion_tokens_details) == "table" and u.completion_tokens_details or {}
  local total = int(u.total_tokens) or (p + c)
  local reasoning = int(cd.reasoning_tokens) or 0
  local completion = c
  if total > p + c and reasoning == 0 then
    -- Gemini's OpenAI endpoint: thinking tokens are billed but left out of
    -- completion_tokens; they only show in total_tokens.
    reasoning = total - p - c
    completion = c + reasoning
  end
  local cached, write = int(pd.cached_tokens) or 0, int(pd.cache_write_tokens) or 0
  if cached + write > p then return nil, "usage reports more cached tokens than prompt tokens" end
  if reasoning > completion then return nil, "usage reports more reasoning tokens than completion tokens" end
  return {
    prompt_tokens = p, completion_tokens = completion, total_tokens = total,
    cached_prompt_tokens = cached, cache_write_tokens = write, reasoning_tokens = reasoning,
  }, nil, type(u.cost) == "number" and u.cost >= 0 and u.cost or nil
end

-- Anthropic usage -> normalized usage (input_tokens excludes cache reads/writes).
local function anthropic_usage(u)
  if type(u) ~= "table" then return nil, "response has no usage" end
  local i, o = int(u.input_tokens), int(u.output_tokens)
  if not i or not o then return nil, "usage.input_tokens/output_tokens missing or not non-negative integers" end
  local cr, cw = int(u.cache_read_input_tokens) or 0, int(u.cache_creation_input_tokens) or 0
  local p = i + cr + cw
  return {
    prompt_tokens = p, completion_tokens = o, total_tokens = p + o,
    cached_prompt_tokens = cr, cache_write_tokens = cw, reasoning_tokens = 0,
  }
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
    wire = spec.wire, timeout_ms = opts.timeout_ms, connect_timeout_ms = opts.connect_timeout_ms,
    retries = opts.retries, verify_tls = opts.verify_tls, max_response_bytes = opts.max_response_bytes,
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

-- provider:request(messages, params) -> { url, headers, body }
-- messages: { {role="system"|"user"|"assistant", content=string}, ... }
function Provider:request(messages, params)
  local body = self.build_body(self, messages, params or {})
  return { url = self.url, headers = self.headers(), body = body }
end

-- provider:parse_response(status, body) -> { content, model_identifier,
-- usage, provider_cost, finish_reason } | nil, err, code
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
  local res, err = self.parse(doc)
  if not res then return nil, "BAD_RESPONSE: " .. self.scrub(err), "BAD_RESPONSE" end
  return res
end

-- ---- OpenAI-compatible chat completions ----
local function openai_body(self, messages, params)
  local req = { model = self.model, messages = messages }
  for k, v in pairs(params) do req[k] = v end
  return assert(cjson.encode(req))
end

local function openai_parse(doc)
  local choice = type(doc.choices) == "table" and doc.choices[1]
  local msg = type(choice) == "table" and choice.message
  if type(msg) ~= "table" or type(msg.content) ~= "string" then
    return nil, "response has no choices[1].message.content"
  end
  local usage, err, cost = openai_usage(doc.usage)
  if not usage then return nil, err end
  return {
    content = msg.content, model_identifier = type(doc.model) == "string" and doc.model or nil,
    usage = usage, provider_cost = cost, finish_reason = choice.finish_reason,
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
local ollama_spec = derive(openai_spec, { default_url = "http://127.0.0.1:11434" })
local vllm_spec = derive(openai_spec, { default_url = "http://127.0.0.1:8000" })

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
    return assert(cjson.encode(req))
  end,
  parse = function(doc)
    if type(doc.content) ~= "table" then return nil, "response has no content" end
    local parts = {}
    for _, block in ipairs(doc.content) do
      if type(block) == "table" and block.type == "text" and type(block.text) == "string" then
        parts[#parts + 1] = block.text
      end
    end
    if #parts == 0 then return nil, "response has no text content" end
    local usage, err = anthropic_usage(doc.usage)
    if not usage then return nil, err end
    return {
      content = table.concat(parts), model_identifier = type(doc.model) == "string" and doc.model or nil,
      usage = usage, finish_reason = doc.stop_reason,
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
