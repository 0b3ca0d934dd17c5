local validator = require("genaudit.validator")
local tmp = require("spec.support.tmp")

describe("genaudit.validator", function()
  local dir, v
  local ctx = { platform = "linkedin" }

  local function words(n)
    local t = {}
    for i = 1, n do t[i] = "w" .. i end
    return table.concat(t, " ")
  end

  before_each(function()
    dir = tmp.dir()
    tmp.write(dir .. "/length.lua", [[
      return { slug = "length_exceeded", check = function(draft)
        local n = select(2, draft:gsub("%S+", ""))
        if n > 10 then return { message = n .. " words > 10", penalty = 30 } end
      end }]])
    tmp.write(dir .. "/hashtag.lua", [[
      return function(draft)
        if not draft:find("#%w") then return { slug = "missing_hashtag", message = "add a hashtag", penalty = 15 } end
      end]])
    v = validator.new{ rules = dir }
  end)
  after_each(function() tmp.rm(dir) end)

  describe("validate()", function()
    it("scores a clean draft 100 with no issues", function()
      local issues, score = v:validate("short #ok", ctx)
      assert.same({}, issues)
      assert.equal(100, score)
    end)

    it("subtracts each issue's penalty from 100", function()
      local issues, score = v:validate(words(12), ctx)
      assert.equal(55, score)
      assert.same({ "missing_hashtag", "length_exceeded" }, { issues[1].slug, issues[2].slug })
    end)

    it("uses the file name as slug and 10 as penalty when a rule gives none", function()
      tmp.write(dir .. "/tone.lua", [[return function() return { message = "too loud" } end]])
      local issues, score = v:validate("x #ok", ctx)
      assert.same({ { slug = "tone", message = "too loud", penalty = 10 } }, issues)
      assert.equal(90, score)
    end)

    it("picks up a rule file added or removed after the first validation", function()
      assert.equal(100, select(2, v:validate("x #ok", ctx)))
      tmp.write(dir .. "/added.lua", [[return function() return { message = "new rule", penalty = 20 } end]])
      assert.equal(80, select(2, v:validate("x #ok", ctx)))
      os.remove(dir .. "/added.lua")
      assert.equal(100, select(2, v:validate("x #ok", ctx)))
    end)

    it("turns a rule that raises into a rule_error issue and reports it", function()
      tmp.write(dir .. "/broken.lua", [[return function() error("nope", 0) end]])
      local issues = v:validate("x #ok", ctx)
      assert.same({ { slug = "rule_error", message = "broken: nope", penalty = 10 } }, issues)
      assert.equal("SCRIPT: nope", v:script_errors()[dir .. "/broken.lua"])
    end)
  end)

  describe("validate_and_repair()", function()
    it("computes the initial score on the raw draft and repairs until clean", function()
      local calls = {}
      local rr, final = v:validate_and_repair(words(12), ctx, function(feedback, draft, attempt)
        calls[#calls + 1] = { feedback = feedback, draft = draft, attempt = attempt }
        return attempt == 1 and words(12) .. " #tag" or "short #tag"
      end)
      assert.equal("short #tag", final)
      assert.equal(55, rr.initial_validation_score)
      assert.equal(100, rr.final_validation_score)
      assert.equal(2, rr.repair_count)
      assert.same({ "missing_hashtag", "length_exceeded" }, rr.repair_types)
      assert.is_true(rr.passed)
      assert.equal(2, #calls)
      assert.equal("Your draft has these problems; rewrite it to fix all of them:\n- add a hashtag\n- 12 words > 10",
        calls[1].feedback)
      assert.same({ 70, 100 }, { rr.repair_log[1].score_after, rr.repair_log[2].score_after })
      assert.same({ "length_exceeded" }, rr.repair_log[1].issues_after)
    end)

    it("makes no repair call for a clean draft", function()
      local rr = v:validate_and_repair("fine #tag", ctx, function() error("must not be called") end)
      assert.same({ 0, true, 100 }, { rr.repair_count, rr.passed, rr.initial_validation_score })
    end)

    it("stops at the policy's budget and reports it", function()
      tmp.write(dir .. "/policy.lua", [[return { budget = 1, feedback = function(_, issues)
        return "fix " .. #issues end }]])
      local sent
      local rr = v:validate_and_repair(words(12), ctx, function(feedback) sent = feedback; return words(11) end)
      assert.equal("fix 2", sent)
      assert.same({ 1, false, "budget_exhausted" }, { rr.repair_count, rr.passed, rr.stop_reason })
    end)

    it("refuses at load a policy whose budget is over the cap of 10, keeping the default budget", function()
      tmp.write(dir .. "/policy.lua", [[return { budget = 1000000 }]])
      local calls = 0
      local rr = v:validate_and_repair(words(12), ctx, function() calls = calls + 1; return words(12) end)
      assert.equal("SCRIPT: " .. dir .. "/policy.lua: budget must be at most 10 (got 1000000)",
        v:script_errors()[dir .. "/policy.lua"])
      assert.same({ 2, 2, "budget_exhausted" }, { calls, rr.repair_count, rr.stop_reason })
      assert.equal(10, validator.MAX_REPAIR_BUDGET)
    end)

    it("accepts a budget of exactly 10", function()
      tmp.write(dir .. "/policy.lua", [[return { budget = 10 }]])
      local calls = 0
      local rr = v:validate_and_repair(words(12), ctx, function() calls = calls + 1; return words(12) end)
      assert.is_nil(v:script_errors()[dir .. "/policy.lua"])
      assert.same({ 10, "budget_exhausted" }, { calls, rr.stop_reason })
    end)

    it("lets a policy decline a repair with a reason", function()
      tmp.write(dir .. "/policy.lua", [[return { feedback = function() return nil, "not fixable" end }]])
      local rr = v:validate_and_repair(words(12), ctx, function() error("must not be called") end)
      assert.same({ 0, false, "policy_declined", "not fixable" },
        { rr.repair_count, rr.passed, rr.stop_reason, rr.stop_detail })
    end)

    it("accepts a draft above min_score", function()
      tmp.write(dir .. "/policy.lua", [[return { min_score = 80 }]])
      local rr = v:validate_and_repair("no tag here", ctx, function() error("must not be called") end)
      assert.same({ true, 85 }, { rr.passed, rr.final_validation_score })
    end)

    it("records a failed repair call with its error", function()
      local rr = v:validate_and_repair(words(12), ctx, function() return nil, "TIMEOUT: slow", "TIMEOUT" end)
      assert.same({ "repair_failed", "TIMEOUT: slow", "TIMEOUT", 1 },
        { rr.stop_reason, rr.error, rr.error_code, rr.repair_count })
      assert.equal("TIMEOUT: slow", rr.repair_log[1].error)
    end)

    it("applies an edited rule file on the next draft", function()
      assert.equal(100, select(2, v:validate("a b c #t", ctx)))
      tmp.write(dir .. "/length.lua", [[return { slug = "length_exceeded", check = function(d)
        if #d > 3 then return { message = "long", penalty = 40 } end end }]])
      assert.equal(60, select(2, v:validate("a b c #t", ctx)))
    end)

    it("keeps the previous rule when the edited file is broken", function()
      assert.equal(70, select(2, v:validate(words(11) .. " #t", ctx)))
      tmp.write(dir .. "/length.lua", "return {{{")
      assert.equal(70, select(2, v:validate(words(11) .. " #t", ctx)))
      assert.truthy(v:script_errors()[dir .. "/length.lua"]:find("^SCRIPT: .*length%.lua"))
    end)

    it("gives rules the full environment when the host opts out of the sandbox", function()
      tmp.write(dir .. "/open.lua", [[return function()
        return { message = type(io.open) .. "/" .. type(os.execute), penalty = 0 } end]])
      local issues = validator.new{ rules = dir, sandbox = false }:validate("x #t", ctx)
      assert.equal("function/function", issues[1].message)
    end)

    it("stops a rule that loops forever and reports it as a rule_error", function()
      tmp.write(dir .. "/forever.lua", [[return function(d) local n = 0 while true do n = n + #d end end]])
      local lv = validator.new{ rules = dir, script_timeout_ms = 50 }
      local issues, score = lv:validate("x #t", ctx)
      assert.same({ { slug = "rule_error", message = "forever: script exceeded its time limit (50 ms)",
                      penalty = 10 } }, issues)
      assert.equal(90, score)
    end)

    it("stops a rule that catches its own time-out with pcall and loops on", function()
      tmp.write(dir .. "/sly.lua", [[return function()
        while true do pcall(function() while true do end end) end end]])
      local lv = validator.new{ rules = dir, script_timeout_ms = 50 }
      local issues = lv:validate("x #t", ctx)
      assert.same({ { slug = "rule_error", message = "sly: script exceeded its time limit (50 ms)", penalty = 10 } },
        issues)
    end)

    it("stops a rule file whose top level loops forever and keeps the other rules", function()
      tmp.write(dir .. "/hang.lua", [[while true do end]])
      local lv = validator.new{ rules = dir, script_timeout_ms = 50 }
      -- 70 from the other rules, 10 off for the rule that never loaded (a load_error counts)
      assert.equal(60, select(2, lv:validate(words(11) .. " #t", ctx)))
      assert.equal("SCRIPT: script exceeded its time limit (50 ms)", lv:script_errors()[dir .. "/hang.lua"])
    end)

    it("stops a repair policy that loops forever", function()
      tmp.write(dir .. "/policy.lua", [[return { feedback = function() while true do end end }]])
      local lv = validator.new{ rules = dir, script_timeout_ms = 50 }
      local rr = lv:validate_and_repair(words(12), ctx, function() error("must not be called") end)
      assert.same({ "policy_declined", "script exceeded its time limit (50 ms)" }, { rr.stop_reason, rr.stop_detail })
    end)

    it("runs rules in a sandbox without io or os.execute", function()
      tmp.write(dir .. "/sneaky.lua", [[return function()
        return { message = tostring(io) .. "/" .. tostring(os.execute) .. "/" .. tostring(require), penalty = 0 } end]])
      local issues = v:validate("x #t", ctx)
      assert.equal("nil/nil/nil", issues[1].message)
    end)
  end)
end)
