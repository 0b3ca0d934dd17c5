-- Issue 13, point 5, through the real pipeline and the local provider server,
-- on both stores: cost, repairs and latency count completed generations that
-- are not replays by default (a failed generation and a replay, both with a
-- known cost, do not move their answers); --status all --include-replays
-- takes them in; every report says what it counted; costs are summed
-- exactly in integer picodollars (0.1 + 0.2 + 0.3 USD: a float sum is off in
-- the last digit, the exact one is not); `report rules` counts per rule. The
-- SQLite and PostgreSQL answers are compared with each other at the end.
local genaudit = require("genaudit")
local core = require("genaudit.core")
local json = require("genaudit.json")
local cjson = require("cjson")
local provider_server = require("spec.support.provider")
local tmp = require("spec.support.tmp")
local pg = require("spec.support.pg")
local util = require("spec.support.util")
local q, cli, parse_csv = util.q, util.cli, util.parse_csv

local KEY = "sk-honest-9a8b7c6d5e-SECRET"
-- 1e-7 USD (100000 picodollars) per prompt token; the calls below report no
-- completion tokens, so 1e6 prompt tokens cost exactly 0.1 USD
local PRICES = { ["gpt-4o-mini"] = { input_cost_per_token = 1e-07, output_cost_per_token = 6e-07 } }
local PICO_PER_TOKEN = 100000

local BAD_RULE = [[return { slug = "no_bad", check = function(d)
  if d:find("BAD", 1, true) then return { message = "remove BAD", penalty = 30 } end end }]]
local CRASH_RULE = [[return { slug = "crash", check = function(d)
  if d:find("CRASH", 1, true) then error("kaput", 0) end end }]]

local function usage(tokens) return { prompt_tokens = tokens, completion_tokens = 0, total_tokens = tokens } end

local function ctx()
  return { org_id = 42, user_id = 7, platform = "linkedin", template_id = "launch",
           business = { name = "Acme" }, facts = { product = "Anvil 2" } }
end

-- the CLI outputs of each store, compared once both have run
local outputs = {}

