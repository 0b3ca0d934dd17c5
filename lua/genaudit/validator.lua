-- genaudit.validator — the ValidationAndRepairService. Validation rules and
-- the repair policy are Lua scripts in a directory the host names:
--
--   <rules>/*.lua      one rule each; returns { slug = "...", check = fn(draft, ctx) }
--                      (or just fn(draft, ctx)); check returns nil when the draft
--                      passes, else an issue {slug=, message=, penalty=} or a list.
--   <rules>/policy.lua the repair policy (optional; defaults below):
--                      { budget = 2, min_score = 100,
--                        should_repair = fn(issues, score, draft, ctx) -> bool,
--                        feedback = fn(draft, issues, ctx) -> text | nil, reason,
--                        on_rule_error = "count" | "fail" | "ignore" }
--
-- The score of a draft is 100 minus the sum of its issues' penalties (>= 0).
-- A rule that raises, returns garbage, runs out of time or fails to load is a
-- rule error: recorded in repair_metrics.script_errors, and by default
-- ("count") an issue {slug = "rule_error", penalty = 10} of the draft.
local dto = require("genaudit.dto")
local scripts = require("genaudit.scripts")
local core = require("genaudit.core")
local json = require("genaudit.json")

local M = {}

local Validator = {}
Validator.__index = Validator

local DEFAULT_PENALTY = 10
local RULE_ERROR_PENALTY = 10
M.ON_RULE_ERROR = { count = true, fail = true, ignore = true }
local POLICY_FILE = "policy.lua"
local REDACT_FILE = "redact.lua" -- genaudit.redact's script, not a rule

-- A string a script supplies (a slug), checked raw against the size cap.
local function short_string(v, what)
  if type(v) ~= "string" then return nil, what .. " must be a string" end
  if #v > scripts.MAX_MESSAGE_BYTES then
    return nil, ("%s is %d bytes, over the limit of %d bytes"):format(what, #v, scripts.MAX_MESSAGE_BYTES)
  end
  return v
end

-- Rules and policies are read raw (no metamethod of the script's tables runs
-- in host code) into tables of the host's own.
local function validate_rule(r)
  if type(r) == "function" then return { check = r } end
  if type(r) ~= "table" then return nil, "a rule must return a table or a function" end
  local check, slug = rawget(r, "check"), rawget(r, "slug")
  if type(check) ~= "function" then return nil, "a rule needs a check function" end
  if slug ~= nil then
    local err
    slug, err = short_string(slug, "slug")
    if not slug then return nil, err end
  end
  return { check = check, slug = slug }
end

-- The most repair calls a policy may ask for per generation: each one is a
-- billed model call, and a script must not be able to ask for thousands.
M.MAX_REPAIR_BUDGET = 10

local function validate_policy(p)
  if type(p) ~= "table" then return nil, "a policy must return a table" end
  local out = { budget = rawget(p, "budget"), min_score = rawget(p, "min_score") }
  local b = out.budget
  if b ~= nil and (type(b) ~= "number" or b < 0 or b % 1 ~= 0) then
    return nil, "budget must be a non-negative integer"
  end
  if b ~= nil and b > M.MAX_REPAIR_BUDGET then
    return nil, ("budget must be at most %d (got %s)"):format(M.MAX_REPAIR_BUDGET, tostring(b))
  end
  local ore = rawget(p, "on_rule_error")
  if ore ~= nil and not (type(ore) == "string" and M.ON_RULE_ERROR[ore]) then
    return nil, 'on_rule_error must be "count", "fail" or "ignore"'
  end
  out.on_rule_error = ore
  local m = out.min_score
  if m ~= nil and (type(m) ~= "number" or m ~= m or m == math.huge or m == -math.huge) then
    return nil, "min_score must be a finite number"
  end
  for _, f in ipairs({ "feedback", "should_repair" }) do
    local fn = rawget(p, f)
    if fn ~= nil and type(fn) ~= "function" then return nil, f .. " must be a function" end
    out[f] = fn
  end
  return out
end

-- The default policy: repair while any issue remains, at most twice, telling
-- the model every issue found, except rule errors (a broken rule is the
-- host's problem, not the model's): when only those remain it declines.
M.default_policy = {
  budget = 2,
  min_score = 100,
  on_rule_error = "count",
  feedback = function(_, issues)
    local lines = { "Your draft has these problems; rewrite it to fix all of them:" }
    local broken = {}
    for _, i in ipairs(issues) do
      if i.slug == "rule_error" then broken[#broken + 1] = i.message else lines[#lines + 1] = "- " .. i.message end
    end
    if #lines == 1 and #broken > 0 then return nil, "only rule errors remain: " .. table.concat(broken, "; ") end
    return table.concat(lines, "\n")
  end,
}

-- validator.new{ rules = dir, sandbox = true, script_timeout_ms = 1000 } -> validator
function M.new(opts)
  if type(opts) ~= "table" or type(opts.rules) ~= "string" then
    error("bad argument #1 to 'validator' (rules directory expected)", 2)
  end
  return setmetatable({
    dir = opts.rules,
    rule_loader = scripts.loader{ sandbox = opts.sandbox, validate = validate_rule, limit_ms = opts.script_timeout_ms },
    policy_loader = scripts.loader{ sandbox = opts.sandbox, validate = validate_policy,
                                    limit_ms = opts.script_timeout_ms },
    errors = {}, -- path -> last load error (the previous version stays active)
  }, Validator)
end

local function slug_of(path) return path:match("([^/]+)%.lua$") end

-- Normalizes what a rule's check returned into a list of issues of the
-- host's own, reading the script's tables raw. A penalty is a number from 0
-- to 100: anything else (math.huge, NaN, negative) would make the score, and
-- so the snapshot, unstorable.
local function issues_from(res, default_slug)
  if res == nil or res == false then return {} end
  if type(res) ~= "table" then return nil, "check must return nil, an issue or a list of issues" end
  local list = (rawget(res, "slug") ~= nil or rawget(res, "message") ~= nil) and { res } or res
  local out = {}
  for n = 1, scripts.MAX_ISSUES + 1 do
    local i = rawget(list, n)
    if i == nil then break end
    if n > scripts.MAX_ISSUES then return nil, ("a rule may return at most %d issues"):format(scripts.MAX_ISSUES) end
    if type(i) ~= "table" then return nil, "an issue must be a table" end
    local penalty = rawget(i, "penalty")
    if penalty == nil then penalty = DEFAULT_PENALTY end
    if type(penalty) ~= "number" or not (penalty >= 0 and penalty <= 100) then
      return nil, "penalty must be a number from 0 to 100"
    end
    local slug, message = rawget(i, "slug"), rawget(i, "message")
    if type(slug) ~= "string" then slug = default_slug end
    if type(message) ~= "string" then message = slug end
    local err
    slug, err = short_string(slug, "slug")
    if not slug then return nil, err end
    message, err = short_string(message, "message")
    if not message then return nil, err end
    out[n] = { slug = slug, message = message, penalty = penalty }
  end
  return out
end

-- validator:rules() -> list of {slug, check, path} | {slug, path, load_error};
-- records load errors. A file that is gone (deleted) takes no part and its
-- error is forgotten, even when the directory listing is not yet refreshed.
function Validator:rules()
  local out = {}
  local listed = {}
  for _, path in ipairs(self.rule_loader:dir(self.dir, { [POLICY_FILE] = true, [REDACT_FILE] = true })) do
    local version = core.file_version(path)
    if version then
      listed[path] = true
      local r, err = self.rule_loader:load(path, version)
      self.errors[path] = err
      if r then
        if type(r) == "function" then r = { check = r } end
        out[#out + 1] = { slug = r.slug or slug_of(path), check = r.check, path = path,
                          script = self.rule_loader:script(path) }
      elseif err then
        out[#out + 1] = { slug = slug_of(path), path = path, load_error = err, script = self.rule_loader:failed(path) }
      end
    end
  end
  local policy_path = self.dir .. "/" .. POLICY_FILE
  for path in pairs(self.errors) do
    if path ~= policy_path and not listed[path] then self.errors[path] = nil end
  end
  return out
end

function Validator:policy()
  local path = self.dir .. "/" .. POLICY_FILE
  local p, err = self.policy_loader:load(path)
  if err and not err:find("No such file", 1, true) then self.errors[path] = err else self.errors[path] = nil end
  p = p or {} -- the host's copy (validate_policy)
  return {
    budget = p.budget or M.default_policy.budget,
    min_score = p.min_score or M.default_policy.min_score,
    should_repair = p.should_repair,
    feedback = p.feedback or M.default_policy.feedback,
    on_rule_error = p.on_rule_error or M.default_policy.on_rule_error,
    load_error = self.errors[path],
    -- the code in force: the active version, else (the default policy
    -- applies) the bytes that failed to load; nil without a policy file
    script = self.policy_loader:script(path) or (self.errors[path] and self.policy_loader:failed(path)) or nil,
    call = function(fn, ...) return self.policy_loader:call(fn, ...) end,
  }
end

-- Orders pinned scripts by slug, then path, then digest (bytewise).
local function by_slug(a, b)
  if a.slug ~= b.slug then return a.slug < b.slug end
  if a.path ~= b.path then return a.path < b.path end
  return a.digest < b.digest
end

-- validator.rule_set_of(rules, policy_script) -> record, sources: what
-- repair_metrics.scripts records of a rule set. rules: validator:rules()
-- entries; policy_script: { path, source, digest } or nil. record =
-- { rules = { {slug, path, digest[, load_error = true]} } sorted by slug,
-- policy = {path, digest[, load_error]} | nil, rule_set_digest }; sources: the
-- { path, source, digest } of each of them (for store:put_script).
-- rule_set_digest is the SHA-256 (hex) of the concatenation, over the rules
-- and the policy as slug "policy", sorted by slug (then path, then digest,
-- bytewise), of slug .. "\0" .. digest .. "\n". A rule file that never
-- loaded is pinned by the bytes that failed (load_error = true); one that
-- could not be read at all has no digest and is left out.
function M.rule_set_of(rules, policy_script, policy_failed)
  local entries, sources = {}, {}
  for _, r in ipairs(rules) do
    if r.script then
      -- the slug as the snapshot's JSON holds it (bytes that are not UTF-8 become
      -- U+FFFD there), so the digest can be recomputed from the snapshot alone
      local slug = core.utf8_valid(r.slug) and r.slug or json.decode(core.json_encode(r.slug))
      entries[#entries + 1] = { slug = slug, path = r.path, digest = r.script.digest,
                                load_error = r.load_error and true or nil }
      sources[#sources + 1] = r.script
    end
  end
  table.sort(entries, by_slug)
  local all = {}
  for i, e in ipairs(entries) do all[i] = e end
  local policy
  if policy_script then
    policy = { path = policy_script.path, digest = policy_script.digest, load_error = policy_failed and true or nil }
    all[#all + 1] = { slug = "policy", path = policy.path, digest = policy.digest }
    sources[#sources + 1] = policy_script
  end
  table.sort(all, by_slug)
  local canon = {}
  for i, e in ipairs(all) do canon[i] = e.slug .. "\0" .. e.digest .. "\n" end
  return { rules = entries, policy = policy, rule_set_digest = core.sha256(table.concat(canon)) }, sources
end

local function policy_failed(self, policy)
  return policy.script ~= nil and self.policy_loader:script(policy.script.path) == nil
end

-- validator:rule_set() -> { rules, policy, rule_set_digest } (see
-- rule_set_of), sources: the rule set a generation would use now, after
-- reloading changed scripts exactly as a generation does.
function Validator:rule_set()
  local rules = self:rules()
  local policy = self:policy()
  return M.rule_set_of(rules, policy.script, policy_failed(self, policy))
end

local function error_kind(err)
  if tostring(err):find("script exceeded its time limit", 1, true) then return "timeout" end
  return "error"
end

-- The record of one generation's script errors and rule runs
-- (repair_metrics.script_errors and .rules).
local function new_audit(on_rule_error)
  return { on_rule_error = on_rule_error or "count", script_errors = {}, rules = {}, by_path = {},
           load_seen = {} }
end

local function rule_stats(audit, rule)
  local st = audit.by_path[rule.path]
  if not st then
    st = { slug = rule.slug, path = rule.path, runs = 0, fired = 0, errors = 0, timeouts = 0 }
    audit.by_path[rule.path] = st
    audit.rules[#audit.rules + 1] = st
  end
  return st
end

local function record(audit, script, slug, kind, err, draft)
  audit.script_errors[#audit.script_errors + 1] = {
    script = script, slug = slug, kind = kind, error = err, draft = draft == nil and json.null or draft,
  }
end

-- A rule's own copy of ctx, with ctx.answer = { tool_calls = {...},
-- refusal = string | nil } (the model's answer beyond its text; tool_calls
-- [] when it made none).
local function rule_ctx(ctx, answer)
  local c = scripts.copy(ctx)
  c.answer = {
    tool_calls = scripts.copy(answer and answer.tool_calls or {}),
    refusal = answer and answer.refusal or nil,
  }
  return c
end

-- validator:validate(draft, ctx[, audit, draft_index, answer]) -> issues, score,
-- rule_error. A rule that raises, returns garbage, times out or failed to
-- load is recorded (audit.script_errors) and, under on_rule_error "count"
-- (the default) and "fail", becomes an issue of its own ("rule_error",
-- penalty 10), so a broken rule never silently passes drafts; "ignore" adds
-- no issue. Under "fail" validation stops at the first rule error, returned
-- third as "slug: err". Each rule gets its own copy of ctx.
function Validator:validate(draft, ctx, audit, draft_index, answer)
  audit = audit or new_audit(self:policy().on_rule_error)
  local issues, penalty = {}, 0
  local first_error
  for _, rule in ipairs(audit.rule_list or self:rules()) do
    local st = rule_stats(audit, rule)
    local list, err, kind
    if rule.load_error then
      err, kind = rule.load_error:gsub("^SCRIPT: ", ""), "load_error"
      st.errors = st.errors + 1
      if not audit.load_seen[rule.path] then
        audit.load_seen[rule.path] = true
        record(audit, rule.path, rule.slug, kind, err, nil)
      end
    else
      st.runs = st.runs + 1
      local ok, res = self.rule_loader:call(rule.check, draft, rule_ctx(ctx, answer))
      if ok then
        list, err = issues_from(res, rule.slug)
        kind = "bad_result"
      else
        err = res
        kind = error_kind(err)
      end
      if list then
        if #list > 0 then st.fired = st.fired + 1 end
      else
        self.errors[rule.path] = "SCRIPT: " .. err
        if kind == "timeout" then st.timeouts = st.timeouts + 1 else st.errors = st.errors + 1 end
        record(audit, rule.path, rule.slug, kind, err, draft_index)
      end
    end
    if not list then
      list = {}
      if audit.on_rule_error ~= "ignore" then
        list[1] = { slug = "rule_error", message = rule.slug .. ": " .. err, penalty = RULE_ERROR_PENALTY }
      end
      first_error = first_error or (rule.slug .. ": " .. err)
    end
    for _, i in ipairs(list) do
      issues[#issues + 1] = i
      penalty = penalty + i.penalty
    end
    if first_error and audit.on_rule_error == "fail" then break end
  end
  local score = 100 - penalty
  if score < 0 then score = 0 end
  return issues, score, first_error
end

local function slugs(issues)
  local out = {}
  for _, i in ipairs(issues) do out[#out + 1] = i.slug end
  return out
end

-- The policy sees copies of the issues and the context: the issues stay the
-- host's, as logged in the repair log.
local function needs_repair(policy, issues, score, draft, ctx, audit)
  if policy.should_repair then
    local ok, res = policy.call(policy.should_repair, scripts.copy(issues), score, draft, scripts.copy(ctx))
    if ok then return res and true or false end
    record(audit, policy.path, "policy", error_kind(res), "should_repair: " .. res, nil)
  end
  for _, i in ipairs(issues) do
    if i.penalty > 0 then return score < policy.min_score end
  end
  return false
end

-- validator:validate_and_repair(draft, ctx, repair[, answer]) -> RepairResult, final_draft
--   answer: { tool_calls, refusal } of the draft (client:complete's fourth
--   result); rules see it as ctx.answer, and each draft keeps it
--   (repair_metrics.drafts[i].tool_calls / .refusal).
--   repair(feedback, draft, attempt) -> new_draft, nil, nil, answer | nil, err, code — one
--   metered model call (the pipeline's). RepairResult.passed says whether the
--   final draft satisfies the policy; .stop_reason says why repairs stopped
--   ("passed", "budget_exhausted", "policy_declined", "repair_failed").
local function draft_entry(text, score, issues, answer)
  return { text = text, score = score, issues = issues,
           tool_calls = answer and answer.tool_calls or nil, refusal = answer and answer.refusal or nil }
end

function Validator:validate_and_repair(draft, ctx, repair, answer)
  local policy = self:policy()
  policy.path = self.dir .. "/" .. POLICY_FILE
  local audit = new_audit(policy.on_rule_error)
  -- one rule set judges every draft of a generation: loaded once, here (an
  -- edit during the generation applies from the next one), and pinned
  audit.rule_list = self:rules()
  local pinned, sources = M.rule_set_of(audit.rule_list, policy.script, policy_failed(self, policy))
  if policy.load_error then
    record(audit, policy.path, "policy", "load_error", (policy.load_error:gsub("^SCRIPT: ", "")), nil)
  end
  local issues, score, rule_error = self:validate(draft, ctx, audit, 1, answer)
  local drafts = { draft_entry(draft, score, issues, answer) }
  local rr = {
    repair_count = 0, repair_types = {}, initial_validation_score = score,
    final_validation_score = score, repair_log = {}, passed = false,
  }
  local seen = {}
  local attempt = 0
  while true do
    if rule_error and audit.on_rule_error == "fail" then
      rr.stop_reason, rr.error, rr.error_code = "rule_error", "RULE_ERROR: " .. rule_error, "RULE_ERROR"
      break
    end
    if not needs_repair(policy, issues, score, draft, ctx, audit) then
      rr.passed, rr.stop_reason = true, "passed"
      break
    end
    if attempt >= policy.budget then
      rr.stop_reason = "budget_exhausted"
      break
    end
    local ok, feedback, reason = policy.call(policy.feedback, draft, scripts.copy(issues), scripts.copy(ctx))
    if ok and type(feedback) == "string" and #feedback > scripts.MAX_STRING_BYTES then
      ok, feedback = false, ("feedback is %d bytes, over the limit of %d bytes"):format(#feedback,
        scripts.MAX_STRING_BYTES)
    end
    if not ok then record(audit, policy.path, "policy", error_kind(feedback), "feedback: " .. feedback, nil) end
    if not ok or type(feedback) ~= "string" then
      rr.stop_reason = "policy_declined"
      rr.stop_detail = not ok and feedback or (reason and scripts.text(reason)) or nil
      break
    end
    attempt = attempt + 1
    for _, s in ipairs(slugs(issues)) do
      if not seen[s] then
        seen[s] = true
        rr.repair_types[#rr.repair_types + 1] = s
      end
    end
    local entry = { attempt = attempt, issues = issues, feedback = feedback, score_before = score }
    rr.repair_log[#rr.repair_log + 1] = entry
    rr.repair_count = attempt
    local new_draft, err, code, new_answer = repair(feedback, draft, attempt)
    if not new_draft then
      entry.error = err
      rr.stop_reason, rr.error, rr.error_code = "repair_failed", err, code
      break
    end
    draft = new_draft
    answer = new_answer
    issues, score, rule_error = self:validate(draft, ctx, audit, #drafts + 1, answer)
    drafts[#drafts + 1] = draft_entry(draft, score, issues, answer)
    entry.score_after = score
    entry.issues_after = slugs(issues)
    rr.final_validation_score = score
  end
  rr.final_issues = issues
  local result = dto.RepairResult(rr)
  result.stop_reason, result.stop_detail = rr.stop_reason, rr.stop_detail
  result.error, result.error_code, result.final_issues = rr.error, rr.error_code, rr.final_issues
  result.drafts, result.on_rule_error = drafts, audit.on_rule_error
  result.script_errors, result.rules = audit.script_errors, audit.rules
  result.scripts, result.script_sources = pinned, sources
  return result, draft
end

-- validator:script_errors() -> { path = err } for scripts whose newest version failed
-- (a file since deleted is not listed).
function Validator:script_errors()
  local out = {}
  for k, v in pairs(self.errors) do
    if core.file_version(k) then out[k] = v else self.errors[k] = nil end
  end
  return out
end

return M
