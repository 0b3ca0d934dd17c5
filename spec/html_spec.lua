-- spec/html_spec.lua
-- Owns: `genaudit report html` (lua/genaudit/html.lua and the cost_daily and
-- unpriced reports of lua/genaudit/report.lua). A store is filled through
-- the real pipeline and local provider (a priced and an unpriced model,
-- repairs, a rule that raises, a rule that times out, a rule whose slug is
-- markup, a failed generation, a replay) plus a few rows persisted days ago
-- (one with a template id that is markup), on both stores. The page the CLI
-- writes is opened in the real headless Chromium (spec/support/html_check.js,
-- playwright-core from tools/node-deps.sh): no console or page errors, no
-- request but the file, no script, an SVG chart per figure, and every table
-- cell equal to what SQL over the same rows says, formatted as the CLI
-- formats it.

local genaudit = require("genaudit")
local json = require("genaudit.json")
local core = require("genaudit.core")
local format = require("genaudit.format")
local html = require("genaudit.html")
local cjson = require("cjson")
local tmp = require("spec.support.tmp")
local pg = require("spec.support.pg")
local util = require("spec.support.util")
local provider_server = require("spec.support.provider")

local q, cli = util.q, util.cli
local KEY = "sk-html-spec"
local PRICES = "lua/genaudit/data/litellm-model-prices-2026-07.json"
local XSS_RULE = '<script>alert("rule")</script>'
local XSS_TEMPLATE = "<img src=x onerror=alert(1)>&amp;'\""

local function sh(cmd)
  local p = assert(io.popen("env -u LD_PRELOAD " .. cmd .. " 2>&1; echo \"rc=$?\""))
  local all = p:read("a")
  p:close()
  local out, rc = all:match("^(.*)rc=(%d+)\n$")
  return out, tonumber(rc)
end

-- playwright-core's node_modules directory (installed by tools/node-deps.sh
-- when missing); raises with the installer's message when it cannot be had.
local node_modules
local function modules()
  if node_modules then return node_modules end
  local out, rc = sh("sh tools/node-deps.sh")
  if rc ~= 0 then error("tools/node-deps.sh failed: " .. out, 0) end
  node_modules = out:match("([^\n]+)\n?$")
  return node_modules
end

-- What Chromium shows of each file (see spec/support/html_check.js).
local function browse(files, screenshot)
  local list = {}
  for i, f in ipairs(files) do list[i] = q(f) end
  local errfile = os.tmpname()
  local p = assert(io.popen("env -u LD_PRELOAD node spec/support/html_check.js " .. q(modules())
    .. (screenshot and (" --screenshot " .. q(screenshot)) or "") .. " " .. table.concat(list, " ")
    .. " 2>" .. q(errfile)))
  local out = p:read("a")
  local ok = p:close()
  local err = tmp.read(errfile)
  os.remove(errfile)
  if not ok or out == "" then error("html_check.js failed: " .. tostring(err), 0) end
  return cjson.decode(out)
end

local function figure(page, id)
  for _, f in ipairs(page.figures) do
    if f.id == id .. "-figure" then return f end
  end
end

