-- genaudit.otel — OpenTelemetry GenAI spans for each generation, sent as
-- OTLP/HTTP JSON. Owns: the configuration (options over the standard OTEL_*
-- environment variables), W3C traceparent parsing, and the encoding of one
-- generation (its snapshot row and run) into spans: one `chat {model}` span
-- (kind CLIENT) for the generation, a child span per model call (the initial
-- one and each repair), attributes by the GenAI semantic conventions.
-- Sending is a sink's: outside nginx genaudit.core's otlp_exporter (a C
-- thread with a bounded queue, retries, backoff); inside nginx
-- genaudit.openresty's timer + cosocket sink. Neither runs on the request's
-- path: export() only encodes and queues, and never fails a generation.
-- See README "OpenTelemetry export".
local core = require("genaudit.core")
local json = require("genaudit.json")

local M = {}

M.SCOPE_VERSION = "0.1.0"

-- genaudit provider names -> gen_ai.provider.name well-known values; the
-- others (openrouter, ollama, vllm) are reported as they are named
M.PROVIDER_NAMES = { openai = "openai", anthropic = "anthropic", gemini = "gcp.gemini", azure = "azure.ai.openai" }

local SPAN_KIND_CLIENT = 3
local STATUS_ERROR = 2

local function truthy_env(v)
  return type(v) == "string" and (v:lower() == "true" or v == "1")
end

local function pct_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- "k1=v1,k2=v2" (OTEL_EXPORTER_OTLP_HEADERS; values percent-decoded) -> table
function M.parse_headers(s)
  local out = {}
  for pair in tostring(s or ""):gmatch("[^,]+") do
    local k, v = pair:match("^%s*([^=]-)%s*=%s*(.-)%s*$")
    if k and k ~= "" then out[pct_decode(k)] = pct_decode(v) end
  end
  return out
end

