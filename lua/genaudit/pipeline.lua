-- genaudit.pipeline — the ContentGeneratorService: one audited generation.
--
--   generate(ctx): stopwatch starts -> compose (final prompts captured) ->
--   initial model call (metered) -> validate_and_repair (each repair is a
--   metered call) -> stopwatch stops -> persist_generation.
--
-- Every generation is persisted, failed ones too (status 'failed' + error).
local dto = require("genaudit.dto")
local composer_mod = require("genaudit.composer")
local validator_mod = require("genaudit.validator")
local store_mod = require("genaudit.store")
local client_mod = require("genaudit.client")
local redact_mod = require("genaudit.redact")
local budget_mod = require("genaudit.budget")
local core = require("genaudit.core")
local json = require("genaudit.json")
local otel = require("genaudit.otel")

local M = {}

local Pipeline = {}
Pipeline.__index = Pipeline

-- genaudit.pipeline{ store, provider, templates = dir, rules = dir, pricing,
--   transport = fn (optional), sandbox = true, script_timeout_ms = 1000,
--   retries = 2, backoff_ms = 200, max_backoff_ms = 30000,
--   persister = obj (optional: what persist_generation(row) is called on;
--   the store by default),
--   budgets = path (a budget script, README "Budgets"; none by default),
--   budget_cache_ttl_ms = 5000,
--   otel = { endpoint, headers, capture_content, ... } | false } -> pipeline
-- otel: the OpenTelemetry span export (genaudit.otel.config; unset, it is
-- on when OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set; false: off).
function M.new(opts)
  if type(opts) ~= "table" then error("bad argument #1 to 'pipeline' (table expected, got " .. type(opts) .. ")", 2) end
  if type(opts.store) ~= "table" then error("bad argument #1 to 'pipeline' (store expected)", 2) end
  if type(opts.provider) ~= "table" or type(opts.provider.request) ~= "function" then
    error("bad argument #1 to 'pipeline' (provider expected)", 2)
  end
  if type(opts.templates) ~= "string" then error("bad argument #1 to 'pipeline' (templates directory expected)", 2) end
  if type(opts.rules) ~= "string" then error("bad argument #1 to 'pipeline' (rules directory expected)", 2) end
  local self = setmetatable({
    store = opts.store,
    persister = store_mod.persister(opts.persister or opts.store),
    provider = opts.provider,
    pricing = opts.pricing,
    composer = composer_mod.new{ templates = opts.templates, sandbox = opts.sandbox,
                                 script_timeout_ms = opts.script_timeout_ms },
    validator = validator_mod.new{ rules = opts.rules, sandbox = opts.sandbox,
                                   script_timeout_ms = opts.script_timeout_ms },
    client = client_mod.new(opts),
    stored_scripts = {}, -- digest -> true: in the store already (put_script once per digest)
  }, Pipeline)
  local ocfg = otel.config(opts.otel)
  if ocfg then
    -- telemetry never stops a pipeline: without its exporter it runs untraced, and says why
    self.tracer, self.otel_error = otel.new(ocfg)
  end
  -- the redaction script: opts.redact (a path; false: none), else <rules>/redact.lua when present
  if opts.redact ~= false then
    self.redactor = redact_mod.new{ path = type(opts.redact) == "string" and opts.redact or opts.rules .. "/"
      .. redact_mod.FILE, sandbox = opts.sandbox, script_timeout_ms = opts.script_timeout_ms }
  end
  if opts.budgets ~= nil and opts.budgets ~= false then
    if type(opts.budgets) ~= "string" then error("bad argument #1 to 'pipeline' (budgets: path expected)", 2) end
    self.budget = budget_mod.new{ path = opts.budgets, store = opts.store, sandbox = opts.sandbox,
                                  script_timeout_ms = opts.script_timeout_ms, cache_ttl_ms = opts.budget_cache_ttl_ms }
  end
  return self
end