-- A table row (n columns, list[i] nil: NULL) as html_check.js reads it:
-- { text = CLI cell, value = the number its report_value says | nil } per
-- cell (compared as numbers: the CLI runs under Lua 5.4, which writes a float
-- 81 as 81.0, while LuaJIT's report_value writes 81).
local function cells(list, n)
  local out = {}
  for i = 1, n do
    local v = list[i]
    local c = { text = format.cell(v) }
    if type(v) == "number" then c.value = tonumber(format.report_value(v)) end
    out[i] = c
  end
  return out
end

-- html_check.js gives JSON null for cells without data-value; cjson decodes it as a sentinel
local function page_rows(fig)
  local out = {}
  for i, r in ipairs(fig.rows) do
    out[i] = {}
    for j, c in ipairs(r) do
      out[i][j] = { text = c.text, value = c.value ~= cjson.null and tonumber(c.value) or nil }
    end
  end
  return out
end

-- nearest-rank percentile of a sorted list (nil when empty)
local function pct(sorted, p)
  if #sorted == 0 then return nil end
  return sorted[math.floor((#sorted * p + 99) / 100)]
end

-- ---- what SQL says, section by section ----

local function day_expr(store)
  if store.backend == "postgresql" then return "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')" end
  return "substr(created_at, 1, 10)"
end

local COUNTED = " WHERE status = 'completed' AND replay_of IS NULL"

local function expected_cost_daily(store)
  local rows = assert(store:query("SELECT " .. day_expr(store) .. " AS day, template_id, count(*) AS posts,"
    .. " count(estimated_cost_picousd) AS priced, CAST(sum(estimated_cost_picousd) AS TEXT) AS pico"
    .. " FROM generation_snapshots" .. COUNTED .. " GROUP BY 1, 2", {}))
  local days, templates, seen, at = {}, {}, {}, {}
  for _, r in ipairs(rows) do
    if not seen[r.day] then seen[r.day], days[#days + 1] = true, r.day end
    local tk = "t:" .. r.template_id
    if not seen[tk] then seen[tk], templates[#templates + 1] = true, r.template_id end
    at[r.day .. "\0" .. r.template_id] = r
  end
  table.sort(days)
  table.sort(templates)
  -- a row per day, a column per template: its total cost, "-" for generations
  -- none of which is priced, "" for none at all
  local out = {}
  for i, d in ipairs(days) do
    out[i] = { { text = d } }
    for j, t in ipairs(templates) do
      local r = at[d .. "\0" .. t]
      if not r then out[i][j + 1] = { text = "" }
      elseif not r.pico then out[i][j + 1] = { text = "-" }
      else out[i][j + 1] = cells({ core.usd_from_picousd(r.pico) }, 1)[1] end
    end
  end
  return out, templates
end

local function expected_repairs(store)
  local agg = assert(store:query("SELECT template_id, sum(repair_count) AS repairs, count(*) AS posts,"
    .. " count(CASE WHEN repair_count > 0 THEN 1 END) AS repaired, sum(initial_validation_score) AS score_sum,"
    .. " count(initial_validation_score) AS scored FROM generation_snapshots" .. COUNTED
    .. " GROUP BY template_id", {}))
  table.sort(agg, function(a, b)
    if a.repairs ~= b.repairs then return a.repairs > b.repairs end
    return a.template_id < b.template_id
  end)
  local types = {}
  for _, r in ipairs(assert(store:query("SELECT template_id, repair_metrics FROM generation_snapshots" .. COUNTED
    .. " AND repair_count > 0", {}))) do
    local t = types[r.template_id] or {}
    types[r.template_id] = t
    for _, slug in ipairs(json.decode(r.repair_metrics).repair_types or {}) do t[slug] = (t[slug] or 0) + 1 end
  end
  local out = {}
  for i, r in ipairs(agg) do
    if i > html.TOP then break end
    local top, list = {}, {}
    for slug, n in pairs(types[r.template_id] or {}) do list[#list + 1] = { slug, n } end
    table.sort(list, function(a, b)
      if a[2] ~= b[2] then return a[2] > b[2] end
      return a[1] < b[1]
    end)
    for k = 1, math.min(3, #list) do top[list[k][1]] = list[k][2] end
    out[i] = cells({ r.template_id, r.repairs, r.posts, r.repaired, r.repaired / r.posts,
                     r.scored > 0 and r.score_sum / r.scored or nil, top }, 7)
    out[i][7].value = nil -- a map has no data-value
  end
  return out
end

local function expected_latency(store)
  local by = {}
  for _, r in ipairs(assert(store:query("SELECT model_identifier, total_latency_ms AS t, provider_latency_ms AS p,"
    .. " total_latency_ms - provider_latency_ms AS o, performance_metrics FROM generation_snapshots"
    .. COUNTED, {}))) do
    local m = by[r.model_identifier] or { t = {}, p = {}, o = {}, f = {}, posts = 0 }
    by[r.model_identifier] = m
    m.posts = m.posts + 1
    for _, k in ipairs({ "t", "p", "o" }) do m[k][#m[k] + 1] = r[k] end
    local ttft = json.decode(r.performance_metrics).time_to_first_token_ms
    if type(ttft) == "number" then m.f[#m.f + 1] = ttft end
  end
  local models = {}
  for name in pairs(by) do models[#models + 1] = name end
  table.sort(models)
  local out = {}
  for i, name in ipairs(models) do
    local m = by[name]
    local row = { name, m.posts }
    for k, key in ipairs({ "t", "p", "o", "f" }) do
      table.sort(m[key])
      for j, p in ipairs({ 50, 95, 99 }) do row[2 + (k - 1) * 3 + j] = pct(m[key], p) end
    end
    row[15] = #m.f
    out[i] = cells(row, 15)
  end
  return out
end

local function expected_rules(store)
  local by = {}
  for _, r in ipairs(assert(store:query("SELECT repair_metrics FROM generation_snapshots WHERE replay_of IS NULL"
    .. " AND repair_metrics IS NOT NULL", {}))) do
    local rm, seen = json.decode(r.repair_metrics), {}
    for _, e in ipairs(type(rm.rules) == "table" and rm.rules or {}) do
      local s = by[e.slug] or { snapshots = 0, runs = 0, fired = 0, errors = 0, timeouts = 0 }
      by[e.slug] = s
      for _, k in ipairs({ "runs", "fired", "errors", "timeouts" }) do s[k] = s[k] + e[k] end
      if not seen[e.slug] then s.snapshots, seen[e.slug] = s.snapshots + 1, true end
    end
  end
  local slugs = {}
  for slug in pairs(by) do slugs[#slugs + 1] = slug end
  table.sort(slugs)
  local out = {}
  for i, slug in ipairs(slugs) do
    local s = by[slug]
    out[i] = cells({ slug, s.snapshots, s.runs, s.fired, s.errors, s.timeouts }, 6)
  end
  return out
end

local function expected_unpriced(store)
  local by, keys = {}, {}
  for _, r in ipairs(assert(store:query("SELECT template_id, model_identifier, token_metrics FROM"
    .. " generation_snapshots" .. COUNTED .. " AND estimated_cost_picousd IS NULL", {}))) do
    local source = json.decode(r.token_metrics).cost_source
    local k = table.concat({ r.template_id, tostring(r.model_identifier), tostring(source) }, "\0")
    if not by[k] then
      by[k] = { r.template_id, r.model_identifier, source, 0 }
      keys[#keys + 1] = k
    end
    by[k][4] = by[k][4] + 1
  end
  table.sort(keys, function(a, b)
    if by[a][4] ~= by[b][4] then return by[a][4] > by[b][4] end
    return a < b
  end)
  local out = {}
  for i, k in ipairs(keys) do out[i] = cells(by[k], 4) end
  return out
end

local EXPECTED = { ["cost-daily"] = expected_cost_daily, repairs = expected_repairs, latency = expected_latency,
                   rules = expected_rules, unpriced = expected_unpriced }

-- ---- filling a store ----

local function fill(store, dir, srv)
  os.execute("mkdir -p " .. dir .. "/templates " .. dir .. "/rules")
  tmp.write(dir .. "/templates/launch.lua", [[return { version = "1",
    voice_signature = "You are {{business.name}}.", task = "Announce {{facts.product}}." }]])
  tmp.write(dir .. "/templates/tips.lua", [[return { version = "1",
    voice_signature = "You are {{business.name}}.", task = "A tip about {{facts.product}}." }]])
  tmp.write(dir .. "/rules/no_bad.lua", [[return { slug = "no_bad", check = function(d)
    if d:find("BAD", 1, true) then return { { slug = "no_bad", message = "remove BAD", penalty = 30 } } end
  end }]])
  tmp.write(dir .. "/rules/boom.lua", [[return { slug = "boom", check = function() error("kaput", 0) end }]])
  tmp.write(dir .. "/rules/slow.lua", [[return { slug = "slow", check = function(d)
    if d:find("SLOW", 1, true) then while true do end end
  end }]])
  tmp.write(dir .. "/rules/xss.lua", "return { slug = " .. string.format("%q", XSS_RULE)
    .. ", check = function() end }")
  tmp.write(dir .. "/rules/policy.lua", [[return { on_rule_error = "ignore" }]])
  local pricing = assert(genaudit.pricing.load(PRICES))
  local function pipeline(model)
    return genaudit.pipeline{
      store = store, templates = dir .. "/templates", rules = dir .. "/rules",
      provider = genaudit.providers.openai{ base_url = srv.url, api_key = KEY, model = model },
      pricing = pricing, backoff_ms = 10, script_timeout_ms = 50, retries = 0,
    }
  end
  local priced, unpriced = pipeline("gpt-4o-mini"), pipeline("house-model")
  local function ctx(template)
    return { org_id = "o", user_id = "u", platform = "linkedin", template_id = template,
             business = { name = "Acme" }, facts = { product = "Anvil" } }
  end
  srv:queue{ { content = "BAD first" }, { content = "good second" } } -- one repair
  assert(priced:generate(ctx("launch")))
  srv:queue{ { content = "fine" } }
  local ok = assert(priced:generate(ctx("launch")))
  srv:queue{ { content = "SLOW one" } } -- slow times out on it
  assert(priced:generate(ctx("tips")))
  srv:queue{ { content = "BAD a" }, { content = "BAD b" }, { content = "fine c" } } -- two repairs
  assert(unpriced:generate(ctx("tips")))
  srv:queue{ { content = "house fine" } }
  assert(unpriced:generate(ctx("launch")))
  srv:queue{ { status = 500, body = "{}" } } -- failed
  local _, _, _, failed = priced:generate(ctx("launch"))
  assert(failed)
  srv:reset()
  assert(genaudit.replay(store, ok.snapshot_id, {
    provider = genaudit.providers.openai{ base_url = srv.url, api_key = KEY, model = "gpt-4o-mini" },
    pricing = pricing }))
  -- older rows, through the store's own persist API (the pipeline stamps now)
  local persister = genaudit.persister(store)
  for i, r in ipairs({ { 2, "launch", 0.000125 }, { 2, XSS_TEMPLATE, 0.5 }, { 5, "tips", 0.000002 },
                       { 5, XSS_TEMPLATE, nil } }) do
    assert(persister:persist_generation{
      org_id = "o", user_id = "u", platform = "x", template_id = r[2],
      created_at = os.date("!%Y-%m-%d %H:%M:%S", os.time() - r[1] * 86400) .. ".000",
      final_system_prompt = "s", final_user_prompt = "u " .. i,
      token_usage = { prompt_tokens = 10, completion_tokens = 5, estimated_cost = r[3],
                      cost_source = r[3] and "local_estimate" or "no_usage" },
      performance = { total_latency_ms = 100 + i, provider_latency_ms = 90 + i / 4, model_identifier = "old-model" },
      repair_info = { repair_count = i % 2, repair_types = i % 2 == 1 and { "tone" } or {},
                      initial_validation_score = 70 + i },
      status = "completed", content = "c " .. i,
    })
  end
end

local function suite(name, open, describe_fn)
  describe_fn(name, function()
    local srv, dir, store, db, page

    setup(function()
      srv = provider_server.start{ api_key = KEY }
      dir = tmp.dir()
      store, db = open(dir)
      fill(store, dir, srv)
      local out, err, rc = cli("--db " .. q(db) .. " report html --out " .. q(dir .. "/report.html"))
      assert(rc == 0 and out == "" and err == "", "report html: rc " .. tostring(rc) .. " " .. err)
      page = browse({ dir .. "/report.html" })[1]
    end)
    teardown(function()
      if store then store:close() end
      if srv then srv:stop() end
      if dir then tmp.rm(dir) end
      pg.drop_schemas()
    end)

    it("loads in Chromium with no console error, no page error, no dialog and no script", function()
      assert.same({}, page.console_errors)
      assert.same({}, page.page_errors)
      assert.same({}, page.dialogs)
      assert.equal(0, page.scripts)
      assert.equal("genaudit report", page.title)
    end)

    it("prints: no navigation, tables unclipped, every figure shown, a PDF of several pages", function()
      assert.equal("none", page.print.nav)
      assert.equal("visible", page.print.scroll_overflow)
      assert.equal(#page.figures, page.print.figures_shown)
      assert.is_true(page.print.pdf_bytes > 10000)
      assert.is_true(page.print.pdf_pages >= 2, "pages: " .. tostring(page.print.pdf_pages))
    end)

    it("makes no request but the file itself", function()
      assert.same({ "file://" .. dir .. "/report.html" }, page.requests)
      assert.same({}, page.blocked)
    end)

    it("has one figure per section, each with a caption, an SVG chart with its bars and a table", function()
      assert.same({ "cost-daily", "repairs", "latency", "rules", "unpriced" }, page.sections)
      for _, id in ipairs(page.sections) do
        local f = figure(page, id)
        assert.is_table(f, id)
        assert.is_string(f.caption, id)
        assert.equal(1, f.svg, id)
        assert.is_true(#f.rows > 0, id)
        assert.is_true(f.bars > 0, id)
      end
      -- one bar per priced template-day; the others have no cost to draw
      local priced = 0
      for _, r in ipairs(figure(page, "cost-daily").rows) do
        for j = 2, #r do
          if r[j].value ~= cjson.null then priced = priced + 1 end
        end
      end
      assert.equal(priced, figure(page, "cost-daily").bars)
      assert.equal(2 * #figure(page, "repairs").rows, figure(page, "repairs").bars)
      assert.equal(6 * #figure(page, "latency").rows, figure(page, "latency").bars)
    end)

    for _, id in ipairs({ "cost-daily", "repairs", "latency", "rules", "unpriced" }) do
      it("shows in the " .. id .. " table what SQL says", function()
        assert.same(EXPECTED[id](store), page_rows(figure(page, id)))
      end)
    end

    it("heads the cost-daily table with the day and the templates, bytewise", function()
      local _, templates = expected_cost_daily(store)
      local heads = { "day" }
      for i = 1, #templates do heads[i + 1] = "template" end
      assert.same(heads, figure(page, "cost-daily").columns)
      table.insert(templates, 1, "day")
      assert.same(templates, figure(page, "cost-daily").heads)
    end)

    it("says what each section counted", function()
      local n = assert(store:query("SELECT count(*) AS n FROM generation_snapshots" .. COUNTED, {}))[1].n
      local all = assert(store:query("SELECT count(*) AS n FROM generation_snapshots WHERE replay_of IS NULL",
        {}))[1].n
      local c = "counted: completed generations, replays excluded (" .. n .. " rows)"
      assert.same({ c, c, c, "counted: all generations (completed and failed), replays excluded (" .. all
        .. " rows)", c }, page.counted)
    end)

    it("covers the cases the store holds: days, an unpriced model, rule errors and timeouts", function()
      assert.equal(3, #figure(page, "cost-daily").rows) -- today, 2 and 5 days ago
      local rules = {}
      for _, r in ipairs(figure(page, "rules").rows) do rules[r[1].text] = r end
      assert.is_true(tonumber(rules.boom[5].value) > 0)  -- errors
      assert.is_true(tonumber(rules.slow[6].value) > 0)  -- timeouts
      local models = {}
      for _, r in ipairs(figure(page, "unpriced").rows) do models[r[2].text] = true end
      assert.is_true(models["house-model-2024-07-18"])
    end)

    it("shows markup in template ids and rule slugs as text", function()
      local rules = {}
      for _, r in ipairs(figure(page, "rules").rows) do rules[r[1].text] = true end
      assert.is_true(rules[XSS_RULE])
      local templates = {}
      for _, h in ipairs(figure(page, "cost-daily").heads) do templates[h] = true end
      assert.is_true(templates[XSS_TEMPLATE])
      local raw = tmp.read(dir .. "/report.html")
      assert.is_nil(raw:find("<script", 1, true))
      assert.is_nil(raw:find("<img", 1, true))
    end)

    it("applies the filters: --since 3d leaves out the rows of 5 days ago", function()
      local out, err, rc = cli("--db " .. q(db) .. " report html --since 3d --out " .. q(dir .. "/since.html"))
      assert.same({ "", "", 0 }, { out, err, rc })
      local p = browse({ dir .. "/since.html" })[1]
      local old = os.date("!%Y-%m-%d", os.time() - 5 * 86400)
      local days = {}
      for _, r in ipairs(figure(p, "cost-daily").rows) do days[r[1].text] = true end
      assert.is_nil(days[old])
      assert.is_true(days[os.date("!%Y-%m-%d")])
      assert.truthy(p.text:find("Filters: --since 3d.", 1, true))
    end)

    it("writes to stdout without --out or with --out -, the same page", function()
      local a, aerr, arc = cli("--db " .. q(db) .. " report html")
      local b, berr, brc = cli("--db " .. q(db) .. " report html --out -")
      assert.same({ "", 0, "", 0 }, { aerr, arc, berr, brc })
      local function strip(s) return (s:gsub("Generated [%d%- :]+ UTC", "")) end
      assert.equal(strip(a), strip(b))
      assert.truthy(a:find("^<!DOCTYPE html>\n"))
      assert.equal(strip(tmp.read(dir .. "/report.html")), strip(a))
    end)

    it("replaces an existing --out file whole and leaves no temporary file", function()
      tmp.write(dir .. "/old.html", "old")
      local _, err, rc = cli("--db " .. q(db) .. " report html --out " .. q(dir .. "/old.html"))
      assert.same({ "", 0 }, { err, rc })
      assert.truthy(tmp.read(dir .. "/old.html"):find("</html>\n$"))
      local listing = sh("ls -a " .. q(dir))
      assert.is_nil(listing:find(".tmp", 1, true))
    end)
  end)
end

require("spec.support.stores").both("genaudit report html", suite)

describe("genaudit report html, failures and an empty store", function()
  local dir
  before_each(function() dir = tmp.dir() end)
  after_each(function() tmp.rm(dir) end)

  it("renders an empty store as a valid page saying there is no data", function()
    local s = assert(genaudit.open("sqlite:" .. dir .. "/empty.db"))
    s:close()
    local out, err, rc = cli("--db " .. q(dir .. "/empty.db") .. " report html --out " .. q(dir .. "/e.html"))
    assert.same({ "", "", 0 }, { out, err, rc })
    local page = browse({ dir .. "/e.html" })[1]
    assert.same({}, page.console_errors)
    assert.same({}, page.page_errors)
    assert.same({}, page.figures)
    assert.truthy(page.nodata:find("^No data: no generations match these filters"))
  end)

  it("fails with one line and exit 2 on a bad --since, writing nothing", function()
    local s = assert(genaudit.open("sqlite:" .. dir .. "/a.db"))
    s:close()
    local out, err, rc = cli("--db " .. q(dir .. "/a.db") .. " report html --since 3x --out " .. q(dir .. "/x.html"))
    assert.same({ "", "genaudit: bad time '3x' (use e.g. 30m, 24h, 7d, 2w, 2026-11-01 or 2026-11-01T12:00:00)\n",
                  2 }, { out, err, rc })
    assert.is_nil(io.open(dir .. "/x.html", "rb"))
  end)

  it("fails with one line and exit 1 when --out cannot be written", function()
    local s = assert(genaudit.open("sqlite:" .. dir .. "/a.db"))
    s:close()
    local out, err, rc = cli("--db " .. q(dir .. "/a.db") .. " report html --out " .. q(dir .. "/no/such/r.html"))
    assert.same({ "", "genaudit: cannot write " .. dir .. "/no/such/r.html (No such file or directory)\n", 1 },
      { out, err, rc })
  end)

  it("fails with one line and exit 2 given --json or --csv", function()
    local s = assert(genaudit.open("sqlite:" .. dir .. "/a.db"))
    s:close()
    for _, flag in ipairs({ "--json", "--csv" }) do
      local out, err, rc = cli("--db " .. q(dir .. "/a.db") .. " " .. flag .. " report html")
      assert.same({ "", "genaudit: report html writes HTML: --json and --csv do not apply\n", 2 }, { out, err, rc })
    end
  end)

  it("fails with one line and exit 1 when --out is a directory, leaving no temporary file", function()
    local s = assert(genaudit.open("sqlite:" .. dir .. "/a.db"))
    s:close()
    os.execute("mkdir " .. q(dir .. "/d"))
    local out, err, rc = cli("--db " .. q(dir .. "/a.db") .. " report html --out " .. q(dir .. "/d"))
    assert.same({ "", "genaudit: cannot write " .. dir .. "/d (Is a directory)\n", 1 }, { out, err, rc })
    local p = assert(io.popen("ls -a " .. q(dir)))
    local listing = p:read("a")
    p:close()
    assert.is_nil(listing:find(".tmp", 1, true))
  end)

  it("fails with one line and exit 1 when there is no database", function()
    local out, err, rc = cli("--db " .. q(dir .. "/none.db") .. " report html")
    assert.same({ "", "genaudit: no database at " .. dir .. "/none.db (run 'genaudit migrate' to create one)\n", 1 },
      { out, err, rc })
  end)
end)

describe("genaudit.html", function()
  describe("escape()", function()
    it("escapes markup and quotes", function()
      assert.equal("&lt;a href=&quot;x&quot; title=&#39;t&#39;&gt;&amp;amp;&lt;/a&gt;",
        html.escape([[<a href="x" title='t'>&amp;</a>]]))
    end)
    it("turns control characters into spaces and invalid UTF-8 into U+FFFD", function()
      assert.equal("a b c\239\191\189d é", html.escape("a\0b\nc\255d é"))
    end)
  end)

  describe("render()", function()
    it("puts user data in the header escaped", function()
      local page = html.render({}, { template = "</p><script>x()</script>" }, "2026-12-01 00:00:00")
      assert.is_nil(page:find("<script>", 1, true))
      assert.truthy(page:find("Filters: --template &lt;/p&gt;&lt;script&gt;x()&lt;/script&gt;.", 1, true))
    end)
  end)
end)
