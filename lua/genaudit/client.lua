-- genaudit.client — the LLMClient: one provider adapter plus a transport.
-- Every call is metered (tokens, cost, provider wait) into a per-generation
-- run, and every HTTP try is recorded, failed ones included.
local core = require("genaudit.core")
local dto = require("genaudit.dto")
local json = require("genaudit.json")
local stream_mod = require("genaudit.stream")

local M = {}

local Client = {}
Client.__index = Client

local function us_to_ms(us) return math.floor(us) / 1000 end

-- The default transport: genaudit.core's libcurl client (blocking; one
-- connection reused across calls). transport(req) -> res | nil, err, code, info
local function curl_transport(provider)
  local http = core.http_client{
    connect_timeout_ms = provider.connect_timeout_ms, timeout_ms = provider.timeout_ms,
    verify_tls = provider.verify_tls, max_response_bytes = provider.max_response_bytes,
  }
  return function(req)
    return http:request{
      url = req.url, method = "POST", headers = req.headers, body = req.body,
      retries = req.retries, backoff_ms = req.backoff_ms, max_backoff_ms = req.max_backoff_ms,
      on_data = req.on_data, idle_timeout_ms = req.idle_timeout_ms,
    }
  end, http
end

-- client.new{ provider, pricing, transport = fn (optional), retries = 2,
--   backoff_ms = 200, max_backoff_ms = 30000 } -> client. Without a
-- transport, genaudit.core's libcurl client; a host with its own I/O passes
-- one in (inside nginx, openresty.init_worker passes openresty.transport).
function M.new(opts)
  if type(opts.provider) ~= "table" or type(opts.provider.request) ~= "function" then
    error("bad argument #1 to 'client' (provider expected)", 3)
  end
  local self = setmetatable({
    provider = opts.provider, pricing = opts.pricing,
    retries = opts.retries or 2, backoff_ms = opts.backoff_ms, max_backoff_ms = opts.max_backoff_ms,
  }, Client)
  if opts.transport then
    self.transport = opts.transport
  else
    self.transport, self.http = curl_transport(opts.provider)
  end
  return self
end

-- client:run([sw]) -> a fresh per-generation accumulator (genaudit.dto.Run)
function Client.run(_, sw)
  return dto.Run{ sw = sw }
end

-- Resolves the price table key for a model string, or nil.
local function price_key(pricing, model)
  if not pricing or not model then return nil end
  return pricing:resolve(model)
end

-- The price of a call is the price of the model that served it: the model the
-- response reports, else (no model reported) the requested one. A served
-- model without a price is never priced as the requested model: the cost is
-- then unknown (cost_source "unpriced_served_model" when the requested model
-- has a price, "unpriced" otherwise) unless the provider billed a cost.
-- Returns the price key (or nil) and the reason when unpriced.
local function pricing_for(pricing, served, requested)
  if served then
    local key = price_key(pricing, served)
    if key then return key end
    return nil, price_key(pricing, requested) and "unpriced_served_model" or "unpriced"
  end
  local key = price_key(pricing, requested)
  return key, not key and "unpriced" or nil
end