-- otel.config(opts [, getenv]) -> config | nil (export off: no endpoint).
-- opts = { endpoint = base URL ("/v1/traces" is appended), traces_endpoint =
-- full URL, headers = { name = value }, service_name, capture_content = bool,
-- queue, batch, timeout_ms, retries, backoff_ms, max_backoff_ms, shutdown_ms,
-- sink = object with push(items, n), stats(), flush(ms), close() }.
-- Unset options come from OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
-- OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS, OTEL_SERVICE_NAME,
-- OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT. opts = false: off.
-- Raises on a bad option (programmer misuse).
function M.config(opts, getenv)
  if opts == false then return nil end
  getenv = getenv or os.getenv
  if opts ~= nil and type(opts) ~= "table" then
    error("bad option 'otel' (table or false expected, got " .. type(opts) .. ")", 3)
  end
  opts = opts or {}
  for _, k in ipairs({ "endpoint", "traces_endpoint", "service_name" }) do
    if opts[k] ~= nil and type(opts[k]) ~= "string" then
      error("bad option 'otel." .. k .. "' (string expected)", 3)
    end
  end
  if opts.headers ~= nil and type(opts.headers) ~= "table" then
    error("bad option 'otel.headers' (table expected)", 3)
  end
  local url = opts.traces_endpoint
  if not url and opts.endpoint then url = opts.endpoint:gsub("/+$", "") .. "/v1/traces" end
  if not url and not opts.sink then
    url = getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not url or url == "" then
      local base = getenv("OTEL_EXPORTER_OTLP_ENDPOINT")
      url = base and base ~= "" and (base:gsub("/+$", "") .. "/v1/traces") or nil
    end
  end
  if not url and not opts.sink then return nil end
  if url and not url:match("^https?://[^/?#]") then error("bad option 'otel.endpoint' (http(s) URL expected)", 3) end
  local capture = opts.capture_content
  if capture == nil then capture = truthy_env(getenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")) end
  local service = opts.service_name or getenv("OTEL_SERVICE_NAME")
  return {
    url = url, headers = opts.headers or M.parse_headers(getenv("OTEL_EXPORTER_OTLP_HEADERS")),
    service_name = (service and service ~= "") and service or "genaudit",
    capture_content = capture == true, sink = opts.sink,
    queue = opts.queue, batch = opts.batch, timeout_ms = opts.timeout_ms, retries = opts.retries,
    backoff_ms = opts.backoff_ms, max_backoff_ms = opts.max_backoff_ms, shutdown_ms = opts.shutdown_ms,
  }
end

-- otel.parse_traceparent(s) -> trace_id, parent_span_id, flags (hex
-- strings, lowercase) | nil when s is not a valid W3C traceparent (version
-- 00 exactly as specified; a later version is read by its first four fields;
-- all-zero ids and version ff are invalid).
function M.parse_traceparent(s)
  if type(s) ~= "string" then return nil end
  local ver, tid, pid, flags, rest = s:match("^(%x%x)%-(%x+)%-(%x+)%-(%x%x)(.*)$")
  if not ver or #tid ~= 32 or #pid ~= 16 then return nil end
  if s:find("%u") then return nil end -- the header is lowercase hex only
  if ver == "ff" or (ver == "00" and rest ~= "") or (ver ~= "00" and rest ~= "" and rest:sub(1, 1) ~= "-") then
    return nil
  end
  if tid == string.rep("0", 32) or pid == string.rep("0", 16) then return nil end
  return tid, pid, flags
end

-- ---------------------------------------------------------------- encoding

-- Appends { key, value = AnyValue } for v (nil/null: nothing). Integral
-- numbers are intValue (a decimal string, as the OTLP JSON mapping has
-- int64), unless as_double: the attribute's type stays double (temperature
-- 1 is 1.0).
local function attr(list, key, v, as_double)
  if v == nil or v == json.null then return end
  local t = type(v)
  local value
  if t == "string" then value = { stringValue = v }
  elseif t == "boolean" then value = { boolValue = v }
  elseif t == "number" then
    if not as_double and v % 1 == 0 and v > -2 ^ 53 and v < 2 ^ 53 then value = { intValue = string.format("%d", v) }
    elseif v == v and v ~= math.huge and v ~= -math.huge then value = { doubleValue = v }
    else return end
  elseif t == "table" then -- an array of strings
    local vals = {}
    for i, s in ipairs(v) do vals[i] = { stringValue = tostring(s) } end
    if #vals == 0 then return end
    value = { arrayValue = { values = vals } }
  else
    return
  end
  list[#list + 1] = { key = key, value = value }
end

local function count(v)
  if type(v) == "number" and v >= 0 and v % 1 == 0 then return v end
  return nil
end

local function str(v) return type(v) == "string" and v or nil end

-- the usage attributes of a token_metrics document (or one of its calls)
local function usage_attrs(a, u)
  if type(u) ~= "table" then return end
  attr(a, "gen_ai.usage.input_tokens", count(u.prompt_tokens))
  attr(a, "gen_ai.usage.output_tokens", count(u.completion_tokens))
  attr(a, "gen_ai.usage.cache_read.input_tokens", count(u.cached_prompt_tokens))
  attr(a, "gen_ai.usage.cache_creation.input_tokens", count(u.cache_write_tokens))
  attr(a, "gen_ai.usage.reasoning.output_tokens", count(u.reasoning_tokens))
end

local function request_attrs(a, params)
  if type(params) ~= "table" then return end
  local doubles = { temperature = "gen_ai.request.temperature", top_p = "gen_ai.request.top_p",
                    frequency_penalty = "gen_ai.request.frequency_penalty",
                    presence_penalty = "gen_ai.request.presence_penalty" }
  local ints = { max_tokens = "gen_ai.request.max_tokens", seed = "gen_ai.request.seed" }
  for k, name in pairs(doubles) do
    if type(params[k]) == "number" then attr(a, name, params[k], true) end
  end
  for k, name in pairs(ints) do
    if type(params[k]) == "number" and params[k] % 1 == 0 then attr(a, name, params[k]) end
  end
end

-- The error.type of a failed call: its last try's code, else its HTTP status.
local function call_error(entry)
  local tries = type(entry.tries) == "table" and entry.tries or {}
  local last = tries[#tries]
  if type(entry.status) == "number" and entry.status >= 200 and entry.status < 300 and not entry.stream_broken then
    return nil
  end
  if last and type(last.code) == "string" then return last.code end
  if type(entry.status) == "number" then return tostring(entry.status) end
  return "_OTHER"
end

local function text_part(role, text, finish)
  return { role = role, parts = { { type = "text", content = text } }, finish_reason = finish }
end

local function new_span(trace_id, span_id, parent, name, start_ns, end_ns, attrs)
  return { traceId = trace_id, spanId = span_id, parentSpanId = parent, name = name, kind = SPAN_KIND_CLIENT,
           startTimeUnixNano = start_ns, endTimeUnixNano = end_ns, attributes = attrs }
end

-- otel.encode(g) -> items (span objects of OTLP JSON joined by ","), nspans
-- | nil, err. g = { row (the snapshot row as persisted), snapshot_id,
-- run (genaudit.dto.Run: start_ns, call_ns), provider, end_ns, error_code,
-- trace_id, parent_span_id, capture_content }.
function M.encode(g)
  local row, run = g.row, g.run
  local perf = type(row.performance) == "table" and row.performance or {}
  local tm = type(row.token_usage) == "table" and row.token_usage or {}
  local calls = type(perf.calls) == "table" and perf.calls or {}
  local tcalls = type(tm.calls) == "table" and tm.calls or {}
  local provider_name = M.PROVIDER_NAMES[g.provider.name] or g.provider.name
  local requested = g.provider.model
  local gen_id = core.random_hex(8)
  if not gen_id then return nil, "RANDOM: no span id" end
  local spans = {}

  local a = {}
  attr(a, "gen_ai.operation.name", "chat")
  attr(a, "gen_ai.provider.name", provider_name)
  attr(a, "gen_ai.request.model", requested)
  attr(a, "gen_ai.response.model", str(perf.model_identifier))
  local last = calls[#calls]
  if last then
    attr(a, "gen_ai.response.id", str(last.response_id))
    if str(last.finish_reason) then attr(a, "gen_ai.response.finish_reasons", { last.finish_reason }) end
  end
  usage_attrs(a, tm)
  request_attrs(a, row.request_params)
  attr(a, "gen_ai.prompt.name", str(row.template_id))
  attr(a, "gen_ai.prompt.version", str(row.template_version))
  attr(a, "genaudit.snapshot.id", g.snapshot_id)
  attr(a, "genaudit.status", row.status)
  attr(a, "genaudit.org_id", row.org_id)
  attr(a, "genaudit.platform", str(row.platform))
  local ri = type(row.repair_info) == "table" and row.repair_info or {}
  attr(a, "genaudit.repair.count", count(ri.repair_count))
  attr(a, "genaudit.validation.score", type(ri.final_validation_score) == "number" and ri.final_validation_score or nil,
       true)
  if g.error_code then attr(a, "error.type", g.error_code) end
  if g.capture_content then
    attr(a, "gen_ai.system_instructions", json.encode({ { type = "text", content = row.final_system_prompt or "" } }))
    attr(a, "gen_ai.input.messages", json.encode({ text_part("user", row.final_user_prompt or "") }))
    if type(row.content) == "string" then
      attr(a, "gen_ai.output.messages", json.encode({ text_part("assistant", row.content,
        last and str(last.finish_reason) or nil) }))
    end
  end
  local gen = new_span(g.trace_id, gen_id, g.parent_span_id, "chat " .. requested, run.start_ns, g.end_ns, a)
  if g.error_code then gen.status = { code = STATUS_ERROR, message = str(row.error) } end
  spans[1] = gen

  for i, entry in ipairs(calls) do
    local t = run.call_ns and run.call_ns[i]
    if t then
      local tc = type(tcalls[i]) == "table" and tcalls[i] or {}
      local ca = {}
      attr(ca, "gen_ai.operation.name", "chat")
      attr(ca, "gen_ai.provider.name", provider_name)
      attr(ca, "gen_ai.request.model", requested)
      attr(ca, "gen_ai.response.model", str(tc.served_model))
      attr(ca, "gen_ai.response.id", str(entry.response_id))
      if str(entry.finish_reason) then attr(ca, "gen_ai.response.finish_reasons", { entry.finish_reason }) end
      usage_attrs(ca, tc)
      request_attrs(ca, row.request_params)
      attr(ca, "genaudit.call.kind", str(entry.kind))
      attr(ca, "genaudit.call.attempts", count(entry.attempts))
      attr(ca, "http.response.status_code", count(entry.status))
      local et = call_error(entry)
      attr(ca, "error.type", et)
      local id = core.random_hex(8)
      if not id then return nil, "RANDOM: no span id" end
      local s = new_span(g.trace_id, id, gen_id, "chat " .. requested, t[1], t[2], ca)
      if et then s.status = { code = STATUS_ERROR } end
      spans[#spans + 1] = s
    end
  end
  local parts = {}
  for i, s in ipairs(spans) do
    local text, err = json.encode(s)
    if not text then return nil, err end
    parts[i] = text
  end
  return table.concat(parts, ","), #spans
end

-- The request body around the items: resource and scope.
function M.envelope(cfg)
  local resource = { attributes = {} }
  attr(resource.attributes, "service.name", cfg.service_name)
  attr(resource.attributes, "telemetry.sdk.name", "genaudit")
  attr(resource.attributes, "telemetry.sdk.language", "lua")
  attr(resource.attributes, "telemetry.sdk.version", M.SCOPE_VERSION)
  local scope = { name = "genaudit", version = M.SCOPE_VERSION }
  return '{"resourceSpans":[{"resource":' .. assert(json.encode(resource)) .. ',"scopeSpans":[{"scope":'
    .. assert(json.encode(scope)) .. ',"spans":[', "]}]}]}"
end

-- ---------------------------------------------------------------- tracer

local Tracer = {}
Tracer.__index = Tracer

-- otel.new(cfg) -> tracer | nil, err, code (cfg from otel.config). The
-- sink: cfg.sink, else a genaudit.core otlp_exporter for cfg.url.
function M.new(cfg)
  local prefix, suffix = M.envelope(cfg)
  local sink = cfg.sink
  if not sink then
    local err, code
    sink, err, code = core.otlp_exporter{
      url = cfg.url, headers = cfg.headers, prefix = prefix, suffix = suffix, queue = cfg.queue, batch = cfg.batch,
      timeout_ms = cfg.timeout_ms, retries = cfg.retries, backoff_ms = cfg.backoff_ms,
      max_backoff_ms = cfg.max_backoff_ms, shutdown_ms = cfg.shutdown_ms,
    }
    if not sink then return nil, err, code end
  end
  return setmetatable({ cfg = cfg, sink = sink, encode_errors = 0 }, Tracer)
end

-- tracer:ids(traceparent) -> trace_id, parent_span_id (nil: a root span).
-- An invalid traceparent starts a new trace (W3C: ignore it).
function Tracer.ids(_, traceparent)
  local tid, pid = M.parse_traceparent(traceparent)
  if tid then return tid, pid end
  return core.random_hex(16), nil
end

-- tracer:export(g) -> true | nil, err, code: encodes the generation's spans
-- and queues them (see otel.encode for g; g.traceparent optional). Never
-- raises; a failure is counted (dropped) and returned, for the caller to
-- ignore: a generation never fails because of its telemetry.
function Tracer:export(g)
  local ok, items, n = pcall(function()
    g.trace_id, g.parent_span_id = self:ids(g.traceparent)
    g.capture_content = self.cfg.capture_content
    g.end_ns = g.end_ns or core.unix_nanos()
    return M.encode(g)
  end)
  if not ok or not items then
    self.encode_errors = self.encode_errors + 1
    return nil, "OTEL: cannot encode the spans: " .. tostring(ok and n or items), "OTEL"
  end
  return self.sink:push(items, n)
end

-- tracer:stats() -> { exported, dropped, failed, pending, retries, batches,
-- last_error, encode_errors } (counts of spans; retries, batches: requests)
function Tracer:stats()
  local s = self.sink:stats()
  s.encode_errors = self.encode_errors
  return s
end

function Tracer:flush(ms) return self.sink:flush(ms) end
function Tracer:close(ms) return self.sink:close(ms) end

return M
