-- genaudit.dto — the pipeline's data objects, as plain tables with checked
-- constructors: Prompt, GenerationContext, RepairResult and Run.
local core = require("genaudit.core")

local M = {}

local function argerr(fn, field, expected, v)
  error(("bad argument #1 to '%s' (%s: %s expected, got %s)"):format(fn, field, expected, type(v)), 3)
end

local function opt(fn, t, field, ty)
  local v = t[field]
  if v ~= nil and type(v) ~= ty then argerr(fn, field, ty, v) end
  return v
end

-- Prompt{ system, user, template_id, template_version } — the final strings
-- sent to the model, exactly as composed.
function M.Prompt(t)
  if type(t) ~= "table" then error("bad argument #1 to 'Prompt' (table expected, got " .. type(t) .. ")", 2) end
  if type(t.system) ~= "string" then argerr("Prompt", "system", "string", t.system) end
  if type(t.user) ~= "string" then argerr("Prompt", "user", "string", t.user) end
  return {
    system = t.system, user = t.user,
    template_id = opt("Prompt", t, "template_id", "string"),
    template_version = t.template_version ~= nil and tostring(t.template_version) or nil,
  }
end

local ID_TYPES = { string = true, number = true }

-- Request parameters a context may not carry: the body builders set them
-- from the prompt and the provider (providers.lua).
M.RESERVED_PARAMS = { "model", "messages", "system" }

-- GenerationContext{ org_id, user_id, platform, template_id, business = {name,
-- tone, ...}, knowledge = {...}, facts = {...}, tone_override, params = {
-- temperature, max_tokens, seed, ... } } -> context, or nil, "INVALID: ..."
-- (a context comes from outside the program, so bad ones are expected failures).
function M.GenerationContext(t)
  if type(t) ~= "table" then return nil, "INVALID: generation context must be a table", "INVALID" end
  for _, f in ipairs({ "org_id", "user_id" }) do
    if not ID_TYPES[type(t[f])] or t[f] == "" then
      return nil, "INVALID: " .. f .. " is required (string or integer)", "INVALID"
    end
  end
  for _, f in ipairs({ "platform", "template_id" }) do
    if type(t[f]) ~= "string" or t[f] == "" then return nil, "INVALID: " .. f .. " is required (string)", "INVALID" end
  end
  for _, f in ipairs({ "business", "knowledge", "facts", "params" }) do
    if t[f] ~= nil and type(t[f]) ~= "table" then return nil, "INVALID: " .. f .. " must be a table", "INVALID" end
  end
  if t.tone_override ~= nil and type(t.tone_override) ~= "string" then
    return nil, "INVALID: tone_override must be a string", "INVALID"
  end
  -- the request body's own fields: a parameter of that name would replace
  -- what the snapshot records (the prompts, the requested model)
  for _, k in ipairs(M.RESERVED_PARAMS) do
    if t.params ~= nil and rawget(t.params, k) ~= nil then
      return nil, "INVALID: params." .. k .. " is set by genaudit (the snapshot records it); it cannot be a parameter",
        "INVALID"
    end
  end
  return {
    org_id = t.org_id, user_id = t.user_id, platform = t.platform, template_id = t.template_id,
    business = t.business or {}, knowledge = t.knowledge or {}, facts = t.facts or {},
    tone_override = t.tone_override, params = t.params or {},
  }
end

-- RepairResult{ repair_count, repair_types, initial_validation_score,
-- final_validation_score, repair_log, passed }
function M.RepairResult(t)
  return {
    repair_count = t.repair_count or 0,
    repair_types = t.repair_types or {},
    initial_validation_score = t.initial_validation_score,
    final_validation_score = t.final_validation_score,
    repair_log = t.repair_log or {},
    passed = t.passed and true or false,
  }
end

-- Run{ sw } — the state of one generation (or one replay) while it runs:
-- created by client:run() at the very start, filled by client:complete() and
-- the pipeline, read by client:token_metrics() / performance_metrics() and
-- pipeline:persist(). Every field:
function M.Run(t)
  t = t or {}
  return {
    sw = t.sw or core.stopwatch(),  -- the running stopwatch: total time, "provider" interval
    start_ns = core.unix_nanos(),   -- the wall clock at the start (epoch ns, a string: span start)
    call_ns = {},                   -- per log entry (http[i]): { start, end } epoch ns strings (spans)
    meter = core.meter(),           -- every metered call (tokens, cost, provider wait), in order
    attempts = 0,                   -- HTTP tries over all calls, failed ones included
    http = {},                      -- one log entry per call: kind, attempts, wait_ms, tries, status, timings
    call_models = {},               -- per meter call: { requested = model, served = model reported }
    model_identifier = nil,         -- the model the provider last reported
    content = nil,                  -- the latest text (draft, then each repair); kept when a call fails
    ctx = nil,                      -- the GenerationContext (pipeline only)
    prompt = nil,                   -- the composed Prompt, captured before any model call (pipeline only)
    repair = nil,                   -- the RepairResult of validate_and_repair (pipeline only)
  }
end

-- dto.split_drafts(drafts) -> texts, meta. A repair result's drafts
-- ({ text, score, issues } each) as a snapshot stores them: the texts in the
-- row's own `drafts` column (a payload: hashed on its own, removed by a
-- purge) and the rest in repair_metrics.drafts, each with the text's length
-- in bytes. nil, nil for no drafts.
function M.split_drafts(drafts)
  if type(drafts) ~= "table" or #drafts == 0 then return nil, nil end
  local texts, meta = {}, {}
  for i, d in ipairs(drafts) do
    local m = {}
    for k, v in pairs(d) do
      if k ~= "text" then m[k] = v end
    end
    texts[i] = type(d.text) == "string" and d.text or ""
    m.bytes = #texts[i]
    meta[i] = m
  end
  return texts, meta
end

-- dto.stored_drafts(row) -> { { text, score, issues, ... }, ... } | nil: the
-- drafts of a stored snapshot row, their texts from the drafts column (nil
-- once purged), or from repair_metrics.drafts[i].text for rows written before
-- the column existed.
function M.stored_drafts(row)
  local json = require("genaudit.json")
  local rm = row.repair_metrics
  if type(rm) == "string" then rm = json.decode(rm) end
  local meta = type(rm) == "table" and type(rm.drafts) == "table" and rm.drafts or nil
  local texts = row.drafts
  if type(texts) == "string" then texts = json.decode(texts) end
  if type(texts) ~= "table" then texts = nil end
  if not meta and not texts then return nil end
  local out = {}
  for i = 1, math.max(meta and #meta or 0, texts and #texts or 0) do
    local d = {}
    for k, v in pairs(meta and type(meta[i]) == "table" and meta[i] or {}) do d[k] = v end
    if texts and type(texts[i]) == "string" then d.text = texts[i] end
    out[i] = d
  end
  return out
end

-- dto.repair_info(rr, drafts_meta, scripts) -> the repair_info a snapshot
-- stores for a RepairResult (repair_metrics): the result's figures, the
-- drafts without their texts (split_drafts) and the pinned scripts.
function M.repair_info(rr, drafts_meta, scripts)
  return {
    repair_count = rr.repair_count, repair_types = rr.repair_types,
    initial_validation_score = rr.initial_validation_score,
    final_validation_score = rr.final_validation_score, repair_log = rr.repair_log,
    stop_reason = rr.stop_reason, stop_detail = rr.stop_detail,
    drafts = drafts_meta, on_rule_error = rr.on_rule_error,
    script_errors = rr.script_errors, rules = rr.rules,
    scripts = scripts,
  }
end

return M