-- The code that took part in a run (repair_metrics.scripts): the template
-- and, once validation ran, the rule set (validator.rule_set_of). Every
-- source is stored in the scripts table before the row that names it
-- (store:put_script, synchronous, once per digest per pipeline); a source
-- the store could not take is listed in `unstored` with the error (and tried
-- again next time), never silently missing.
function Pipeline:pinned_scripts(run, rr, extra)
  local rec, sources = {}, {}
  local t = run.template_script
  if t then
    rec.template = { path = t.path, digest = t.digest, load_error = t.load_error }
    sources[1] = t
  end
  if rr.scripts then
    rec.rules, rec.policy, rec.rule_set_digest = rr.scripts.rules, rr.scripts.policy, rr.scripts.rule_set_digest
    for _, src in ipairs(rr.script_sources or {}) do sources[#sources + 1] = src end
  end
  if extra then sources[#sources + 1] = extra end
  local b = run.budget_script
  if b then
    rec.budget = { path = b.path, digest = b.digest }
    sources[#sources + 1] = b
  end
  local unstored = {}
  for _, src in ipairs(sources) do
    if not self.stored_scripts[src.digest] then
      local digest, err
      if type(self.store.put_script) == "function" then
        digest, err = self.store:put_script(M.text_safe(src.path), src.source)
      else
        err = "SCRIPTS: the store has no put_script"
      end
      if digest then self.stored_scripts[src.digest] = true
      else unstored[#unstored + 1] = { digest = src.digest, error = M.text_safe(tostring(err)) } end
    end
  end
  if #unstored > 0 then rec.unstored = unstored end
  if next(rec) == nil then return nil end
  return rec
end

-- Builds and persists the snapshot of a run (genaudit.dto.Run). Returns id,
-- nil, nil, row | nil, err, code.
function Pipeline:persist(run, status, err)
  local total_ms = run.sw:stop()
  local rr = run.repair or dto.RepairResult{}
  local draft_texts, draft_meta = dto.split_drafts(rr.drafts)
  local row = {
    org_id = run.ctx.org_id, user_id = run.ctx.user_id, platform = run.ctx.platform,
    template_id = run.ctx.template_id,
    template_version = run.prompt and run.prompt.template_version or nil,
    final_system_prompt = run.prompt and run.prompt.system or "",
    final_user_prompt = run.prompt and run.prompt.user or "",
    token_usage = self.client:token_metrics(run),
    performance = self.client:performance_metrics(run, total_ms),
    repair_info = dto.repair_info(rr, draft_meta, nil),
    request_params = run.ctx.params,
    drafts = draft_texts,
    content = run.content,
    status = status,
    error = err,
  }
  -- the budget check (README "Budgets"): the limits checked, the spend seen,
  -- the estimate and the decision
  if run.budget then row.repair_info.budget = run.budget end
  -- redaction before storage: the stored (and hashed) payloads are the
  -- redacted ones; the row says which script did it, and its code is pinned
  local red = self.redactor and self.redactor:apply(row, run.ctx)
  if red then
    row.repair_info.redaction = { script = red.script, digest = red.digest, changed = red.changed, errors = red.errors }
    for i, t in ipairs(row.drafts or {}) do draft_meta[i].bytes = #t end -- the stored text's length
  end
  -- the code that took part, the redaction script's included, pinned once
  row.repair_info.scripts = self:pinned_scripts(run, rr, red and red.source or nil)
  local id, err2, code = self.persister:persist_generation(row)
  if id and self.budget then self.budget:add_spend(run.ctx, row.token_usage.estimated_cost_picousd) end
  if not id and code == "INVALID" and tostring(err2):find("PostgreSQL text", 1, true) then
    -- The generation happened (and may have been billed): a row PostgreSQL
    -- text cannot hold (a NUL byte, bytes that are not UTF-8, from the
    -- provider or the caller's context) is stored all the same, as failed,
    -- with U+FFFD in place of those bytes, and the caller is told.
    local lossy = "INVALID: " .. err2:gsub("^INVALID: ", "") .. " (stored with U+FFFD in place of those bytes)"
    row = M.text_safe(row)
    row.status, row.error = "failed", M.text_safe(err and (err .. "; " .. lossy) or lossy)
    id, err2, code = self.persister:persist_generation(row)
    if id then
      self:export_spans(run, row, id, status)
      return id, nil, nil, row, lossy
    end
  end
  self:export_spans(run, row, id, status)
  return id, err2, code, row
end

-- Queues the generation's spans (genaudit.otel) when export is on: the row
-- as stored, its id (nil when it could not be stored). Returns nothing:
-- telemetry never fails or slows a generation (a full queue drops and counts).
function Pipeline:export_spans(run, row, id, status)
  if not self.tracer then return end
  -- pcall: whatever the exporter says (or raises), the generation's result stands
  pcall(self.tracer.export, self.tracer, {
    row = row, snapshot_id = id, run = run, provider = self.provider, traceparent = run.traceparent,
    error_code = (status ~= "completed" or not id) and (run.error_code or (not id and "PERSIST") or "FAILED") or nil,
  })
end

-- pipeline:otel_stats() -> { exported, dropped, failed, pending, retries,
-- batches, last_error, encode_errors } | nil, err (export off: err says why)
function Pipeline:otel_stats()
  if not self.tracer then return nil, self.otel_error or "OTEL: export is off (no endpoint configured)" end
  return self.tracer:stats()
end

-- pipeline:otel_flush([timeout_ms]) -> true | nil, "TIMEOUT: ...", "TIMEOUT":
-- waits until the queued spans are sent or given up (tests, shutdown).
function Pipeline:otel_flush(ms)
  if not self.tracer then return true end
  return self.tracer:flush(ms)
end

-- pipeline.text_safe(v) -> v with every string (deep, keys too) made what any
-- store's text holds: bytes that are not UTF-8 and NUL bytes become U+FFFD.
function M.text_safe(v)
  if type(v) == "string" then
    if core.utf8_valid(v) and not v:find("%z") then return v end
    return (json.decode(core.json_encode(v)):gsub("%z", "\239\191\189"))
  end
  if type(v) ~= "table" or v == json.null then return v end
  local out = {}
  for k, x in next, v do out[M.text_safe(k)] = M.text_safe(x) end
  return out
end

-- The pre-flight estimate of a request of `messages` with params, before
-- any call (README "Pre-flight estimate"): { model, encoding, prompt_tokens
-- (exact: genaudit.tokens.count_messages), max_tokens (params.max_tokens or
-- max_completion_tokens, nil when neither is set), min_cost_usd (the prompt
-- alone: no output), max_cost_usd (with max_tokens of output; nil without
-- max_tokens), and both as exact picodollar digit strings (min_cost_picousd,
-- max_cost_picousd), cost_source ("local_estimate", or "unpriced" with no
-- cost) } | nil, err, code (UNKNOWN_ENCODING: the model has no exact local
-- encoding). Repair calls are not foreseen.
function Pipeline:estimate_messages(messages, params)
  local tokens = require("genaudit.tokens")
  local model = self.provider.model
  local enc = type(model) == "string" and tokens.encoding_for(model) or nil
  if not enc then
    return nil, "UNKNOWN_ENCODING: no exact local token encoding for model '" .. tostring(model) .. "'",
      "UNKNOWN_ENCODING"
  end
  local n, err, code = tokens.count_messages(messages, model)
  if not n then return nil, err, code end
  local est = { model = model, encoding = enc, prompt_tokens = n, cost_source = "unpriced" }
  params = type(params) == "table" and params or {}
  local max = params.max_tokens
  if max == nil then max = params.max_completion_tokens end
  if type(max) == "number" and max >= 0 and max % 1 == 0 and max < 2 ^ 53 then est.max_tokens = json.integer(max) end
  local key = self.pricing and self.pricing:resolve(model)
  if key then
    local function cost(completion)
      local m = core.meter()
      local ok = m:add_call{ kind = "estimate", model = key, prices = self.pricing:price_table(), prompt_tokens = n,
                             completion_tokens = completion }
      local t = ok and m:totals()
      m:close()
      return t and t.estimated_cost_picousd
    end
    est.min_cost_picousd = cost(0)
    est.max_cost_picousd = est.max_tokens and cost(est.max_tokens) or nil
    if est.min_cost_picousd then
      est.cost_source = "local_estimate"
      est.min_cost_usd = core.usd_from_picousd(est.min_cost_picousd)
      est.max_cost_usd = est.max_cost_picousd and core.usd_from_picousd(est.max_cost_picousd) or nil
    end
  end
  return est
end

local function messages_of(prompt)
  return { { role = "system", content = prompt.system }, { role = "user", content = prompt.user } }
end

-- pipeline:estimate(ctx) -> estimate | nil, err, code: composes ctx's
-- prompts as generate would (no provider call, nothing stored) and returns
-- estimate_messages of the initial request, with prompt = { system, user }.
function Pipeline:estimate(input)
  local ctx, err, code = dto.GenerationContext(input)
  if not ctx then return nil, err, code end
  local prompt
  prompt, err, code = self.composer:compose_post_generation(ctx)
  if not prompt then return nil, err, code end
  local est
  est, err, code = self:estimate_messages(messages_of(prompt), ctx.params)
  if not est then return nil, err, code end
  est.prompt = { system = prompt.system, user = prompt.user }
  return est
end

-- The budget check before the first call: nil (go on; a warning is kept in
-- run.budget) | err, code (refused or no budget could be read: stored as
-- failed, nothing sent).
function Pipeline:check_budget(run, messages)
  local est, eerr = self:estimate_messages(messages, run.ctx.params)
  local worst = est and (est.max_cost_picousd or est.min_cost_picousd) or nil
  local rec, err, code = self.budget:check(run.ctx, worst)
  run.budget_script = self.budget:script()
  if not rec then return err, code end
  rec.estimate = est and { prompt_tokens = est.prompt_tokens, max_tokens = est.max_tokens,
                           min_cost_usd = est.min_cost_usd, max_cost_usd = est.max_cost_usd,
                           cost_source = est.cost_source } or { error = M.text_safe(tostring(eerr)) }
  rec.basis = est and (est.max_cost_picousd and "max_cost" or est.min_cost_picousd and "min_cost") or "unknown"
  run.budget = rec
  if rec.decision ~= "refuse" then return nil end
  local c
  for _, x in ipairs(rec.checks) do if x.exceeded and x.action == "refuse" then c = x break end end
  return ("BUDGET_EXCEEDED: %s: %s USD spent since %s UTC + up to %s USD for this generation is over the limit"
    .. " of %s USD"):format(c.name, c.spent_usd, c.since, rec.estimate_usd or "0.00 (unknown)", c.limit_usd),
    "BUDGET_EXCEEDED"
end

-- The streaming options of generate(ctx, opts), checked: nil (not
-- streamed) or { stream = true, on_chunk, idle_timeout_ms, max_event_bytes }.
local function stream_options(opts)
  if opts == nil then return nil end
  if type(opts) ~= "table" then error("bad argument #2 to 'generate' (table expected, got " .. type(opts) .. ")", 3) end
  if opts.on_chunk ~= nil and type(opts.on_chunk) ~= "function" then
    error("bad argument #2 to 'generate' (on_chunk must be a function)", 3)
  end
  for _, k in ipairs({ "idle_timeout_ms", "max_event_bytes" }) do
    local v = opts[k]
    if v ~= nil and (type(v) ~= "number" or v < 1 or v % 1 ~= 0 or v > 2 ^ 31) then
      error("bad argument #2 to 'generate' (" .. k .. " must be a positive integer)", 3)
    end
  end
  if opts.traceparent ~= nil and type(opts.traceparent) ~= "string" then
    error("bad argument #2 to 'generate' (traceparent must be a string)", 3)
  end
  if not opts.stream and not opts.on_chunk then return nil end
  return { stream = true, on_chunk = opts.on_chunk, idle_timeout_ms = opts.idle_timeout_ms,
           max_event_bytes = opts.max_event_bytes }
end

-- pipeline:generate(ctx [, opts]) -> result | nil, err, code, snapshot_id
--   result = { content, snapshot_id, prompt, token_metrics,
--              performance_metrics, repair_metrics, drafts }
-- opts = { stream = true, on_chunk = function(text, info), idle_timeout_ms,
-- max_event_bytes, traceparent = "00-<32 hex>-<16 hex>-<2 hex>" }:
-- traceparent (W3C, from the host's request) makes the generation's span a
-- child of the host's span (genaudit.otel; an invalid one starts a new
-- trace). The model calls stream (on_chunk alone implies stream);
-- on_chunk receives each text delta as it arrives, info = { kind =
-- "initial"|"repair", type = "text"|"refusal", index }; raising or returning
-- false stops the generation (STREAM_ABORTED, stored as failed with the text
-- so far). Validation and repairs run on the completed text; repair calls
-- stream too (info.kind says which call a chunk belongs to).
function Pipeline:generate(input, opts)
  local run = self.client:run() -- a dto.Run; the timer starts at the very beginning
  local sopts = stream_options(opts)
  run.traceparent = opts and opts.traceparent -- the host's W3C trace context (genaudit.otel)
  local ctx, err, code = dto.GenerationContext(input)
  if not ctx then return nil, err, code end
  run.ctx = ctx

  local function fail(e, c)
    run.error_code = c
    local id, perr, pcode = self:persist(run, "failed", e)
    if not id then return nil, perr, pcode end
    return nil, e, c, id
  end

  local prompt
  prompt, err, code = self.composer:compose_post_generation(ctx)
  run.template_script = self.composer:template_script(ctx.template_id) -- the template code used (or tried)
  if not prompt then return fail(err, code) end
  run.prompt = prompt -- the final strings, captured before any model call

  local messages = messages_of(prompt)
  if self.budget then -- spend so far + the estimate, before any call
    local berr, bcode = self:check_budget(run, messages)
    if berr then return fail(berr, bcode) end
  end
  local draft, answer
  draft, err, code, answer = self.client:complete(run, "initial", messages, ctx.params, sopts)
  if not draft then return fail(err, code) end
  run.content = draft

  local rr, final = self.validator:validate_and_repair(draft, ctx, function(feedback, previous)
    local conversation = {
      messages[1], messages[2],
      { role = "assistant", content = previous }, { role = "user", content = feedback },
    }
    local text, e, c, a = self.client:complete(run, "repair", conversation, ctx.params, sopts)
    if text then run.content = text end
    return text, e, c, a
  end, answer)
  run.repair, run.content = rr, final

  if not rr.passed then
    if rr.stop_reason == "repair_failed" or rr.stop_reason == "rule_error" then return fail(rr.error, rr.error_code) end
    local slugs = {}
    for _, i in ipairs(rr.final_issues or {}) do
      -- a broken rule is named: "rule_error (slug: error)"
      slugs[#slugs + 1] = i.slug == "rule_error" and ("rule_error (" .. i.message .. ")") or i.slug
    end
    return fail(("REPAIR_EXHAUSTED: draft still fails validation after %d repair(s) (%s; score %s)"):format(
      rr.repair_count, table.concat(slugs, ", "), tostring(rr.final_validation_score)), "REPAIR_EXHAUSTED")
  end

  local id, row
  local lossy
  id, err, code, row, lossy = self:persist(run, "completed")
  if not id then return nil, err, code end
  if lossy then return nil, lossy, "INVALID", id end
  return {
    content = final, snapshot_id = id, prompt = prompt,
    token_metrics = row.token_usage, performance_metrics = row.performance, repair_metrics = row.repair_info,
    drafts = rr.drafts, -- every draft with its text, score and issues (stored: drafts column + repair_metrics)
    budget = run.budget, -- the budget check (decision "pass" or "warn", with its warnings)
  }
end

-- pipeline:script_errors() -> { path = err } for templates/rules whose newest
-- version failed to load (the previous version stays active). A file since
-- deleted is not listed.
function Pipeline:script_errors()
  local out = self.validator:script_errors()
  if self.budget and self.budget.load_error and core.file_version(self.budget.path) then
    out[self.budget.path] = self.budget.load_error
  end
  for path, e in pairs(self.composer.loader.cache) do
    if e.error and core.file_version(path) then out[path] = e.error end
  end
  return out
end

-- pipeline:close() -> true: the client's connection, and the span exporter
-- after a bounded flush (otel.shutdown_ms).
function Pipeline:close()
  if self.tracer then self.tracer:close() end
  return self.client:close()
end

return M