-- client:complete(run, kind, messages, params [, sopts]) -> text, nil, nil,
-- answer | nil, err, code. answer = { tool_calls, refusal } (each nil when the
-- response had none): a tool-call answer's text is its text content, "" when
-- it had none; the call's log entry keeps tool_calls, refusal and Azure's
-- prompt_filter_results / content_filter_results.
-- kind: "initial", "repair" or "replay" (kept per call in token_metrics).
-- Each call's log entry (performance_metrics.calls[i]) records the
-- provider's finish_reason and response_id as sent, JSON null when the
-- answer had none (a failed call too).
-- Every call that reached the provider is a call of the meter: with its usage
-- and cost, or, when it failed or came back without usable usage, as a call of
-- unknown cost. An answer without usable usage keeps its content (run.content
-- when none is set yet, else the call's log entry) and its reported model.
-- sopts = { stream = true, on_chunk = fn(text, info), idle_timeout_ms = N,
-- max_event_bytes = N } streams the answer (so do on_chunk alone and
-- params.stream == true):
-- see genaudit.stream and README "Streaming". The log entry then also has
-- streamed, time_to_first_token_ms, stream_duration_ms, chunks, events,
-- reads, stream_bytes. An answer without usage (a stream that sent none, or
-- a 2xx body with no `usage` at all, or JSON null) is a success whose call
-- is flagged usage_missing and, unless estimated (below), has unknown usage
-- and cost (a usage that is there but malformed is a BAD_RESPONSE, the
-- content kept as above); a stream broken
-- after its first byte fails with the text received so far kept (as above)
-- and the usage fields it had sent (partial_usage, as sent).
--
-- Each call also carries the local count of the prompt it sent
-- (local_input_tokens in token_metrics.calls[i], genaudit.tokens'
-- count_messages of `messages` for the requested model; JSON null when the
-- model has no exact local encoding: every non-OpenAI model), and an
-- answer without usage from a model that has one gets its usage from local
-- counts (prompt: that count; completion: the returned text counted), priced
-- as usual, flagged usage_source = "estimated" (README "Token counts on
-- every snapshot").
function Client:complete(run, kind, messages, params, sopts)
  local local_in = M.local_prompt_tokens(self.provider.model, messages)
  local before = #run.call_models
  local text, err, code, answer = self:complete_call(run, kind, messages, params, sopts, local_in)
  if #run.call_models > before then
    run.call_models[#run.call_models].local_input_tokens = local_in or json.null
  end
  return text, err, code, answer
end

-- client.local_prompt_tokens(model, messages) -> the exact token count of the
-- chat messages for model (genaudit.tokens.count_messages, chat overhead
-- included), or nil when the model has no exact local encoding.
function M.local_prompt_tokens(model, messages)
  local tokens = require("genaudit.tokens")
  if type(model) ~= "string" or not tokens.encoding_for(model) then return nil end
  return (tokens.count_messages(messages, model))
end

-- The text of an answer as a local count reads it: content, refusal and the
-- tool calls' names and arguments.
local function answer_text(parsed)
  local parts = { type(parsed.content) == "string" and parsed.content or "" }
  if type(parsed.refusal) == "string" then parts[#parts + 1] = parsed.refusal end
  for _, tc in ipairs(type(parsed.tool_calls) == "table" and parsed.tool_calls or {}) do
    if type(tc) == "table" then
      local fn = type(tc["function"]) == "table" and tc["function"] or tc
      if type(fn.name) == "string" then parts[#parts + 1] = fn.name end
      if type(fn.arguments) == "string" then parts[#parts + 1] = fn.arguments end
    end
  end
  return table.concat(parts)
end

-- A whole answer that came without usage: a call of the meter with usage
-- from local counts when the model has an exact local encoding (true), else
-- nil (the caller records a call of unknown usage).
function Client:estimated_call(run, kind, parsed, wait_us, local_in)
  if not local_in then return nil end
  local tokens = require("genaudit.tokens")
  local provider = self.provider
  local served = parsed.model_identifier
  local counted_as = served and tokens.encoding_for(served) and served or provider.model
  local completion = tokens.count(answer_text(parsed), counted_as)
  if not completion then return nil end
  local key, reason = pricing_for(self.pricing, served, provider.model)
  local call = { kind = kind, model = key or served or provider.model,
                 prices = key and self.pricing:price_table() or nil, unpriced_reason = reason,
                 prompt_tokens = local_in, completion_tokens = completion, provider_wait_us = wait_us }
  local ok = run.meter:add_call(call)
  if not ok and not key then
    call.model = nil
    ok = run.meter:add_call(call)
  end
  if not ok then return nil end
  run.call_models[#run.call_models + 1] = { requested = provider.model, served = served, usage_missing = true,
                                            estimated = true }
  return true
end

function Client:complete_call(run, kind, messages, params, sopts, local_in)
  local provider = self.provider
  local streaming = (sopts and (sopts.stream or sopts.on_chunk)) or (type(params) == "table" and params.stream == true)
  local req, rerr, rcode = provider:request(messages, params, streaming and { stream = true } or nil)
  if not req then return nil, rerr, rcode end -- refused before sending: nothing was billed
  req.retries, req.backoff_ms, req.max_backoff_ms = self.retries, self.backoff_ms, self.max_backoff_ms
  local acc
  if streaming then
    acc = stream_mod.new{ wire = provider.wire, kind = kind, on_chunk = sopts and sopts.on_chunk,
                          max_event_bytes = sopts and sopts.max_event_bytes }
    req.on_data = function(bytes) return acc:feed(bytes) end
    req.idle_timeout_ms = sopts and sopts.idle_timeout_ms
  end
  local t0 = core.unix_nanos()
  local res, err, code, info = self.transport(req)
  local t1 = core.unix_nanos()
  if acc then acc:close() end
  local tries = res and res.attempts or (info and info.attempts) or {}
  local wait_us = (res and res.provider_wait_us) or (info and info.provider_wait_us) or 0
  run.sw:add("provider", wait_us)
  run.attempts = run.attempts + #tries
  local log = {}
  for i, t in ipairs(tries) do -- every HTTP try, failed ones included
    log[i] = { status = t.status, error = t.error and provider.scrub(t.error) or nil, code = t.code,
               retry_after_ms = t.retry_after_ms, slept_ms = t.slept_ms,
               wait_ms = t.timings and us_to_ms(t.timings.wait_us) or nil }
  end
  -- finish_reason and response_id: the provider's own strings, JSON null
  -- when the call got no body that has them (never guessed)
  local entry = { kind = kind, attempts = #tries, wait_ms = us_to_ms(wait_us), tries = log,
                  status = res and res.status or nil, timings = res and res.timings or nil,
                  finish_reason = json.null, response_id = json.null }
  run.http[#run.http + 1] = entry
  if run.call_ns then run.call_ns[#run.http] = { t0, t1 } end -- the call's wall-clock span (genaudit.otel)
  local function failed_call(reason, served)
    local call = { kind = kind, model = served or provider.model, reason = reason, provider_wait_us = wait_us }
    local ok = run.meter:add_failed_call(call)
    if not ok then -- a reported model too long for the meter: the call is kept without it
      call.model = nil
      ok = run.meter:add_failed_call(call)
    end
    if ok then run.call_models[#run.call_models + 1] = { requested = provider.model, served = served } end
    return ok
  end
  local body = res and res.body
  if acc and (res and res.streamed or info and info.streamed) then
    for k, v in pairs(acc:figures(res or info)) do entry[k] = v end
    local plain = acc:plain_body()
    local done, serr, scode = true, nil, nil
    if plain then body = plain else done, serr, scode = acc:complete() end
    if not res and not acc.err then serr, scode = err, code end -- the transport's word: dropped, stalled
    if not res or not done then
      -- broken after its first byte: what came is kept, and why it broke
      return self:broken_stream(run, entry, acc, serr or err, scode or code, failed_call)
    end
    if not plain then
      local usage_came
      body, usage_came = acc:body()
      if not usage_came then
        entry.usage_missing = true
        if acc:known_usage() then entry.partial_usage = json.decode(provider.scrub(json.encode(acc:known_usage()))) end
      end
    end
  end
  if not res then
    failed_call("failed_before_usage")
    return nil, provider.scrub(err), code or "HTTP"
  end
  local parsed, answer
  parsed, err, code, answer = provider:parse_response(res.status, body)
  if not parsed then
    local ok2xx = res.status >= 200 and res.status < 300
    if answer then
      if answer.finish_reason ~= nil then entry.finish_reason = answer.finish_reason end
      if answer.response_id ~= nil then entry.response_id = answer.response_id end
      run.model_identifier = answer.model_identifier or run.model_identifier
      if run.content == nil then run.content = answer.content else entry.content = answer.content end
    end
    failed_call(ok2xx and "no_usage" or "failed_before_usage", answer and answer.model_identifier)
    return nil, err, code
  end
  if parsed.finish_reason ~= nil then entry.finish_reason = parsed.finish_reason end
  if parsed.response_id ~= nil then entry.response_id = parsed.response_id end
  run.model_identifier = parsed.model_identifier or run.model_identifier
  if entry.streamed and parsed.tool_calls then -- the arguments exactly as their fragments came
    for i, a in ipairs(acc:tool_arguments()) do
      if parsed.tool_calls[i] then parsed.tool_calls[i].arguments = provider.scrub(a) end
    end
  end
  -- a whole answer whose body had no usage at all (a gateway that strips
  -- it): as a stream without usage
  if parsed.usage_missing then entry.usage_missing = true end
  if entry.usage_missing then
    -- no usage (streamed or not): a whole answer, its usage counted locally
    -- when the model has an exact local encoding ...
    if self:estimated_call(run, kind, parsed, wait_us, local_in) then return self:answer(entry, parsed) end
    -- ... else of unknown usage and cost (never zero)
    failed_call("no_usage", parsed.model_identifier)
    run.call_models[#run.call_models].usage_missing = true
    return self:answer(entry, parsed)
  end
  local key, reason = pricing_for(self.pricing, parsed.model_identifier, provider.model)
  local u = parsed.usage
  local call = {
    kind = kind, model = key or parsed.model_identifier or provider.model,
    prices = key and self.pricing:price_table() or nil, unpriced_reason = reason,
    prompt_tokens = u.prompt_tokens, completion_tokens = u.completion_tokens, total_tokens = u.total_tokens,
    cached_prompt_tokens = u.cached_prompt_tokens, cache_write_tokens = u.cache_write_tokens,
    reasoning_tokens = u.reasoning_tokens, provider_cost = parsed.provider_cost, provider_wait_us = wait_us,
  }
  local ok, merr = run.meter:add_call(call)
  if not ok and (call.provider_cost ~= nil or not key) then
    -- a provider cost the meter cannot hold (1e300 USD) or a reported model
    -- too long for it must not cost the call its usage: the call is kept
    -- without them (an unusable billed cost is ignored, as a negative one is)
    call.provider_cost = nil
    if not key then call.model = nil end
    ok, merr = run.meter:add_call(call)
  end
  if not ok then
    if run.content == nil then run.content = parsed.content else entry.content = parsed.content end
    failed_call("no_usage", parsed.model_identifier)
    return nil, "BAD_RESPONSE: " .. tostring(merr), "BAD_RESPONSE"
  end
  run.call_models[#run.call_models + 1] = { requested = provider.model, served = parsed.model_identifier,
                                            notes = parsed.usage_notes }
  return self:answer(entry, parsed)
end

-- The answer beyond its text, on the call's log entry as sent; returns
-- complete()'s success.
function Client.answer(_, entry, parsed)
  entry.tool_calls, entry.refusal = parsed.tool_calls, parsed.refusal
  entry.prompt_filter_results = parsed.prompt_filter_results
  entry.content_filter_results = parsed.content_filter_results
  return parsed.content, nil, nil, { tool_calls = parsed.tool_calls, refusal = parsed.refusal }
end

-- A stream that broke after its first byte (dropped, stalled, refused by
-- on_chunk, an error event, an over-long event, no end marker): a failed
-- call of unknown cost; the text received so far is kept (run.content when
-- none is set yet, else the log entry), with the model, id, finish reason
-- and usage fields it had sent. Returns nil, err, code.
function Client:broken_stream(run, entry, acc, err, code, failed_call)
  local provider = self.provider
  local scrub = provider.scrub
  local text = scrub(acc:content())
  if run.content == nil then run.content = text else entry.content = text end
  entry.stream_broken = true
  if acc.finish then entry.finish_reason = scrub(acc.finish) end
  if acc.id then entry.response_id = scrub(acc.id) end
  if acc:known_usage() then entry.partial_usage = json.decode(scrub(json.encode(acc:known_usage()))) end
  local served = acc.model and scrub(acc.model) or nil
  run.model_identifier = served or run.model_identifier
  failed_call(acc.events > 0 and "no_usage" or "failed_before_usage", served)
  err = scrub(tostring(err or "BAD_RESPONSE: the stream broke"))
  code = code or "BAD_RESPONSE"
  return nil, ("%s (stream broken after %d bytes, %d chunks)"):format(err, entry.stream_bytes or 0, acc.chunks),
    code
end

-- client:token_metrics(run) -> the token_metrics document of a run, as the
-- meter builds it. Each call names the model it was priced as (`model`), the
-- requested and the served one.
-- Each call also carries what its usage normalization noted
-- (providers.lua openai_usage / anthropic_usage: reasoning_tokens_derived,
-- reasoning_outside_completion, cached_from, usage_from, iterations,
-- is_byok, cost_details).
-- Each call has local_input_tokens (see complete; the document has their sum
-- when every call has one) and, when its usage is known, usage_source:
-- "provider" (as billed) or "estimated" (local counts); the document's
-- usage_source says the same of its totals ("mixed": some of each).
function Client.token_metrics(_, run)
  local tm = run.meter:token_metrics(run.call_models)
  local sources = {}
  local local_sum = #run.call_models > 0 and 0 or nil
  for i, cm in ipairs(run.call_models) do
    if local_sum and type(cm.local_input_tokens) == "number" then
      local_sum = local_sum + cm.local_input_tokens
    else
      local_sum = nil
    end
    local c = type(tm) == "table" and type(tm.calls) == "table" and tm.calls[i]
    if cm.notes and type(c) == "table" then
      for k, v in pairs(cm.notes) do if c[k] == nil then c[k] = v end end
    end
    if cm.usage_missing and type(c) == "table" then -- an answer that sent no usage
      c.usage_missing = true
      tm.usage_missing = true
    end
    if type(c) == "table" then
      if cm.local_input_tokens ~= nil then c.local_input_tokens = cm.local_input_tokens end
      if c.prompt_tokens ~= nil then
        c.usage_source = cm.estimated and "estimated" or "provider"
        sources[c.usage_source] = true
      end
    end
  end
  if type(tm) == "table" and next(sources) then
    tm.usage_source = (sources.estimated and sources.provider) and "mixed" or next(sources)
  end
  if type(tm) == "table" and local_sum then tm.local_input_tokens = local_sum end
  return tm
end

-- client:performance_metrics(run, total_ms) -> the performance_metrics
-- document. A streamed generation also has time_to_first_token_ms (its
-- first call's: what its user waited for the first text) and streamed.
function Client:performance_metrics(run, total_ms)
  local first = run.http[1]
  return {
    streamed = first and first.streamed or nil,
    time_to_first_token_ms = first and first.time_to_first_token_ms or nil,
    total_latency_ms = total_ms,
    provider_latency_ms = (run.sw:interval_ms("provider")),
    model_identifier = run.model_identifier,
    requested_model = self.provider.model,
    provider = self.provider.name,
    -- false only when the provider was built with verify_tls = false: an
    -- unverified connection is recorded on every snapshot it served
    verify_tls = self.provider.verify_tls ~= false,
    attempts = run.attempts,
    calls = run.http,
  }
end

function Client:close()
  if self.http then self.http:close() end
  return true
end

return M
