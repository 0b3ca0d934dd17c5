-- Issue 13, points 1 and 2, through the real pipeline and the local provider
-- server, on both stores: every draft is kept byte-exact in
-- repair_metrics.drafts, and a broken rule (raises, loops, bad result, fails
-- to load) or policy function is recorded in repair_metrics.script_errors
-- and, by default, counts against the draft instead of passing it silently.
local genaudit = require("genaudit")
local json = require("genaudit.json")
local cjson = require("cjson")
local provider_server = require("spec.support.provider")
local tmp = require("spec.support.tmp")
local pg = require("spec.support.pg")
local util = require("spec.support.util")
local q, cli = util.q, util.cli

local KEY = "sk-truth-3c4d5e6f7a-SECRET"
local PRICES = { ["gpt-4o-mini"] = { input_cost_per_token = 1.5e-07, output_cost_per_token = 6e-07 } }

-- A rule that fires on drafts containing "BAD" (penalty 30).
local BAD_RULE = [[return { slug = "no_bad", check = function(d)
  if d:find("BAD", 1, true) then return { message = "remove BAD", penalty = 30 } end end }]]

local function ctx()
  return { org_id = 42, user_id = 7, platform = "linkedin", template_id = "launch",
           business = { name = "Acme" }, facts = { product = "Anvil 2" } }
end

