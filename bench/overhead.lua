-- bench/overhead.lua — issue 7.3: what genaudit adds to one generation.
--
-- pipeline:generate() with the example templates and rules (examples/) and a
-- synchronous store, against the local provider server (tools/local_provider.lua:
-- real HTTP on loopback, answers at once; drafts that break the length rule
-- are repaired, so about half the generations make two calls).
--
-- genaudit's own time per generation = (total_latency_ms - provider_latency_ms)
-- as stored in performance_metrics (the stopwatch stops after validation) +
-- the persist step (timed here: building the row and the INSERT). It is split
-- by wrapping, from this script, the pipeline's pieces on the instance:
--   compose   composer:compose_post_generation
--   validate  validator:validate_and_repair, less the repair calls inside it
--   meter     client:complete less the HTTP transport (request build,
--             response parse, usage metering, call log)
--   http      the transport less the provider wait libcurl measured
--   persist   pipeline:persist (row, JSON documents, INSERT, commit)
--   other     the rest (context checks, run set-up, result table)
-- Baseline: the provider wait itself on the same generations — the least any
-- provider costs (an instant server on loopback); real providers take 0.3-10 s.
--
-- Run twice: with examples/rules as shipped, and with a copy whose hashtag
-- rule finds the last line in linear time (the shipped rule's unanchored
-- pattern "([^\n]*)%s*$" is quadratic in the draft: ~1 ms per check at 300
-- bytes), so genaudit's own cost is visible apart from that rule's.
local root = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
package.path = root .. "/?.lua;" .. root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. (rawget(_G, "jit") and "luajit" or "lua54") .. "/?.so;" .. package.cpath

local common = require("bench.common")
local genaudit = require("genaudit")
local core = require("genaudit.core")
local provider_server = require("spec.support.provider")

local unpack = rawget(table, "unpack") or rawget(_G, "unpack")
local function pack(...) return { n = select("#", ...), ... } end

local N = common.size{ small = 30, full = 2000 }
local WARMUP = common.size{ small = 5, full = 50 }
local now = common.now_us

common.title("overhead per generation: pipeline:generate() against the local provider (loopback HTTP)")
local dir = common.tmpdir("overhead")

-- The example rules with a linear-time hashtag rule (same verdicts).
local LINEAR_HASHTAG = [[
-- Rule: the post ends with a hashtag line (bench copy: the last line is read
-- from the end, in linear time).
return {
  slug = "missing_hashtag",
  check = function(draft)
    local last = (draft:reverse():match("^%s*([^\n]*)") or ""):reverse()
    if not last:find("#%w") then
      return { message = "End the post with one hashtag line.", penalty = 15 }
    end
  end,
}
]]
local function linear_rules()
  local rules = dir .. "/rules"
  assert(os.execute("mkdir -p " .. common.quote(rules) .. " && cp " .. common.quote(root .. "/examples/rules")
    .. "/*.lua " .. common.quote(rules) .. "/"))
  local f = assert(io.open(rules .. "/hashtag.lua", "wb"))
  f:write(LINEAR_HASHTAG)
  f:close()
  return rules
end

local srv = provider_server.start{ api_key = "sk-bench", quiet = true, interpreter = common.interpreter() }

-- The served model's prices per token, in integer picodollars (as the meter
-- reads the price entry).
local function unit_prices(pricing, model)
  local key = assert(pricing:resolve(model))
  local function cost(p, c)
    local m = core.meter()
    assert(m:add_call{ kind = "initial", model = key, prices = pricing:price_table(), prompt_tokens = p,
                       completion_tokens = c })
    local t = m:totals()
    m:close()
    return tonumber(t.estimated_cost_picousd)
  end
  return cost(1, 0), cost(0, 1)
end