local function suite(name, open, describe_fn)
  describe_fn(name, function()
    local srv, dir, store, db
    local ids = {}
    local out = {}
    outputs[#outputs + 1] = out

    local function report(args)
      local o, err, rc = cli("--db " .. q(db) .. " " .. args)
      assert.same({ "", 0 }, { err, rc }, args)
      out[args] = o
      return o
    end

    local function jreport(args) return cjson.decode(report("--json " .. args)) end

    setup(function()
      srv = provider_server.start{ api_key = KEY }
      dir = tmp.dir()
      os.execute("mkdir -p " .. dir .. "/templates " .. dir .. "/rules")
      tmp.write(dir .. "/templates/launch.lua", [[return { version = "1",
        voice_signature = "You are {{business.name}}.", task = "Announce {{facts.product}}." }]])
      tmp.write(dir .. "/rules/no_bad.lua", BAD_RULE)
      tmp.write(dir .. "/rules/crash.lua", CRASH_RULE)
      store, db = open(dir)
      local pricing = assert(genaudit.pricing.load(PRICES))
      local provider = genaudit.providers.openai{ base_url = srv.url, api_key = KEY, model = "gpt-4o-mini" }
      local p = genaudit.pipeline{ store = store, templates = dir .. "/templates", rules = dir .. "/rules",
        provider = provider, pricing = pricing, backoff_ms = 10, script_timeout_ms = 200 }
      -- three completed generations: 0.1, 0.2 and 0.3 USD (the last one repaired once: 0.2 + 0.1)
      srv:queue{ { content = "a fine draft", usage = usage(1000000) } }
      ids.a = assert(p:generate(ctx())).snapshot_id
      srv:queue{ { content = "another fine draft", usage = usage(2000000) } }
      ids.b = assert(p:generate(ctx())).snapshot_id
      srv:queue{ { content = "a BAD draft", usage = usage(2000000) },
                 { content = "a good draft", usage = usage(1000000) } }
      ids.c = assert(p:generate(ctx())).snapshot_id
      -- a failed generation with a known cost (0.5 USD) and a repair: draft 2 breaks the crash rule
      srv:queue{ { content = "a BAD draft", usage = usage(4000000) }, { content = "CRASH", usage = usage(1000000) } }
      local res, _, code, fid = p:generate(ctx())
      assert.same({ nil, "REPAIR_EXHAUSTED" }, { res, code })
      ids.failed = fid
      -- a replay of the first one, with a known cost (1e-7 USD)
      srv:queue{ { content = "a fine draft", usage = usage(1) } }
      ids.replay = assert(genaudit.replay(store, ids.a, { provider = provider, pricing = pricing })).snapshot_id
    end)

    teardown(function()
      store:close()
      tmp.rm(dir)
      srv:stop()
      pg.drop_schemas()
    end)

    local function row(id)
      return assert(store:query("SELECT * FROM generation_snapshots WHERE id = ?", { id }))[1]
    end

    it("stores the exact cost of every snapshot and of each call as JSON integers", function()
      local tm = json.decode(row(ids.c).token_metrics)
      assert.same({ 3 * 1e6 * PICO_PER_TOKEN, 0.3 }, { tm.estimated_cost_picousd, tm.estimated_cost })
      assert.same({ 2e6 * PICO_PER_TOKEN, 1e6 * PICO_PER_TOKEN },
        { tm.calls[1].cost_picousd, tm.calls[2].cost_picousd })
      assert.truthy(row(ids.c).token_metrics:find('"estimated_cost_picousd":300000000000', 1, true))
      assert.same({ 300000000000, 500000000000, 100000 },
        { row(ids.c).estimated_cost_picousd, row(ids.failed).estimated_cost_picousd,
          row(ids.replay).estimated_cost_picousd })
      assert.same({ "failed", ids.a }, { row(ids.failed).status, row(ids.replay).replay_of })
    end)

    describe("report cost", function()
      it("counts completed non-replays by default, and says so", function()
        local text = report("report cost")
        assert.equal("counted: completed generations, replays excluded (3 rows)", text:match("^[^\n]*"))
        local doc = jreport("report cost")
        assert.same({ status = "completed", replays = "excluded", rows = 3 }, doc.counted)
        assert.same({ "launch", 3, 3 }, { doc.rows[1].template_id, doc.rows[1].posts, doc.rows[1].priced_posts })
      end)

      it("averages the exact sum of the parts, to the last digit", function()
        local float_sum = 0.1 + 0.2 + 0.3
        local exact = core.usd_from_picousd(600000000000)
        assert.are_not.equal(exact, float_sum) -- 0.6000000000000001 vs 0.6
        assert.equal(0.6, exact)
        local r = assert(genaudit.report.cost(store, { template = "launch" })).rows[1]
        assert.equal(exact, r.total_cost)
        assert.equal(exact / 3, r.avg_cost)
        assert.are_not.equal(float_sum / 3, r.avg_cost) -- 0.19999999999999998 vs 0.20000000000000004
        -- the README's Financial Test SQL gives the same double on this store
        local real = store.backend == "postgresql" and "double precision" or "REAL"
        local sql = assert(store:query("SELECT count(*) AS posts, count(estimated_cost_picousd) AS priced_posts,"
          .. " sum(estimated_cost_picousd) AS total_picousd, CAST(sum(estimated_cost_picousd) AS " .. real
          .. ") / 1e12 / count(estimated_cost_picousd) AS avg_cost FROM generation_snapshots"
          .. " WHERE template_id = 'launch' AND status = 'completed' AND replay_of IS NULL", {}))[1]
        assert.same({ 3, 3, exact / 3 }, { sql.posts, sql.priced_posts, sql.avg_cost })
        assert.equal("600000000000", tostring(sql.total_picousd):gsub("%.0$", ""))
        -- the CLI prints those doubles with 15 significant digits (README)
        local c = jreport("report cost --template launch").rows[1]
        assert.same({ 0.6, tonumber(string.format("%.15g", exact / 3)) }, { c.total_cost, c.avg_cost })
      end)

      it("takes the failed generation and the replay in with --status all --include-replays", function()
        local doc = jreport("report cost --status all --include-replays")
        assert.same({ status = "all", replays = "included", rows = 5 }, doc.counted)
        local r = doc.rows[1]
        assert.same({ 5, 5 }, { r.posts, r.priced_posts })
        assert.equal(core.usd_from_picousd(1100000100000), r.total_cost)
        assert.equal(core.usd_from_picousd(1100000100000) / 5, r.avg_cost)
        assert.equal("counted: all generations (completed and failed), replays included (5 rows)",
          report("report cost --status all --include-replays"):match("^[^\n]*"))
        -- each widening alone
        assert.same({ 4, 4 }, { jreport("report cost --status all").rows[1].posts,
          jreport("report cost --include-replays").rows[1].posts })
        local failed = jreport("report cost --status failed").rows[1]
        assert.same({ 1, core.usd_from_picousd(500000000000) }, { failed.posts, failed.total_cost })
        local api = assert(genaudit.report.cost(store, { status = "all", include_replays = true }))
        assert.same({ status = "all", replays = "included", rows = 5 }, api.counted)
      end)

      it("keeps CSV a pure table", function()
        local recs = parse_csv(report("--csv report cost"))
        assert.same({ "template_id", "posts", "priced_posts", "total_cost", "avg_cost", "p50_cost", "p95_cost",
                      "total_tokens", "avg_tokens" }, recs[1])
        assert.same({ "launch", "3", "3", "0.6" }, { recs[2][1], recs[2][2], recs[2][3], recs[2][4] })
        assert.equal(2, #recs)
      end)
    end)

    describe("report repairs", function()
      it("counts completed non-replays by default; widened, the failed repair and the replay count", function()
        local doc = jreport("report repairs")
        assert.same({ status = "completed", replays = "excluded", rows = 3 }, doc.counted)
        assert.same({ 1, 3, 1 }, { doc.rows[1].repairs, doc.rows[1].posts, doc.rows[1].repaired_posts })
        doc = jreport("report repairs --status all --include-replays")
        assert.same({ status = "all", replays = "included", rows = 5 }, doc.counted)
        assert.same({ 2, 5, 2 }, { doc.rows[1].repairs, doc.rows[1].posts, doc.rows[1].repaired_posts })
        assert.equal("counted: completed generations, replays excluded (3 rows)",
          report("report repairs"):match("^[^\n]*"))
      end)
    end)

    describe("report latency", function()
      it("counts completed non-replays by default; widened, all five", function()
        local doc = jreport("report latency --by template")
        assert.same({ { status = "completed", replays = "excluded", rows = 3 }, 3 }, { doc.counted, doc.rows[1].posts })
        doc = jreport("report latency --by template --status all --include-replays")
        assert.same({ { status = "all", replays = "included", rows = 5 }, 5 }, { doc.counted, doc.rows[1].posts })
        assert.equal("counted: completed generations, replays excluded (3 rows)",
          report("report latency"):match("^[^\n]*"))
      end)
    end)

    describe("report rules", function()
      -- what repair_metrics.rules of the counted rows add up to, in Lua
      local function expected(counted_ids)
        local by = {}
        for _, id in ipairs(counted_ids) do
          for _, r in ipairs(json.decode(row(id).repair_metrics).rules or {}) do
            local e = by[r.slug] or { slug = r.slug, snapshots = 0, runs = 0, fired = 0, errors = 0, timeouts = 0 }
            by[r.slug] = e
            e.snapshots = e.snapshots + 1
            for _, k in ipairs({ "runs", "fired", "errors", "timeouts" }) do e[k] = e[k] + r[k] end
          end
        end
        return { by.crash, by.no_bad }
      end

      it("counts per rule every generation, failed ones included, replays excluded", function()
        local doc = jreport("report rules")
        assert.same({ status = "all", replays = "excluded", rows = 4 }, doc.counted)
        assert.same({ "slug", "snapshots", "runs", "fired", "errors", "timeouts" }, doc.columns)
        assert.same({ { slug = "crash", snapshots = 4, runs = 6, fired = 0, errors = 1, timeouts = 0 },
                      { slug = "no_bad", snapshots = 4, runs = 6, fired = 2, errors = 0, timeouts = 0 } }, doc.rows)
        assert.same(expected({ ids.a, ids.b, ids.c, ids.failed }), doc.rows)
      end)

      it("narrows with --status completed and --template, in text and CSV", function()
        local doc = jreport("report rules --status completed --template launch --since 7d")
        assert.same({ { slug = "crash", snapshots = 3, runs = 4, fired = 0, errors = 0, timeouts = 0 },
                      { slug = "no_bad", snapshots = 3, runs = 4, fired = 1, errors = 0, timeouts = 0 } }, doc.rows)
        assert.same(expected({ ids.a, ids.b, ids.c }), doc.rows)
        assert.same({ {}, 0 }, { jreport("report rules --template other").rows,
          jreport("report rules --template other").counted.rows })
        -- the replay has no rules list (replay runs none): counted, it adds nothing to any rule
        local with = jreport("report rules --include-replays")
        assert.same({ 5, jreport("report rules").rows }, { with.counted.rows, with.rows })
        local lines = {}
        for l in report("report rules"):gmatch("[^\n]+") do lines[#lines + 1] = l end
        assert.same({ "counted: all generations (completed and failed), replays excluded (4 rows)",
                      "slug    snapshots  runs  fired  errors  timeouts",
                      "crash           4     6      0       1         0",
                      "no_bad          4     6      2       0         0" }, lines)
        assert.same({ { "slug", "snapshots", "runs", "fired", "errors", "timeouts" },
                      { "crash", "4", "6", "0", "1", "0" }, { "no_bad", "4", "6", "2", "0", "0" } },
          parse_csv(report("--csv report rules")))
      end)
    end)
  end)
end

require("spec.support.stores").both("honest reports", suite)

pg.describe("honest reports on both stores #postgresql", function()
  it("gives the same cost, repairs and rules answers on SQLite and PostgreSQL, byte for byte", function()
    local sqlite, postgres = outputs[1], outputs[2]
    local n = 0
    for args, text in pairs(sqlite) do
      if not args:find("latency", 1, true) then -- latencies are measured, not chosen
        n = n + 1
        assert.equal(text, postgres[args], args)
      end
    end
    assert.is_true(n >= 15, n)
  end)
end)