-- suite(name, open) with open(dir) -> store, db argument for bin/genaudit
local function suite(name, open, describe_fn)
  describe_fn(name, function()
    local srv, dir, store, db

    local function pipeline()
      return genaudit.pipeline{
        store = store, templates = dir .. "/templates", rules = dir .. "/rules",
        provider = genaudit.providers.openai{ base_url = srv.url, api_key = KEY, model = "gpt-4o-mini" },
        pricing = assert(genaudit.pricing.load(PRICES)), backoff_ms = 10, script_timeout_ms = 50,
      }
    end

    local function row(id)
      return assert(store:query("SELECT * FROM generation_snapshots WHERE id = ?", { id }))[1]
    end

    -- repair_metrics with its drafts joined to their texts: the texts live in
    -- the row's own drafts column (a payload a purge can remove), the rest in
    -- repair_metrics.drafts, which holds no text
    local function metrics(id)
      local r = row(id)
      local rm = json.decode(r.repair_metrics)
      for _, d in ipairs(rm.drafts or {}) do assert.is_nil(d.text) end
      rm.drafts = genaudit.dto.stored_drafts(r)
      return rm
    end

    local function rule(file, src) tmp.write(dir .. "/rules/" .. file .. ".lua", src) end

    setup(function() srv = provider_server.start{ api_key = KEY } end)
    teardown(function()
      srv:stop()
      pg.drop_schemas()
    end)

    before_each(function()
      srv:reset()
      dir = tmp.dir()
      os.execute("mkdir -p " .. dir .. "/templates " .. dir .. "/rules")
      tmp.write(dir .. "/templates/launch.lua", [[return { version = "1",
        voice_signature = "You are {{business.name}}.", task = "Announce {{facts.product}}." }]])
      store, db = open(dir)
    end)

    after_each(function()
      store:close()
      tmp.rm(dir)
    end)

    it("a rule that raises is recorded and fails the draft by default, with no repair call", function()
      rule("boom", [[return { slug = "boom", check = function() error("kaput", 0) end }]])
      srv:queue{ { content = "a fine draft" } }
      local res, err, code, id = pipeline():generate(ctx())
      assert.same({ nil, "REPAIR_EXHAUSTED" }, { res, code })
      assert.matches("rule_error (boom: kaput)", err, 1, true)
      local r = row(id)
      assert.same({ "failed", err }, { r.status, r.error })
      local rm = metrics(id)
      assert.same({ { script = dir .. "/rules/boom.lua", slug = "boom", kind = "error", error = "kaput", draft = 1 } },
        rm.script_errors)
      assert.same({ { text = "a fine draft", score = 90, bytes = 12,
                      issues = { { slug = "rule_error", message = "boom: kaput", penalty = 10 } } } }, rm.drafts)
      assert.same({ { slug = "boom", path = dir .. "/rules/boom.lua", runs = 1, fired = 0, errors = 1, timeouts = 0 } },
        rm.rules)
      assert.same({ "count", "policy_declined", 0, 90 },
        { rm.on_rule_error, rm.stop_reason, rm.repair_count, rm.final_validation_score })
      assert.equal(1, #srv:requests())
    end)

    it("a rule that loops forever is stopped and recorded as a timeout", function()
      rule("loop", [[return function() while true do end end]])
      srv:queue{ { content = "draft" } }
      local res, err, _, id = pipeline():generate(ctx())
      assert.is_nil(res)
      assert.matches("rule_error (loop: script exceeded its time limit (50 ms))", err, 1, true)
      local rm = metrics(id)
      assert.same({ { script = dir .. "/rules/loop.lua", slug = "loop", kind = "timeout",
                      error = "script exceeded its time limit (50 ms)", draft = 1 } }, rm.script_errors)
      assert.same({ 1, 0, 1 }, { rm.rules[1].runs, rm.rules[1].errors, rm.rules[1].timeouts })
    end)

    it("the default feedback sends the model the real issues, never rule errors, then declines", function()
      rule("boom", [[return { slug = "boom", check = function() error("kaput", 0) end }]])
      rule("no_bad", BAD_RULE)
      srv:queue{ { content = "BAD draft" }, { content = "good draft" } }
      local res, err, _, id = pipeline():generate(ctx())
      assert.is_nil(res)
      assert.matches("boom: kaput", err, 1, true)
      local reqs = srv:requests()
      assert.equal(2, #reqs)
      local sent = cjson.decode(reqs[2].body).messages
      assert.equal("Your draft has these problems; rewrite it to fix all of them:\n- remove BAD", sent[4].content)
      local rm = metrics(id)
      assert.same({ "BAD draft", "good draft" }, { rm.drafts[1].text, rm.drafts[2].text })
      assert.same({ 60, 90 }, { rm.drafts[1].score, rm.drafts[2].score })
      assert.same({ 1, 2 }, { rm.script_errors[1].draft, rm.script_errors[2].draft })
      assert.same({ "policy_declined", "only rule errors remain: boom: kaput" }, { rm.stop_reason, rm.stop_detail })
      assert.same({ 2, 2, 1 }, { rm.rules[1].runs, rm.rules[2].runs, rm.rules[2].fired }) -- boom, no_bad
    end)

    it('on_rule_error = "fail" stops at the first rule error: stored failed with RULE_ERROR', function()
      rule("boom", [[return { slug = "boom", check = function() return 42 end }]])
      rule("no_bad", BAD_RULE)
      rule("policy", [[return { on_rule_error = "fail" }]])
      srv:queue{ { content = "BAD draft" } }
      local res, err, code, id = pipeline():generate(ctx())
      local msg = "RULE_ERROR: boom: check must return nil, an issue or a list of issues"
      assert.same({ nil, msg, "RULE_ERROR" }, { res, err, code })
      local r = row(id)
      assert.same({ "failed", msg }, { r.status, r.error })
      local rm = metrics(id)
      assert.same({ "fail", "rule_error", 0 }, { rm.on_rule_error, rm.stop_reason, rm.repair_count })
      assert.same({ "bad_result", 1 }, { rm.script_errors[1].kind, rm.script_errors[1].draft })
      assert.equal(1, #rm.rules) -- no_bad never ran
      assert.equal(1, #srv:requests())
    end)

    it('on_rule_error = "ignore" records the error but adds no issue', function()
      rule("boom", [[return { slug = "boom", check = function() error("kaput", 0) end }]])
      rule("policy", [[return { on_rule_error = "ignore" }]])
      srv:queue{ { content = "draft" } }
      local res = assert(pipeline():generate(ctx()))
      local rm = metrics(res.snapshot_id)
      assert.same({ "completed", "ignore", 100 }, { row(res.snapshot_id).status, rm.on_rule_error,
        rm.final_validation_score })
      assert.same({ { text = "draft", score = 100, issues = {}, bytes = 5 } }, rm.drafts)
      assert.same({ "boom", "error", "kaput" }, { rm.script_errors[1].slug, rm.script_errors[1].kind,
        rm.script_errors[1].error })
    end)

    it("an on_rule_error that is not count, fail or ignore is a policy load error", function()
      rule("policy", [[return { on_rule_error = "maybe" }]])
      rule("boom", [[return { slug = "boom", check = function() error("kaput", 0) end }]])
      srv:queue{ { content = "draft" } }
      local p = pipeline()
      local res, _, _, id = p:generate(ctx())
      assert.is_nil(res)
      local perr = dir .. '/rules/policy.lua: on_rule_error must be "count", "fail" or "ignore"'
      assert.equal("SCRIPT: " .. perr, p:script_errors()[dir .. "/rules/policy.lua"])
      local rm = metrics(id)
      assert.equal("count", rm.on_rule_error)
      assert.same({ script = dir .. "/rules/policy.lua", slug = "policy", kind = "load_error", error = perr,
                    draft = cjson.null }, rm.script_errors[1])
    end)

    it("policy functions that raise or time out are recorded with slug policy", function()
      rule("no_bad", BAD_RULE)
      rule("policy", [[return { should_repair = function() error("nope", 0) end,
        feedback = function() while true do end end }]])
      srv:queue{ { content = "BAD draft" } }
      local _, _, _, id = pipeline():generate(ctx())
      local rm = metrics(id)
      assert.same({ { script = dir .. "/rules/policy.lua", slug = "policy", kind = "error",
                      error = "should_repair: nope", draft = cjson.null },
                    { script = dir .. "/rules/policy.lua", slug = "policy", kind = "timeout",
                      error = "feedback: script exceeded its time limit (50 ms)", draft = cjson.null } },
        rm.script_errors)
    end)

    it("a rule file that fails to load counts as a load_error", function()
      rule("broken", "return function(")
      srv:queue{ { content = "draft" } }
      local _, err, _, id = pipeline():generate(ctx())
      assert.matches("rule_error (broken: ", err, 1, true)
      local rm = metrics(id)
      assert.same({ "broken", "load_error", cjson.null },
        { rm.script_errors[1].slug, rm.script_errors[1].kind, rm.script_errors[1].draft })
      assert.same({ 0, 1, 90 }, { rm.rules[1].runs, rm.rules[1].errors, rm.drafts[1].score })
    end)

    it("keeps all three drafts of a two-repair generation byte-exact, and show prints the sequence", function()
      rule("no_bad", BAD_RULE)
      local d1 = "BAD one  \r\n\t\"quoted\" \226\128\156x\226\128\157 "
      local d2, d3 = "BAD two\n\n", "good three \240\159\142\137 "
      srv:queue{ { content = d1 }, { content = d2 }, { content = d3 } }
      local res = assert(pipeline():generate(ctx()))
      local rm = metrics(res.snapshot_id)
      local issue = { { slug = "no_bad", message = "remove BAD", penalty = 30 } }
      assert.same({ { text = d1, score = 70, issues = issue, bytes = #d1 },
                    { text = d2, score = 70, issues = issue, bytes = #d2 },
                    { text = d3, score = 100, issues = {}, bytes = #d3 } }, rm.drafts)
      assert.same({ {}, 2, "count" }, { rm.script_errors, rm.repair_count, rm.on_rule_error })
      assert.same({ { slug = "no_bad", path = dir .. "/rules/no_bad.lua", runs = 3, fired = 2, errors = 0,
                      timeouts = 0 } }, rm.rules)
      assert.equal(d3, row(res.snapshot_id).content)

      local out, err, rc = cli("--db " .. q(db) .. " show " .. res.snapshot_id)
      assert.same({ "", 0 }, { err, rc })
      local log = out:match("== repair log ==\n(.-)\n== ")
      assert.equal(table.concat({
        "  draft 1  score 70",
        "    " .. d1:gsub("\n", "\n    "),
        "    issues:   no_bad: remove BAD (-30)",
        "    feedback: Your draft has these problems; rewrite it to fix all of them:",
        "              - remove BAD",
        "  draft 2  score 70",
        "    " .. d2:gsub("\n", "\n    "),
        "    issues:   no_bad: remove BAD (-30)",
        "    feedback: Your draft has these problems; rewrite it to fix all of them:",
        "              - remove BAD",
        "  draft 3  score 100",
        "    " .. d3,
        "    issues:   -",
        "  stop: passed; on_rule_error count",
        "" }, "\n"), log)
    end)

    it("deleting a broken rule clears its error and it no longer judges drafts", function()
      rule("boom", [[return { slug = "boom", check = function() error("kaput", 0) end }]])
      rule("broken", "return function(")
      srv:queue{ { content = "draft" }, { content = "draft" } }
      local p = pipeline()
      assert.is_nil((p:generate(ctx())))
      local errs = p:script_errors()
      assert.truthy(errs[dir .. "/rules/boom.lua"])
      assert.truthy(errs[dir .. "/rules/broken.lua"])
      os.remove(dir .. "/rules/boom.lua")
      os.remove(dir .. "/rules/broken.lua")
      assert.same({}, p:script_errors())
      local res = assert(p:generate(ctx()))
      local rm = metrics(res.snapshot_id)
      assert.same({ {}, {}, 100 }, { rm.script_errors, rm.rules, rm.final_validation_score })
    end)

    it("deleting a broken template clears its error", function()
      local p = pipeline()
      srv:queue{ { content = "draft" } }
      assert(p:generate(ctx()))
      tmp.write(dir .. "/templates/launch.lua", "return {{{ broken template")
      srv:queue{ { content = "draft" } }
      p:generate(ctx())
      assert.truthy(p:script_errors()[dir .. "/templates/launch.lua"])
      os.remove(dir .. "/templates/launch.lua")
      assert.is_nil(p:script_errors()[dir .. "/templates/launch.lua"])
    end)
  end)
end

require("spec.support.stores").both("whole truth", suite)