-- Runs WARMUP + N generations with the rules in rules_dir; prints the BENCH
-- lines `name` and `name`_split and the detail table.
-- With `trace` (a table), each generation's calls and outputs are collected
-- into it for the floor (bench/floor.c): trace.gens[i] = { ctx = index,
-- calls = { {status, wait_us, timings, req_body, res_body} }, id }.
local function measure(name, rules_dir, label, async, trace)
  local path = dir .. "/" .. name .. ".db"
  local store = assert(genaudit.open("sqlite:" .. path, { synchronous = "normal", async = async }))
  local pipeline = genaudit.pipeline{
    store = store,
    provider = genaudit.providers.openai{ base_url = srv.url, api_key = "sk-bench", model = "gpt-4o-mini" },
    templates = root .. "/examples/templates", rules = rules_dir,
    pricing = assert(genaudit.pricing.default()),
  }

  -- instrumentation: per-generation accumulators, reset before each generate()
  local acc
  local function wrap(obj, method, field)
    local orig = obj[method]
    obj[method] = function(...)
      local t0 = now()
      local r = pack(orig(...))
      acc[field] = acc[field] + (now() - t0)
      return unpack(r, 1, r.n)
    end
  end
  wrap(pipeline.composer, "compose_post_generation", "compose")
  wrap(pipeline.validator, "validate_and_repair", "validate_all")
  wrap(pipeline.client, "complete", "complete")
  wrap(pipeline, "persist", "persist")
  local transport = pipeline.client.transport
  pipeline.client.transport = function(req)
    local t0 = now()
    local res, e, code, info = transport(req)
    local t = now() - t0
    acc.transport = acc.transport + t
    acc.wait = acc.wait + ((res and res.provider_wait_us) or (info and info.provider_wait_us) or 0)
    acc.calls = acc.calls + 1
    if acc.trace and res then
      acc.trace[#acc.trace + 1] = { status = res.status, wait_us = res.provider_wait_us, timings = res.timings,
                                    req_body = req.body, res_body = res.body }
    end
    return res, e, code, info
  end
  -- complete() calls made inside validate_and_repair are the repairs
  local vr = pipeline.validator.validate_and_repair
  pipeline.validator.validate_and_repair = function(...)
    local t_before = acc.complete
    local r = pack(vr(...))
    acc.repair_calls = acc.repair_calls + (acc.complete - t_before)
    return unpack(r, 1, r.n)
  end

  local TEMPLATES = { "launch-post", "weekly-tips", "event-invite", "customer-story" }
  local FACTS = {
    ["launch-post"] = { product = "the Anvil 2" }, ["weekly-tips"] = { topic = "maintenance" },
    ["event-invite"] = { event = "the spring open house", date = "April 12", place = "Lyon" },
    ["customer-story"] = { customer = "Dana's bakery", result = "30% fewer returns" },
  }
  local PLATFORMS = { "linkedin", "x", "instagram" }
  local function ctx(i)
    local t = TEMPLATES[(i - 1) % #TEMPLATES + 1]
    return {
      org_id = 100 + i % 3, user_id = i % 5 + 1, platform = PLATFORMS[(i - 1) % #PLATFORMS + 1], template_id = t,
      business = { name = "Acme Anvils", tone = "formal" }, facts = FACTS[t],
      knowledge = { "Acme Anvils was founded in 1998.", "Customers mention reliability most." },
      tone_override = i % 2 == 0 and "playful" or nil, params = { temperature = 0.7, max_tokens = 400 },
    }
  end

  local samples = {}
  local failed = 0
  for i = 1, WARMUP + N do
    acc = { compose = 0, validate_all = 0, complete = 0, persist = 0, transport = 0, wait = 0, calls = 0,
            repair_calls = 0, trace = trace and {} or nil }
    local t0 = now()
    local result, gerr = pipeline:generate(ctx(i))
    local wall = now() - t0
    if not result then
      failed = failed + 1
      if failed <= 3 then common.say("generation %d failed (recorded): %s", i, tostring(gerr)) end
    end
    if i > WARMUP then
      acc.wall = wall
      acc.id = result and result.snapshot_id
      samples[#samples + 1] = acc
      if trace and acc.id then trace.gens[#trace.gens + 1] = { ctx = i, calls = acc.trace, id = acc.id } end
    end
  end

  -- the stored view: total_latency_ms - provider_latency_ms per snapshot
  assert(store:flush())
  local stored = {}
  for _, r in ipairs(assert(store:query("SELECT id, total_latency_ms AS t, provider_latency_ms AS p"
    .. " FROM generation_snapshots", {}))) do
    stored[r.id] = (r.t - r.p) * 1000
  end

  local cols = { own = {}, stored = {}, wall_minus_wait = {}, wait = {}, compose = {}, validate = {}, meter = {},
                 http = {}, persist = {}, other = {} }
  local repaired = 0
  for _, s in ipairs(samples) do
    if s.id and stored[s.id] then
      local validate = s.validate_all - s.repair_calls
      local meter = s.complete - s.transport
      local http = s.transport - s.wait
      local own = stored[s.id] + s.persist
      cols.own[#cols.own + 1] = own
      cols.stored[#cols.stored + 1] = stored[s.id]
      cols.wall_minus_wait[#cols.wall_minus_wait + 1] = s.wall - s.wait
      cols.wait[#cols.wait + 1] = s.wait
      cols.compose[#cols.compose + 1] = s.compose
      cols.validate[#cols.validate + 1] = validate
      cols.meter[#cols.meter + 1] = meter
      cols.http[#cols.http + 1] = http
      cols.persist[#cols.persist + 1] = s.persist
      cols.other[#cols.other + 1] = s.wall - s.wait - s.compose - validate - meter - http - s.persist
      if s.calls > 1 then repaired = repaired + 1 end
    end
  end
  local n = #cols.own
  local own, wait = common.median(cols.own), common.median(cols.wait)
  common.say("%s", label)
  common.bench(name, "us", {
    { "genaudit", own }, { "p99", common.percentile(cols.own, 99) },
    { "baseline", "provider_wait:" .. common.num(wait) }, { "ratio", string.format("%.3f", own / wait) },
    { "target", "<=100" },
  })
  common.bench(name .. "_split", "us", {
    { "compose", common.median(cols.compose) }, { "validate", common.median(cols.validate) },
    { "meter", common.median(cols.meter) }, { "http", common.median(cols.http) },
    { "persist", common.median(cols.persist) }, { "other", common.median(cols.other) },
    { "baseline", "own:" .. common.num(own) }, { "ratio", string.format("%.3f", common.median(cols.validate) / own) },
    { "target", "info" }, -- the split of the line above; ratio: validation's share of own time
  })
  common.say("%d generations measured after %d warm-up (%d with repair calls, %d failed and recorded as such)", n,
    WARMUP, repaired, failed)
  common.say("%-34s %9s %9s %9s", "per generation, us", "median", "mean", "p99")
  for _, row in ipairs({
    { "genaudit's own (stored + persist)", "own" }, { "  stored total - provider latency", "stored" },
    { "  compose", "compose" }, { "  validate (rules, repair policy)", "validate" },
    { "  meter (request, parse, metering)", "meter" }, { "  http (libcurl beyond the wait)", "http" },
    { "  persist (row + INSERT + commit)", "persist" }, { "  other", "other" },
    { "wall clock - provider wait", "wall_minus_wait" }, { "provider wait (the baseline)", "wait" },
  }) do
    local v = cols[row[2]]
    common.say("%-34s %9.1f %9.1f %9.1f", row[1], common.median(v), common.mean(v), common.percentile(v, 99))
  end
  if trace then
    trace.own, trace.rules_dir = cols.own, rules_dir
    trace.rows = {}
    for _, r in ipairs(assert(store:query("SELECT id, template_id, final_system_prompt, final_user_prompt, content,"
      .. " drafts, token_metrics, performance_metrics, repair_metrics, request_params, status,"
      .. " CAST(total_latency_ms AS TEXT) AS t, CAST(provider_latency_ms AS TEXT) AS w,"
      .. " json_extract(performance_metrics, '$.total_latency_ms') AS tj FROM generation_snapshots", {}))) do
      trace.rows[r.id] = r
    end
    trace.price_in, trace.price_out = unit_prices(pipeline.pricing, "gpt-4o-mini-2024-07-18")
  end
  pipeline:close()
  store:close()
  common.rmdb(path)
end

-- Writes the trace bench/floor.c reads (its header comment: the format).
local function write_trace(trace, file)
  local out = {}
  local function text(head, s)
    out[#out + 1] = head .. " " .. #s .. "\n" .. s .. "\n"
  end
  out[#out + 1] = ("P %d %d\n"):format(trace.price_in, trace.price_out)
  out[#out + 1] = ("E %d\n"):format(common.engine == "luajit" and 1 or 0)
  text("R", trace.rules_dir .. "/")
  local seen = {}
  for _, g in ipairs(trace.gens) do
    local r = trace.rows[g.id]
    if r and not seen[r.template_id] then
      seen[r.template_id] = true
      text("S " .. r.template_id, assert(r.repair_metrics:match('"scripts":(.*),"stop_reason":')))
    end
  end
  local n = 0
  for _, g in ipairs(trace.gens) do
    local r = trace.rows[g.id]
    if r then
      n = n + 1
      out[#out + 1] = ("G %d %d\n"):format(g.ctx, #g.calls)
      for _, c in ipairs(g.calls) do
        local t = c.timings
        text(("C %d %d %d %d %d %d %d %d"):format(c.status, c.wait_us, t.connect_us, t.dns_us, t.first_byte_us,
          t.pretransfer_us, t.tls_us, t.total_us), c.res_body)
      end
      -- the stopwatch readings as the document holds them (the column is a REAL)
      text("T", (r.performance_metrics:match('^{"total_latency_ms":([^,]*),')))
      text("W", (r.performance_metrics:match('"provider_latency_ms":([^,]*),')))
      for _, f in ipairs({ { "system", "final_system_prompt" }, { "user", "final_user_prompt" },
        { "content", "content" }, { "drafts", "drafts" }, { "token_metrics", "token_metrics" },
        { "performance_metrics", "performance_metrics" }, { "repair_metrics", "repair_metrics" },
        { "request_params", "request_params" }, { "status", "status" } }) do
        text("X " .. f[1], r[f[2]])
      end
      for k, c in ipairs(g.calls) do text("X request" .. k, c.req_body) end
    end
  end
  local f = assert(io.open(file, "wb"))
  f:write(table.concat(out))
  f:close()
  return n
end

-- The floor (bench/floor.c) on the trace, against genaudit's own time of the
-- same generations: BENCH own_time_vs_floor.
local function floor_line(trace)
  local tfile, db = dir .. "/floor.trace", dir .. "/floor.db"
  local gens = write_trace(trace, tfile)
  local s = assert(genaudit.open("sqlite:" .. db, {}))
  s:close()
  local passes = common.size{ small = 3, full = 5 }
  local out = common.run(table.concat({ common.tool("floor"), common.quote(tfile), common.quote(db), tostring(passes),
    common.quote(root .. "/lua/genaudit/data/tiktoken-o200k_base.json") }, " "))
  local f = common.kv(out)
  local own, p99 = common.median(trace.own), common.percentile(trace.own, 99)
  common.say("the floor (bench/floor.c: the same generations' work in plain C, %d passes): %s", passes,
    (out:gsub("%s+$", "")))
  -- every output the floor compared must be genaudit's own bytes, or the floor is not doing the same work
  local eq_n, eq_d = tostring(f.equal):match("^(%d+)/(%d+)$")
  if eq_n ~= eq_d or tonumber(eq_d) == 0 then
    error("the floor's outputs differ from genaudit's (" .. tostring(f.equal) .. "): run with FLOOR_DIFF=1", 0)
  end
  common.bench("own_time_vs_floor", "us", {
    { "genaudit", own }, { "genaudit_p99", p99 }, { "baseline", "c_floor:" .. common.num(f.median_us) },
    { "floor_p99", f.p99_us }, { "ratio", string.format("%.3f", own / f.median_us) }, { "target", "<=2.0" },
    { "p99_ratio", string.format("%.3f", p99 / f.p99_us) }, { "p99_target", "<=4.0" },
    { "generations", gens }, { "equal_outputs", tonumber(eq_n) }, { "compared_outputs", tonumber(eq_d) },
  })
  common.rmdb(db)
end

local ok, err = pcall(function()
  -- issue 16.1: examples as shipped, async persist, against the C floor of the same generations
  local trace = { gens = {} }
  measure("overhead_async", root .. "/examples/rules", "examples/rules as shipped, async persist (issue 16.1):",
    { queue = 10000, batch = 100 }, trace)
  floor_line(trace)
  measure("overhead", root .. "/examples/rules", "examples/rules as shipped:")
  local linear = linear_rules()
  measure("overhead_linear_rule", linear, "examples/rules with a linear-time hashtag rule:")
  measure("overhead_linear_rule_async", linear, "the same, persisting through the async writer (for comparison):",
    { queue = 10000, batch = 100 })
end)
srv:stop()
common.rm(dir)
if not ok then error(err, 0) end
