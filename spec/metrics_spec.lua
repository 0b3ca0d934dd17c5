-- spec/metrics_spec.lua
-- Owns: `genaudit metrics` (lua/genaudit/metrics.lua): the Prometheus text
-- exposition of a store filled through the real pipeline and local provider
-- (repairs, a broken rule, a failed generation, a replay), on both stores:
-- the real `promtool check metrics` accepts it, and its values equal what
-- SQL over the same rows says.

local genaudit = require("genaudit")
local json = require("genaudit.json")
local core = require("genaudit.core")
local tmp = require("spec.support.tmp")
local pg = require("spec.support.pg")
local util = require("spec.support.util")
local provider_server = require("spec.support.provider")

local q, cli = util.q, util.cli
local KEY = "sk-metrics-spec"
local PRICES = "lua/genaudit/data/litellm-model-prices-2026-07.json"

local function sh(cmd)
  local p = assert(io.popen("env -u LD_PRELOAD " .. cmd .. " 2>&1; echo \"rc=$?\""))
  local all = p:read("a")
  p:close()
  local out, rc = all:match("^(.*)rc=(%d+)\n$")
  return out, tonumber(rc)
end

-- name{labels} -> value, for every sample line
local function samples(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    if not line:find("^#") then
      local key, v = line:match("^(.-) (%S+)$")
      out[key] = tonumber(v) or (v == "+Inf" and math.huge) or v
    end
  end
  return out
end

local function suite(name, open, describe_fn)
  describe_fn(name, function()
    local srv, dir, store, db

    setup(function()
      srv = provider_server.start{ api_key = KEY }
      dir = tmp.dir()
      os.execute("mkdir -p " .. dir .. "/templates " .. dir .. "/rules")
      tmp.write(dir .. "/templates/launch.lua", [[return { version = "1",
        voice_signature = "You are {{business.name}}.", task = "Announce {{facts.product}}." }]])
      tmp.write(dir .. "/rules/no_bad.lua", [[return { slug = "no_bad", check = function(d)
        if d:find("BAD", 1, true) then return { { slug = "no_bad", message = "remove BAD", penalty = 30 } } end
      end }]])
      tmp.write(dir .. "/rules/boom.lua", [[return { slug = "boom", check = function() error("kaput", 0) end }]])
      tmp.write(dir .. "/rules/policy.lua", [[return { on_rule_error = "ignore" }]])
      store, db = open(dir)
      local p = genaudit.pipeline{
        store = store, templates = dir .. "/templates", rules = dir .. "/rules",
        provider = genaudit.providers.openai{ base_url = srv.url, api_key = KEY, model = "gpt-4o-mini" },
        pricing = assert(genaudit.pricing.load(PRICES)), backoff_ms = 10, script_timeout_ms = 50, retries = 0,
      }
      local ctx = { org_id = "o", user_id = "u", platform = "linkedin", template_id = "launch",
                    business = { name = "Acme" }, facts = { product = "Anvil" } }
      srv:queue{ { content = "BAD first" }, { content = "good second" } } -- one repair
      assert(p:generate(ctx))
      srv:queue{ { content = "fine" } }
      local ok = assert(p:generate(ctx))
      srv:queue{ { status = 500, body = "{}" } } -- failed
      local _, _, _, failed = p:generate(ctx)
      assert(failed)
      srv:reset()
      assert(genaudit.replay(store, ok.snapshot_id, {
        provider = genaudit.providers.openai{ base_url = srv.url, api_key = KEY, model = "gpt-4o-mini" },
        pricing = assert(genaudit.pricing.load(PRICES)) }))
    end)
    teardown(function()
      store:close()
      srv:stop()
      tmp.rm(dir)
      pg.drop_schemas()
    end)

    it("is valid exposition for the real promtool, with the semconv buckets", function()
      local out, err, rc = cli("--db " .. q(db) .. " metrics")
      assert.same({ "", 0 }, { err, rc })
      tmp.write(dir .. "/metrics.prom", out)
      local res, prc = sh("promtool check metrics < " .. q(dir .. "/metrics.prom"))
      assert.same({ "", 0 }, { res, prc })
      for _, fam in ipairs({ "genaudit_generations_total counter", "genaudit_cost_usd_total counter",
                             "gen_ai_client_token_usage histogram",
                             "gen_ai_client_operation_duration_seconds histogram" }) do
        assert.truthy(out:find("# TYPE " .. fam .. "\n", 1, true), fam)
      end
      assert.truthy(out:find('le="67108864"}', 1, true))
      assert.truthy(out:find('le="81.92"}', 1, true))
      assert.is_nil(out:find("org_id", 1, true)) -- no tenant or user labels
    end)

    it("counts what the rows say", function()
      local out = cli("--db " .. q(db) .. " metrics")
      local s = samples(out)
      assert.equal(2, s['genaudit_generations_total{status="completed",template="launch"}'])
      assert.equal(1, s['genaudit_generations_total{status="failed",template="launch"}'])
      assert.equal(1, s['genaudit_replays_total{status="completed",template="launch"}'])
      assert.equal(1, s['genaudit_repairs_total{template="launch"}'])
      assert.equal(1, s['genaudit_repair_types_total{template="launch",type="no_bad"}'])
      -- boom raised on every draft it judged: 2 + 1 (+ the replay judges nothing)
      assert.equal(3, s['genaudit_rule_errors_total{rule="boom",kind="error"}'])
      assert.equal(0, s['genaudit_rule_errors_total{rule="boom",kind="timeout"}'])
      -- cost: the exact sum SQL gives, per model
      local rows = assert(store:query("SELECT model_identifier, CAST(sum(estimated_cost_picousd) AS TEXT) AS p"
        .. " FROM generation_snapshots WHERE estimated_cost_picousd IS NOT NULL GROUP BY model_identifier", {}))
      assert.is_true(#rows >= 1)
      for _, r in ipairs(rows) do
        assert.equal(core.usd_from_picousd(r.p),
          s['genaudit_cost_usd_total{template="launch",model="' .. r.model_identifier .. '"}'])
      end
      -- token histogram: one input sample per priced call, summing the calls' prompt tokens
      local calls, input = 0, 0
      for _, r in ipairs(assert(store:query("SELECT token_metrics FROM generation_snapshots", {}))) do
        for _, c in ipairs(json.decode(r.token_metrics).calls or {}) do
          if type(c.prompt_tokens) == "number" then
            calls, input = calls + 1, input + c.prompt_tokens
          end
        end
      end
      local n, sum = 0, 0
      for k, v in pairs(s) do
        local input_series = k:find('gen_ai_token_type="input"', 1, true)
        if input_series and k:find("^gen_ai_client_token_usage_count{") then n = n + v end
        if input_series and k:find("^gen_ai_client_token_usage_sum{") then sum = sum + v end
      end
      assert.same({ calls, input }, { n, sum })
      assert.is_true(calls >= 4)
    end)
  end)
end

require("spec.support.stores").both("genaudit metrics", suite)
