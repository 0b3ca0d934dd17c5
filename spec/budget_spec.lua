-- spec/budget_spec.lua
-- Owns: issue 18 part 2 on both stores, through the real libcurl client and
-- the local provider (tools/local_provider.lua): the local count of the
-- prompt sent on every call (local_input_tokens) beside the billed one;
-- usage filled from local counts and flagged usage_source = "estimated" when
-- a stream sends none, priced from them; pipeline:estimate(ctx) (exact prompt
-- tokens, cost from no output to max_tokens); budgets (refuse with no
-- provider request and the reason stored, warn, hot reload, the spend cache);
-- `genaudit report billing` against the stored calls.
local genaudit = require("genaudit")
local tokens = require("genaudit.tokens")
local core = require("genaudit.core")
local cjson = require("cjson")
local provider_server = require("spec.support.provider")
local tmp = require("spec.support.tmp")
local stores = require("spec.support.stores")
local util = require("spec.support.util")
local pg = require("spec.support.pg")

local KEY = "sk-budget-spec-0123456789abcdef"
local PRICES = {
  ["gpt-4o-mini"] = { input_cost_per_token = 1.5e-07, output_cost_per_token = 6e-07 },
  ["claude-3-5-haiku"] = { input_cost_per_token = 8e-07, output_cost_per_token = 4e-06 },
}
local IN_PICO, OUT_PICO = 150000, 600000 -- gpt-4o-mini, picodollars per token
local TEXT = "Meet the Anvil 2: forged for decades, tested in Lyon \240\159\148\168 d\195\169j\195\160 ready."
  .. "\n\n#launch"

local function ctx(extra)
  local c = { org_id = 42, user_id = 7, platform = "linkedin", template_id = "launch",
              business = { name = "Acme", tone = "formal" }, facts = { product = "Anvil 2" },
              params = { temperature = 0.5, max_tokens = 200 } }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

local function dec(s) return string.format("%d", s) end

