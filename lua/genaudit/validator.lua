-- genaudit.validator — the ValidationAndRepairService. Validation rules and
-- the repair policy are Lua scripts in a directory the host names:
--
--   <rules>/*.lua      one rule each; returns { slug = "...", check = fn(draft, ctx) }
--                      (or just fn(draft, ctx)); check returns nil when the draft
--                      passes, else an issue {slug=, message=, penalty=} or a list.
--   <rules>/policy.lua the repair policy (optional; defaults below):
--                      { budget = 2, min_score = 100,
--                        should_repair = fn(issues, score, draft, ctx) -> bool,
--                        feedback = fn(draft, issues, ctx) -> text | nil, reason }
--
-- The score of a draft is 100 minus the sum of its issues' penalties (>= 0).
local dto = require("genaudit.dto")
local scripts = require("genaudit.scripts")

local M = {}

local Validator = {}
Validator.__index = Validator

local DEFAULT_PENALTY = 10
local POLICY_FILE = "policy.lua"

local function validate_rule(r)
  if type(r) == "function" then return true end
  if type(r) ~= "table" then return nil, "a rule must return a table or a function" end
  if type(r.check) ~= "function" then return nil, "a rule needs a check function" end
  if r.slug ~= nil and type(r.slug) ~= "string" then return nil, "slug must be a string" end
  return true
end

-- The most repair calls a policy may ask for per generation: each one is a
-- billed model call, and a script must not be able to ask for thousands.
M.MAX_REPAIR_BUDGET = 10

local function validate_policy(p)
  if type(p) ~= "table" then return nil, "a policy must return a table" end
  if p.budget ~= nil and (type(p.budget) ~= "number" or p.budget < 0 or p.budget % 1 ~= 0) then
    return nil, "budget must be a non-negative integer"
  end
  if p.budget ~= nil and p.budget > M.MAX_REPAIR_BUDGET then
    return nil, ("budget must be at most %d (got %s)"):format(M.MAX_REPAIR_BUDGET, tostring(p.budget))
  end
  for _, f in ipairs({ "feedback", "should_repair" }) do
    if p[f] ~= nil and type(p[f]) ~= "function" then return nil, f .. " must be a function" end
  end
  return true
end

-- The default policy: repair while any issue remains, at most twice, telling
-- the model every issue found.
M.default_policy = {
  budget = 2,
  min_score = 100,
  feedback = function(_, issues)
    local lines = { "Your draft has these problems; rewrite it to fix all of them:" }
    for _, i in ipairs(issues) do lines[#lines + 1] = "- " .. i.message end
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

-- Normalizes what a rule's check returned into a list of issues.
local function issues_from(res, default_slug)
  if res == nil or res == false then return {} end
  if type(res) ~= "table" then return nil, "check must return nil, an issue or a list of issues" end
  local list = (res.slug or res.message) and { res } or res
  local out = {}
  for _, i in ipairs(list) do
    if type(i) ~= "table" then return nil, "an issue must be a table" end
    local penalty = i.penalty == nil and DEFAULT_PENALTY or i.penalty
    if type(penalty) ~= "number" or penalty < 0 or penalty ~= penalty then
      return nil, "penalty must be a number >= 0"
    end
    out[#out + 1] = {
      slug = type(i.slug) == "string" and i.slug or default_slug,
      message = type(i.message) == "string" and i.message or (i.slug or default_slug),
      penalty = penalty,
    }
  end
  return out
end

-- validator:rules() -> list of {slug, check, path}; records load errors.
function Validator:rules()
  local out = {}
  for _, path in ipairs(self.rule_loader:dir(self.dir, { [POLICY_FILE] = true })) do
    local r, err = self.rule_loader:load(path)
    self.errors[path] = err
    if r then
      if type(r) == "function" then r = { check = r } end
      out[#out + 1] = { slug = r.slug or slug_of(path), check = r.check, path = path }
    end
  end
  return out
end

function Validator:policy()
  local path = self.dir .. "/" .. POLICY_FILE
  local p, err = self.policy_loader:load(path)
  if err and not err:find("No such file", 1, true) then self.errors[path] = err else self.errors[path] = nil end
  p = p or {}
  return {
    budget = p.budget or M.default_policy.budget,
    min_score = p.min_score or M.default_policy.min_score,
    should_repair = p.should_repair,
    feedback = p.feedback or M.default_policy.feedback,
    call = function(fn, ...) return self.policy_loader:call(fn, ...) end,
  }
end

-- validator:validate(draft, ctx) -> issues, score. A rule that raises or
-- returns garbage becomes an issue of its own ("rule_error"), so a broken
-- rule is visible in the audit trail instead of silently passing drafts.
function Validator:validate(draft, ctx)
  local issues, penalty = {}, 0
  for _, rule in ipairs(self:rules()) do
    local ok, res = self.rule_loader:call(rule.check, draft, ctx)
    local list, err
    if ok then list, err = issues_from(res, rule.slug) else err = tostring(res) end
    if not list then
      self.errors[rule.path] = "SCRIPT: " .. tostring(err)
      list = { { slug = "rule_error", message = rule.slug .. ": " .. tostring(err), penalty = 0 } }
    end
    for _, i in ipairs(list) do
      issues[#issues + 1] = i
      penalty = penalty + i.penalty
    end
  end
  local score = 100 - penalty
  if score < 0 then score = 0 end
  return issues, score
end

local function slugs(issues)
  local out = {}
  for _, i in ipairs(issues) do out[#out + 1] = i.slug end
  return out
end

local function needs_repair(policy, issues, score, draft, ctx)
  if policy.should_repair then
    local ok, res = policy.call(policy.should_repair, issues, score, draft, ctx)
    if ok then return res and true or false end
  end
  for _, i in ipairs(issues) do
    if i.penalty > 0 then return score < policy.min_score end
  end
  return false
end

-- validator:validate_and_repair(draft, ctx, repair) -> RepairResult, final_draft
--   repair(feedback, draft, attempt) -> new_draft | nil, err, code — one
--   metered model call (the pipeline's). RepairResult.passed says whether the
--   final draft satisfies the policy; .stop_reason says why repairs stopped
--   ("passed", "budget_exhausted", "policy_declined", "repair_failed").
function Validator:validate_and_repair(draft, ctx, repair)
  local policy = self:policy()
  local issues, score = self:validate(draft, ctx)
  local rr = {
    repair_count = 0, repair_types = {}, initial_validation_score = score,
    final_validation_score = score, repair_log = {}, passed = false,
  }
  local seen = {}
  local attempt = 0
  while true do
    if not needs_repair(policy, issues, score, draft, ctx) then
      rr.passed, rr.stop_reason = true, "passed"
      break
    end
    if attempt >= policy.budget then
      rr.stop_reason = "budget_exhausted"
      break
    end
    local ok, feedback, reason = policy.call(policy.feedback, draft, issues, ctx)
    if not ok or type(feedback) ~= "string" then
      rr.stop_reason = "policy_declined"
      rr.stop_detail = not ok and tostring(feedback) or (reason and tostring(reason)) or nil
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
    local new_draft, err, code = repair(feedback, draft, attempt)
    if not new_draft then
      entry.error = err
      rr.stop_reason, rr.error, rr.error_code = "repair_failed", err, code
      break
    end
    draft = new_draft
    issues, score = self:validate(draft, ctx)
    entry.score_after = score
    entry.issues_after = slugs(issues)
    rr.final_validation_score = score
  end
  rr.final_issues = issues
  local result = dto.RepairResult(rr)
  result.stop_reason, result.stop_detail = rr.stop_reason, rr.stop_detail
  result.error, result.error_code, result.final_issues = rr.error, rr.error_code, rr.final_issues
  return result, draft
end

-- validator:script_errors() -> { path = err } for scripts whose newest version failed
function Validator:script_errors()
  local out = {}
  for k, v in pairs(self.errors) do out[k] = v end
  return out
end

return M