stores.both("budgets and local token counts", function(name, open, describe_fn)
  describe_fn(name, function()
    local srv, dir, store, db

    local function provider(wire)
      local make = wire == "anthropic" and genaudit.providers.anthropic or genaudit.providers.openai
      return make{ base_url = srv.url, api_key = KEY,
                   model = wire == "anthropic" and "claude-3-5-haiku" or "gpt-4o-mini" }
    end

    local function pipeline(opts)
      opts = opts or {}
      return genaudit.pipeline{
        store = store, provider = provider(opts.wire), templates = dir .. "/templates", rules = dir .. "/rules",
        pricing = assert(genaudit.pricing.load(PRICES)), backoff_ms = 10, budgets = opts.budgets,
        budget_cache_ttl_ms = opts.ttl,
      }
    end

    local function row(id)
      local r = assert(store:query("SELECT * FROM generation_snapshots WHERE id = ?", { id }))[1]
      for _, k in ipairs({ "token_metrics", "performance_metrics", "repair_metrics" }) do r[k] = cjson.decode(r[k]) end
      return r
    end

    local function spent_pico(org)
      local r = assert(store:query("SELECT CAST(sum(estimated_cost_picousd) AS TEXT) AS s FROM generation_snapshots"
        .. " WHERE org_id = ?", { org }))[1]
      return r.s and tostring(r.s) or "0"
    end

    local function sent_messages(i)
      local reqs = srv:requests()
      return cjson.decode(reqs[i or #reqs].body).messages
    end

    setup(function() srv = provider_server.start{ api_key = KEY } end)
    teardown(function() srv:stop() end)

    before_each(function()
      srv:reset()
      dir = tmp.dir()
      os.execute("mkdir -p " .. dir .. "/templates " .. dir .. "/rules")
      tmp.write(dir .. "/templates/launch.lua", [[return {
        version = "7", voice_signature = "You are {{business.name}}.",
        constraints = { "At most 20 words." }, task = "Announce {{facts.product}}." }]])
      tmp.write(dir .. "/rules/policy.lua", [[return { budget = 2 }]])
      store, db = open(dir)
    end)

    after_each(function()
      store:close()
      tmp.rm(dir)
    end)

    it("records the local count of the prompt sent beside the billed one, usage_source provider", function()
      srv:queue{ { content = TEXT } }
      local r = assert(pipeline():generate(ctx()))
      local tm = row(r.snapshot_id).token_metrics
      local call = tm.calls[1]
      assert.equal(tokens.count_messages(sent_messages(), "gpt-4o-mini"), call.local_input_tokens)
      assert.equal(call.local_input_tokens, tm.local_input_tokens)
      assert.equal("provider", call.usage_source)
      assert.equal("provider", tm.usage_source)
      assert.is_number(call.prompt_tokens) -- the local provider's own (byte-based) count, as billed
    end)

    it("records no local count for a model without an exact local encoding (Anthropic)", function()
      srv:queue{ { content = TEXT } }
      local r = assert(pipeline{ wire = "anthropic" }:generate(ctx()))
      local call = row(r.snapshot_id).token_metrics.calls[1]
      assert.equal(cjson.null, call.local_input_tokens)
      assert.equal("provider", call.usage_source)
    end)

    for _, how in ipairs({ "a stream sends none", "a plain answer has none (issue 18.3)" }) do
    local streamed = how == "a stream sends none"
    it("fills usage from local counts when " .. how .. ": usage_source estimated, priced, counted as spend",
      function()
      srv:queue{ streamed and { content = TEXT, stream_usage = false } or { content = TEXT, usage = false } }
      local path = dir .. "/budgets.lua"
      tmp.write(path, [[return { { org = 42, period = "day", limit_usd = "10", action = "refuse" } }]])
      local pl = pipeline{ budgets = path, ttl = 0 }
      local r = assert(pl:generate(ctx(), streamed and { stream = true } or nil))
      local stored = row(r.snapshot_id)
      assert.equal("completed", stored.status)
      local tm, call = stored.token_metrics, stored.token_metrics.calls[1]
      local p = tokens.count_messages(sent_messages(), "gpt-4o-mini")
      local c = assert(tokens.count(TEXT, "gpt-4o-mini"))
      assert.same({ p, c, p, "estimated", true }, { call.prompt_tokens, call.completion_tokens,
        call.local_input_tokens, call.usage_source, call.usage_missing })
      assert.equal("estimated", tm.usage_source)
      assert.is_true(tm.usage_missing)
      assert.equal("local_estimate", tm.cost_source)
      assert.equal(dec(p * IN_PICO + c * OUT_PICO), dec(tm.estimated_cost_picousd))
      assert.equal(dec(p * IN_PICO + c * OUT_PICO), tostring(stored.estimated_cost_picousd))
      assert.equal(streamed or nil, stored.performance_metrics.calls[1].streamed)
      -- the record hash covers it: the chain verifies
      local v = assert(store:verify())
      assert.is_true(v.ok, cjson.encode(v.problems))
      -- a budget counts its cost as spent: the next check sees it
      srv:queue{ { content = TEXT } }
      local r2 = assert(pl:generate(ctx()))
      assert.equal(genaudit.budget.usd_of_pico(dec(p * IN_PICO + c * OUT_PICO)), r2.budget.checks[1].spent_usd)
    end)
    end

    it("an Anthropic stream without usage stays of unknown usage and cost (no exact local count)", function()
      srv:queue{ { content = TEXT, stream_usage = false } }
      local r = assert(pipeline{ wire = "anthropic" }:generate(ctx(), { stream = true }))
      local tm = row(r.snapshot_id).token_metrics
      assert.equal(cjson.null, tm.estimated_cost)
      assert.equal("no_usage", tm.cost_source)
      assert.is_nil(tm.calls[1].usage_source)
    end)

    it("estimate(ctx): exact prompt tokens of the request generate sends, cost from 0 to max_tokens of output",
      function()
        local pl = pipeline()
        local est = assert(pl:estimate(ctx()))
        assert.equal(0, #srv:requests()) -- no call
        srv:queue{ { content = TEXT } }
        assert(pl:generate(ctx()))
        local n = tokens.count_messages(sent_messages(), "gpt-4o-mini")
        assert.equal(n, est.prompt_tokens)
        assert.equal("o200k_base", est.encoding)
        assert.equal(200, est.max_tokens)
        assert.equal(dec(n * IN_PICO), est.min_cost_picousd)
        assert.equal(dec(n * IN_PICO + 200 * OUT_PICO), est.max_cost_picousd)
        assert.equal(core.usd_from_picousd(dec(n * IN_PICO)), est.min_cost_usd)
        local no_max = assert(pl:estimate(ctx{ params = {} }))
        assert.is_nil(no_max.max_cost_usd)
        local _, err, code = pipeline{ wire = "anthropic" }:estimate(ctx())
        assert.equal("UNKNOWN_ENCODING", code)
        assert.matches("claude%-3%-5%-haiku", err)
      end)

    it("refuses a generation over its budget: BUDGET_EXCEEDED stored, no provider request made", function()
      local path = dir .. "/budgets.lua"
      tmp.write(path, [[return { { org = 42, period = "day", limit_usd = "0.0003", action = "refuse",
                                    name = "acme daily" } }]])
      local pl = pipeline{ budgets = path }
      local est = assert(pl:estimate(ctx()))
      local refused
      for _ = 1, 20 do
        local before_spent, before_requests = spent_pico("42"), #srv:requests()
        srv:queue{ { content = TEXT } }
        local r, err, code, id = pl:generate(ctx())
        if not r then
          refused = { err = err, code = code, id = id, spent = before_spent, requests = before_requests }
          break
        end
        -- it went ahead: spent + worst case was within the limit
        assert.is_true(tonumber(before_spent) + tonumber(est.max_cost_picousd) <= 3e8)
        assert.equal("pass", r.budget.decision)
      end
      assert.truthy(refused, "no generation was refused")
      assert.equal("BUDGET_EXCEEDED", refused.code)
      assert.matches("^BUDGET_EXCEEDED: acme daily: ", refused.err)
      assert.equal(refused.requests, #srv:requests()) -- no provider request for the refused one
      assert.is_true(tonumber(refused.spent) + tonumber(est.max_cost_picousd) > 3e8)
      local stored = row(refused.id)
      assert.equal("failed", stored.status)
      assert.equal(refused.err, stored.error)
      assert.equal(0, #stored.token_metrics.calls)
      assert.equal("no_calls", stored.token_metrics.cost_source)
      local b = stored.repair_metrics.budget
      assert.equal("refuse", b.decision)
      assert.equal("acme daily", b.refused_by)
      assert.equal("max_cost", b.basis)
      assert.equal(genaudit.budget.usd_of_pico(est.max_cost_picousd), b.estimate_usd)
      assert.equal(est.prompt_tokens, b.estimate.prompt_tokens)
      local c = b.checks[1]
      assert.same({ "acme daily", "42", "day", "0.0003", "refuse", true },
        { c.name, c.org, c.period, c.limit_usd, c.action, c.exceeded })
      assert.equal(genaudit.budget.usd_of_pico(refused.spent), c.spent_usd)
      assert.equal(os.date("!%Y-%m-%d 00:00:00"), c.since)
      -- the budget script that decided is pinned like rules
      local pinned = stored.repair_metrics.scripts.budget
      assert.equal(core.sha256(tmp.read(path)), pinned.digest)
      assert.equal(tmp.read(path), assert(store:get_script(pinned.digest)).source)
      -- the reports do not count it as a call or a cost: every call billing counts reached the provider,
      -- and the failed rows' cost is 0
      local billing = assert(genaudit.report.billing(store))
      assert.equal(#srv:requests(), billing.rows[1].calls)
      local cost = assert(genaudit.report.cost(store, { status = "failed" }))
      assert.same({ 1, 0 }, { cost.rows[1].posts, cost.rows[1].total_cost })
      assert.equal(#srv:requests(), assert(genaudit.report.cost(store)).rows[1].posts)
    end)

    it("warns and goes on when the budget says warn; the warning is stored and returned", function()
      local path = dir .. "/budgets.lua"
      tmp.write(path, [[return function(ctx)
        return { { template = ctx.template_id, period = "month", limit_usd = 0, action = "warn" } } end]])
      srv:queue{ { content = TEXT } }
      local r = assert(pipeline{ budgets = path }:generate(ctx()))
      assert.equal(1, #srv:requests())
      assert.equal("warn", r.budget.decision)
      assert.same({ "template launch per month" }, r.budget.warnings)
      local stored = row(r.snapshot_id)
      assert.equal("completed", stored.status)
      assert.equal("warn", stored.repair_metrics.budget.decision)
      assert.equal(os.date("!%Y-%m-01 00:00:00"), stored.repair_metrics.budget.checks[1].since)
    end)

    it("hot-reloads the budget script: the next generation sees the edit", function()
      local path = dir .. "/budgets.lua"
      tmp.write(path, [[return { { org = 42, period = "month", limit_usd = "100", action = "refuse" } }]])
      local pl = pipeline{ budgets = path }
      srv:queue{ { content = TEXT }, { content = TEXT } }
      assert(pl:generate(ctx()))
      tmp.write(path, [[return { { org = 42, period = "month", limit_usd = "0.000001", action = "refuse" } }]])
      local r, _, code, id = pl:generate(ctx())
      assert.is_nil(r)
      assert.equal("BUDGET_EXCEEDED", code)
      assert.equal(1, #srv:requests())
      assert.equal("0.000001", row(id).repair_metrics.budget.checks[1].limit_usd)
      -- a broken edit keeps the last good version in force, and says so
      tmp.write(path, [[return { { org = 42, period = "fortnight", limit_usd = "1" } }]])
      _, _, code = pl:generate(ctx())
      assert.equal("BUDGET_EXCEEDED", code)
      assert.matches("period must be 'day' or 'month'", pl:script_errors()[path])
      -- a limit for another org does not apply
      tmp.write(path, [[return { { org = "other", period = "day", limit_usd = "0" } }]])
      assert(pl:generate(ctx()))
    end)

    it("caches the spend per scope for budget_cache_ttl_ms: one query, its own spending added", function()
      local path = dir .. "/budgets.lua"
      tmp.write(path, [[return { { org = 42, period = "day", limit_usd = "10", action = "refuse" },
                                 { org = 42, period = "month", limit_usd = "10", action = "refuse" } }]])
      local pl = pipeline{ budgets = path, ttl = 3600 * 1000 }
      srv:queue{ { content = TEXT }, { content = TEXT }, { content = TEXT } }
      local r1 = assert(pl:generate(ctx()))
      assert.equal(1, pl.budget.queries) -- day and month of one scope: one query
      -- a row written by someone else within the TTL is not seen yet ...
      assert(pipeline():generate(ctx()))
      local r2 = assert(pl:generate(ctx()))
      assert.equal(1, pl.budget.queries)
      assert.is_true(r2.budget.checks[1].cached)
      -- ... but this pipeline's own first generation is
      assert.equal(genaudit.budget.usd_of_pico(dec(row(r1.snapshot_id).estimated_cost_picousd)),
        r2.budget.checks[1].spent_usd)
      -- no cache: every check asks the store and sees every row
      local fresh = pipeline{ budgets = path, ttl = 0 }
      srv:queue{ { content = TEXT } }
      local before = spent_pico("42")
      local r3 = assert(fresh:generate(ctx()))
      assert.equal(genaudit.budget.usd_of_pico(before), r3.budget.checks[1].spent_usd)
      assert.equal(2, fresh.budget.queries) -- the day's limit and the month's each asked
    end)

    it("the spend query of each scope is answered from an index on org_id or template_id, then created_at",
      function()
        local b = genaudit.budget.new{ path = dir .. "/none.lua", store = store }
        local pgsql = store.backend == "postgresql"
        for _, case in ipairs({ { { org = "42" }, "snapshots_org_time" },
                                { { template = "launch" }, "snapshots_template_time" },
                                { { org = "42", template = "launch" }, "snapshots_" } }) do
          local sql, params = b:spend_sql(case[1], b:period_starts())
          local plan = {}
          if pgsql then -- through psql, with sequential scans off (a near-empty table is read whole)
            local k = 0
            local literal = sql:gsub("%?", function()
              k = k + 1
              return "'" .. params[k] .. "'"
            end)
            local out, ok = pg.psql("SET enable_seqscan = off; EXPLAIN " .. literal, db:match("search_path%%3D(.+)$"))
            assert(ok, out)
            plan = out
          else
            for _, l in ipairs(assert(store:query("EXPLAIN QUERY PLAN " .. sql, params))) do
              plan[#plan + 1] = l.detail
            end
            plan = table.concat(plan, "\n")
          end
          assert.matches(pgsql and ("Index [%a ]*Scan using " .. case[2])
            or ("SEARCH generation_snapshots USING [%a ]*INDEX " .. case[2]), plan)
        end
      end)

    it("report billing: billed against local input tokens per provider and model, as the stored calls say",
      function()
        local pl = pipeline()
        for i = 1, 3 do
          srv:queue{ { content = TEXT .. string.rep(" more", i) } }
          assert(pl:generate(ctx()))
        end
        srv:queue{ { content = TEXT, stream_usage = false } }
        assert(pl:generate(ctx(), { stream = true }))
        srv:queue{ { content = TEXT, usage = false } } -- a plain answer without usage: estimated too
        assert(pl:generate(ctx()))
        srv:queue{ { content = TEXT } }
        assert(pipeline{ wire = "anthropic" }:generate(ctx()))
        srv:queue{ { content = TEXT, usage = false } } -- no local encoding: a call of unknown usage
        assert(pipeline{ wire = "anthropic" }:generate(ctx()))
        -- the expected figures, from the stored documents
        local want = {}
        local all = assert(store:query("SELECT token_metrics, performance_metrics FROM generation_snapshots"))
        for _, r in ipairs(all) do
          local tm, pm = cjson.decode(r.token_metrics), cjson.decode(r.performance_metrics)
          for _, c in ipairs(tm.calls) do
            local key = pm.provider .. "|" .. (c.served_model or c.model)
            local w = want[key] or { calls = 0, compared = 0, differing = 0, billed = 0, loc = 0, estimated = 0 }
            want[key] = w
            w.calls = w.calls + 1
            if c.usage_source == "estimated" then
              w.estimated = w.estimated + 1
            elseif type(c.local_input_tokens) == "number" and type(c.prompt_tokens) == "number" then
              w.compared = w.compared + 1
              w.billed, w.loc = w.billed + c.prompt_tokens, w.loc + c.local_input_tokens
              if c.prompt_tokens ~= c.local_input_tokens then w.differing = w.differing + 1 end
            end
          end
        end
        local out, err, rc = util.cli("--json --db " .. util.q(db) .. " report billing")
        assert.same({ "", 0 }, { err, rc })
        local rep = cjson.decode(out)
        assert.equal(7, rep.counted.rows)
        local seen = 0
        for _, r in ipairs(rep.rows) do
          local w = assert(want[r.provider .. "|" .. r.model], r.provider .. "|" .. r.model)
          seen = seen + 1
          assert.same({ w.calls, w.compared, w.differing, w.estimated },
            { r.calls, r.compared, r.differing, r.estimated })
          if w.compared > 0 then
            assert.same({ w.billed, w.loc, w.billed - w.loc }, { r.billed_input_tokens, r.local_input_tokens,
              r.diff_tokens })
          end
        end
        local n = 0
        for _ in pairs(want) do n = n + 1 end
        assert.equal(n, seen)
        local openai = want["openai|gpt-4o-mini-2024-07-18"]
        assert.same({ 5, 3, 2 }, { openai.calls, openai.compared, openai.estimated })
        local anthropic = want["anthropic|claude-3-5-haiku-2024-07-18"]
        assert.same({ 2, 0, 0 }, { anthropic.calls, anthropic.compared, anthropic.estimated })
      end)
  end)
end)

describe("genaudit.budget", function()
  local b = genaudit.budget
  it("reads examples/budgets.lua", function()
    local store = assert(genaudit.open("sqlite::memory:"))
    local bud = b.new{ path = "examples/budgets.lua", store = store }
    local limits = assert(bud:limits({ org_id = 100, template_id = "launch-post" }))
    assert.same({ "demo daily", "template launch-post per month" }, { limits[1].name, limits[2].name })
    local rec = assert(bud:check({ org_id = 100, template_id = "launch-post" }, "1000"))
    assert.equal("pass", rec.decision)
    assert.equal(2, #rec.checks)
    store:close()
  end)

  it("refuses a script with a bad limit, naming it", function()
    local dir = tmp.dir()
    local store = assert(genaudit.open("sqlite::memory:"))
    tmp.write(dir .. "/b.lua", [[return { { org = "a", period = "day", limit_usd = "1.2.3" } }]])
    local _, err, code = b.new{ path = dir .. "/b.lua", store = store }:check({ org_id = "a", template_id = "t" })
    assert.equal("BUDGET", code)
    assert.matches("limit 1: limit_usd must be a decimal string", err)
    tmp.write(dir .. "/c.lua", [[return function() while true do end end]])
    _, err, code = b.new{ path = dir .. "/c.lua", store = store, script_timeout_ms = 50 }:check({ org_id = "a",
      template_id = "t" })
    assert.equal("BUDGET", code)
    assert.matches("time limit", err)
    store:close()
    tmp.rm(dir)
  end)

  it("adds, compares and converts picodollars exactly", function()
    assert.equal("5000000000000", b.pico_of_usd("5.00"))
    assert.equal("1", b.pico_of_usd("0.000000000001"))
    assert.equal("10000000000000000000000001", b.dec_add("9999999999999999999999999", "2"))
    assert.equal(1, b.dec_cmp("10", "9"))
    assert.equal(0, b.dec_cmp("007", "7"))
    assert.equal("0.000001", b.usd_of_pico("1000000"))
    assert.equal("12.50", b.usd_of_pico("12500000000000"))
    assert.is_nil(b.pico_of_usd("1.0000000000001"))
    assert.is_nil(b.pico_of_usd("-1"))
  end)
end)
