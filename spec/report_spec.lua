-- spec/report_spec.lua
-- Owns: genaudit.report. 80 snapshots over 20 days (several templates,
-- models, platforms and orgs; some without a cost, some failed without a
-- model) are seeded from a small deterministic generator; every expected
-- answer is computed here in Lua from the generated data, independently of
-- SQLite, then compared with the reports. Also: the query plans use the
-- snapshots_* indexes, JSONL and CSV exports read back to the stored rows, and
-- export streams in constant memory.

local genaudit = require("genaudit")
local report = require("genaudit.report")
local cjson = require("cjson")
local util = require("spec.support.util")
local lcg, parse_csv = util.lcg, util.parse_csv

local DAY = 86400
local N_ROWS = 80
local TEMPLATES = { "customer-story", "event-invite", "hiring", "launch-post", "weekly-tips" }
-- "hiring" needed many repairs long ago and none recently: it leads the
-- all-time repair ranking but is absent from the 7-day one.
local LEGACY = "hiring"
local MODELS = { "claude-3-5-haiku-20241022", "gpt-4o-mini-2024-07-18", "llama-3.1-8b-instruct" }
local PLATFORMS = { "instagram", "linkedin", "x" }
local ORGS = { "org-a", "org-b", 42 } -- 42 is stored as the text "42"
local SLUGS = { "banned_word", "length_exceeded", "missing_hashtag", "tone_mismatch" }
-- No row lies within an hour of a `since` boundary used below, so the run
-- time of the specs cannot move a row across one.
local SINCES = { ["7d"] = 7 * DAY, ["10d"] = 10 * DAY, ["36h"] = 36 * 3600 }
-- A user prompt that needs CSV quoting and JSON escaping.
local BAD_TIME = "(use e.g. 30m, 24h, 7d, 2w, 2026-11-01 or 2026-11-01T12:00:00)"
local TRICKY = 'Say "hi", then\r\nsay, "bye" \\ done\n\ttab and a NUL:\0 end'

local function far_from_boundaries(age)
  for _, b in pairs(SINCES) do
    if math.abs(age - b) < 3600 then return false end
  end
  return true
end

-- The data set, as plain Lua values; persist() turns each into a snapshot.
local function generate(now)
  local rnd = lcg(20240917)
  local rows = {}
  for i = 1, N_ROWS do
    local r = {}
    local age
    repeat age = rnd.int(120, 20 * DAY - 1) until far_from_boundaries(age)
    r.age = age
    r.created_at = os.date("!%Y-%m-%d %H:%M:%S", now - age) .. string.format(".%03d", rnd.int(0, 999))
    r.template_id = TEMPLATES[(i - 1) % #TEMPLATES + 1]
    r.platform = rnd.pick(PLATFORMS)
    r.org = rnd.pick(ORGS)
    r.failed = rnd.int(1, 12) == 1
    if not r.failed then r.model = rnd.pick(MODELS) end
    if not r.failed and rnd.int(1, 6) ~= 1 then r.cost = rnd.int(1, 900000) / 1e8 end
    r.prompt_tokens, r.completion_tokens = rnd.int(50, 3000), rnd.int(10, 800)
    r.provider_ms = rnd.int(80, 6000) + rnd.int(0, 9) / 10
    r.total_ms = r.provider_ms + rnd.int(1, 900) + rnd.int(0, 99) / 100
    -- about a third streamed: their time to first token, within the provider's wait
    if rnd.int(1, 3) == 1 then r.ttft_ms = rnd.int(1, math.floor(r.provider_ms)) + rnd.int(0, 999) / 1000 end
    if r.template_id == LEGACY then
      r.repairs = age > 7 * DAY and rnd.int(6, 9) or 0
    else
      r.repairs = rnd.int(0, 3)
    end
    r.types = {}
    if r.repairs > 0 then
      local start = rnd.int(1, #SLUGS)
      for k = 0, rnd.int(1, math.min(r.repairs, 3)) - 1 do
        r.types[#r.types + 1] = SLUGS[(start + k - 1) % #SLUGS + 1]
      end
    end
    if rnd.int(1, 5) ~= 1 then r.score = rnd.int(40, 100) end
    r.user_prompt = i == 1 and TRICKY or ("Write post " .. i .. ", please.")
    rows[i] = r
  end
  return rows
end

local function persist(store, rows)
  local persister = genaudit.persister(store)
  for i, r in ipairs(rows) do
    local log = {}
    for k = 1, r.repairs do
      log[k] = { attempt = k, issues = { { slug = r.types[1], message = "issue " .. k, penalty = 10 } },
                 feedback = "Fix, \"please\".", score_before = 50 + k, score_after = 60 + k }
    end
    r.id = assert(persister:persist_generation{
      org_id = r.org, user_id = "user-" .. i % 4, platform = r.platform, template_id = r.template_id,
      template_version = i % 3 == 0 and "2" or nil, created_at = r.created_at,
      final_system_prompt = "You write for business " .. i .. ".", final_user_prompt = r.user_prompt,
      token_usage = { prompt_tokens = r.prompt_tokens, completion_tokens = r.completion_tokens,
                      estimated_cost = r.cost },
      performance = { total_latency_ms = r.total_ms, provider_latency_ms = r.provider_ms, model_identifier = r.model,
                      time_to_first_token_ms = r.ttft_ms, streamed = r.ttft_ms and true or nil },
      repair_info = { repair_count = r.repairs, repair_types = r.types, initial_validation_score = r.score,
                      repair_log = log },
      request_params = i % 2 == 0 and { temperature = 0.7, max_tokens = 400 } or nil,
      status = r.failed and "failed" or "completed", error = r.failed and "PROVIDER_ERROR: boom" or nil,
      content = not r.failed and ("Post " .. i .. ", with a comma.") or nil,
    })
  end
end

-- ---- the expected answers, in plain Lua ----

local NONE = {} -- the key of the NULL group

-- An absolute --since/--until as the created_at text it is compared with:
-- "2026-11-01" -> "2026-11-01" (a day), "2026-11-01T12:00:00" -> "2026-11-01 12:00:00".
local function at_key(s)
  local d, t = s:match("^(%d%d%d%d%-%d%d%-%d%d)T?(.*)$")
  return t == "" and d or (d .. " " .. t), t == ""
end

local function select_rows(rows, opts)
  local out = {}
  for _, r in ipairs(rows) do
    local keep = true
    if opts.org and tostring(r.org) ~= tostring(opts.org) then keep = false end
    if opts.template and r.template_id ~= opts.template then keep = false end
    if opts.status == "completed" and r.failed then keep = false end
    if opts.status == "failed" and not r.failed then keep = false end
    if opts.since and SINCES[opts.since] and r.age >= SINCES[opts.since] then keep = false end
    if opts["until"] and SINCES[opts["until"]] and r.age < SINCES[opts["until"]] then keep = false end
    if opts.since and not SINCES[opts.since] then
      local k, day = at_key(opts.since)
      if (day and r.created_at:sub(1, 10) or r.created_at) < k then keep = false end
    end
    if opts["until"] and not SINCES[opts["until"]] then
      local k, day = at_key(opts["until"])
      if day then keep = keep and r.created_at:sub(1, 10) <= k else keep = keep and r.created_at < k end
    end
    if keep then out[#out + 1] = r end
  end
  return out
end

local GROUP_KEY = {
  template = function(r) return r.template_id end,
  model = function(r) return r.model end,
  platform = function(r) return r.platform end,
  org = function(r) return tostring(r.org) end,
  day = function(r) return r.created_at:sub(1, 10) end,
}
local GROUP_COLUMN = { template = "template_id", model = "model_identifier", platform = "platform", org = "org_id",
                       day = "day" }

-- The rows a report counts: by default completed generations only (the
-- data set has no replays); opts.status widens it.
local function report_rows(rows, opts)
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  if o.status == nil then o.status = "completed" end
  return select_rows(rows, o)
end

local function groups(rows, by)
  local map, list = {}, {}
  for _, r in ipairs(rows) do
    local k = GROUP_KEY[by](r)
    if k == nil then k = NONE end
    if not map[k] then
      map[k] = { key = k, rows = {} }
      list[#list + 1] = map[k]
    end
    table.insert(map[k].rows, r)
  end
  return list
end

local function less_key(a, b) -- ascending, the NULL group last
  if a == NONE then return false end
  if b == NONE then return true end
  return a < b
end

-- nearest rank: the value at rank ceil(p * n / 100) in ascending order
local function percentile(values, p)
  if #values == 0 then return nil end
  local sorted = {}
  for i, v in ipairs(values) do sorted[i] = v end
  table.sort(sorted)
  return sorted[math.ceil(#sorted * p / 100)]
end

local function sum(values)
  local s = 0
  for _, v in ipairs(values) do s = s + v end
  return s
end

local function expected_cost(rows, opts)
  local out = {}
  for _, g in ipairs(groups(report_rows(rows, opts), opts.by)) do
    local costs, tokens = {}, {}
    for _, r in ipairs(g.rows) do
      if r.cost then costs[#costs + 1] = r.cost end
      tokens[#tokens + 1] = r.prompt_tokens + r.completion_tokens
    end
    local e = { posts = #g.rows, priced_posts = #costs, total_tokens = sum(tokens), avg_tokens = sum(tokens) / #tokens }
    if #costs > 0 then
      e.total_cost, e.avg_cost = sum(costs), sum(costs) / #costs
      e.p50_cost, e.p95_cost = percentile(costs, 50), percentile(costs, 95)
    end
    if g.key ~= NONE then e[GROUP_COLUMN[opts.by]] = g.key end
    e._key = g.key
    out[#out + 1] = e
  end
  table.sort(out, function(a, b)
    if a.total_cost ~= b.total_cost then
      if a.total_cost == nil then return false end
      if b.total_cost == nil then return true end
      return a.total_cost > b.total_cost
    end
    return less_key(a._key, b._key)
  end)
  for _, e in ipairs(out) do e._key = nil end
  return out
end

local function expected_repairs(rows, opts)
  local out = {}
  for _, g in ipairs(groups(report_rows(rows, opts), "template")) do
    local e = { template_id = g.key, repairs = 0, posts = #g.rows, repaired_posts = 0 }
    local scores, counts = {}, {}
    for _, r in ipairs(g.rows) do
      e.repairs = e.repairs + r.repairs
      if r.repairs > 0 then e.repaired_posts = e.repaired_posts + 1 end
      if r.score then scores[#scores + 1] = r.score end
      for _, t in ipairs(r.types) do counts[t] = (counts[t] or 0) + 1 end
    end
    e.repair_rate = e.repaired_posts / e.posts
    if #scores > 0 then e.avg_initial_score = sum(scores) / #scores end
    local types = {}
    for t, n in pairs(counts) do types[#types + 1] = { t, n } end
    table.sort(types, function(a, b)
      if a[2] ~= b[2] then return a[2] > b[2] end
      return a[1] < b[1]
    end)
    e.top_repair_types = {}
    for k = 1, math.min(3, #types) do e.top_repair_types[types[k][1]] = types[k][2] end
    out[#out + 1] = e
  end
  table.sort(out, function(a, b)
    if a.repairs ~= b.repairs then return a.repairs > b.repairs end
    return a.template_id < b.template_id
  end)
  local top = {}
  for k = 1, math.min(opts.top or 3, #out) do top[k] = out[k] end
  return top
end

local function expected_latency(rows, opts)
  local out = {}
  for _, g in ipairs(groups(report_rows(rows, opts), opts.by)) do
    local series = { total = {}, provider = {}, overhead = {}, ttft = {} }
    for _, r in ipairs(g.rows) do
      table.insert(series.total, r.total_ms)
      table.insert(series.provider, r.provider_ms)
      table.insert(series.overhead, r.total_ms - r.provider_ms)
      if r.ttft_ms then table.insert(series.ttft, r.ttft_ms) end -- streamed rows only
    end
    local e = { posts = #g.rows, _key = g.key, streamed = #series.ttft }
    if g.key ~= NONE then e[GROUP_COLUMN[opts.by]] = g.key end
    for name, values in pairs(series) do
      for _, p in ipairs({ 50, 95, 99 }) do e["p" .. p .. "_" .. name .. "_ms"] = percentile(values, p) end
    end
    out[#out + 1] = e
  end
  table.sort(out, function(a, b) return less_key(a._key, b._key) end)
  for _, e in ipairs(out) do e._key = nil end
  return out
end

-- Same rows, same columns; numbers within 1e-9, everything else exactly.
local function assert_rows(expected, got, columns)
  assert.equal(#expected, #got, "row count")
  for i, e in ipairs(expected) do
    for _, c in ipairs(columns) do
      local ev, gv = e[c], got[i][c]
      if type(ev) == "table" then
        assert.same(ev, gv, ("row %d column %s"):format(i, c))
      elseif type(ev) == "number" and type(gv) == "number" then
        assert.is_true(math.abs(ev - gv) <= 1e-9, ("row %d column %s: expected %.17g, got %.17g"):format(i, c, ev, gv))
      else
        assert.equal(ev, gv, ("row %d column %s"):format(i, c))
      end
    end
    for k in pairs(got[i]) do
      assert.truthy(e[k] ~= nil, ("row %d has an unexpected column %s"):format(i, k))
    end
  end
end

local COST_COLUMNS = { "posts", "priced_posts", "total_cost", "avg_cost", "p50_cost", "p95_cost", "total_tokens",
                       "avg_tokens" }
local LATENCY_COLUMNS = { "posts" }
for _, m in ipairs({ "total", "provider", "overhead", "ttft" }) do
  for _, p in ipairs({ 50, 95, 99 }) do LATENCY_COLUMNS[#LATENCY_COLUMNS + 1] = "p" .. p .. "_" .. m .. "_ms" end
end
LATENCY_COLUMNS[#LATENCY_COLUMNS + 1] = "streamed"
local REPAIR_COLUMNS = { "template_id", "repairs", "posts", "repaired_posts", "repair_rate", "avg_initial_score",
                         "top_repair_types" }

local function with_group(name, columns)
  local t = { name }
  for _, c in ipairs(columns) do t[#t + 1] = c end
  return t
end

-- An out object collecting what export writes.
local function buffer()
  local b = { parts = {} }
  function b:write(s)
    self.parts[#self.parts + 1] = s
    return self
  end
  function b:text() return table.concat(self.parts) end
  return b
end

local function stored_rows(store, opts)
  local where, params = {}, {}
  if opts and opts.org then
    where[#where + 1] = "org_id = ?"
    params[#params + 1] = opts.org
  end
  return assert(store:query("SELECT * FROM generation_snapshots"
    .. (#where > 0 and " WHERE " .. table.concat(where, " AND ") or "") .. " ORDER BY created_at, id", params))
end

describe("genaudit.report", function()
  local store, rows

  setup(function()
    store = assert(genaudit.open("sqlite::memory:"))
    rows = generate(os.time())
    persist(store, rows)
  end)

  teardown(function() store:close() end)

  it("is reachable as genaudit.report", function()
    assert.equal(report, genaudit.report)
  end)

  describe("parse_duration()", function()
    it("converts minutes, hours, days and weeks to seconds", function()
      assert.same({ 1800, 86400, 604800, 1209600, 60 }, { report.parse_duration("30m"), report.parse_duration("24h"),
        report.parse_duration("7d"), report.parse_duration("2w"), report.parse_duration("1m") })
    end)

    for _, bad in ipairs({ "0d", "7", "d", "-1d", "1.5h", "7 d", "7D", "7y", "", "1234567890d" }) do
      it("rejects '" .. bad .. "'", function()
        assert.same({ nil, "REPORT: bad duration '" .. bad .. "' (use e.g. 30m, 24h, 7d, 2w)", "REPORT" },
          { report.parse_duration(bad) })
      end)
    end

    it("rejects a non-string", function()
      assert.same({ nil, "REPORT: bad duration 'nil' (use e.g. 30m, 24h, 7d, 2w)", "REPORT" },
        { report.parse_duration(nil) })
    end)
  end)

  describe("cost()", function()
    it("has the data it needs: costless rows, failed rows without a model, several days", function()
      local costless, modelless, days = 0, 0, {}
      for _, r in ipairs(rows) do
        if not r.cost then costless = costless + 1 end
        if not r.model then modelless = modelless + 1 end
        days[r.created_at:sub(1, 10)] = true
      end
      local ndays = 0
      for _ in pairs(days) do ndays = ndays + 1 end
      assert.is_true(costless >= 5 and modelless >= 2 and ndays >= 15, costless .. " " .. modelless .. " " .. ndays)
    end)

    for _, by in ipairs({ "template", "model", "platform", "org", "day" }) do
      it("matches the data grouped by " .. by, function()
        local got = assert(report.cost(store, { by = by }))
        assert.same(with_group(GROUP_COLUMN[by], COST_COLUMNS), got.columns)
        assert_rows(expected_cost(rows, { by = by }), got.rows, got.columns)
      end)
    end

    it("answers the Financial Test: the average cost of one template's posts", function()
      for _, t in ipairs(TEMPLATES) do
        local got = assert(report.cost(store, { by = "template", template = t }))
        local e = expected_cost(rows, { by = "template", template = t })
        assert.equal(1, #got.rows)
        assert_rows(e, got.rows, got.columns)
      end
    end)

    it("does not count a missing cost as 0", function()
      local t = "launch-post"
      local priced, all, n = {}, 0, 0
      for _, r in ipairs(select_rows(rows, { template = t, status = "completed" })) do
        n = n + 1
        all = all + (r.cost or 0)
        if r.cost then priced[#priced + 1] = r.cost end
      end
      assert.is_true(#priced < n, "the data set should hold a costless " .. t .. " snapshot")
      local got = assert(report.cost(store, { by = "template", template = t })).rows[1]
      assert.same({ n, #priced }, { got.posts, got.priced_posts })
      assert.near(sum(priced) / #priced, got.avg_cost, 1e-12)
      assert.is_true(math.abs(got.avg_cost - all / n) > 1e-6)
    end)

    it("limits to the last 7 days, one org, or both", function()
      for _, opts in ipairs({ { by = "template", since = "7d" }, { by = "model", org = "org-a" },
                               { by = "day", org = 42, since = "10d" }, { by = "platform", since = "36h" } }) do
        local got = assert(report.cost(store, opts))
        assert_rows(expected_cost(rows, opts), got.rows, got.columns)
        assert.is_true(#got.rows > 0)
      end
    end)

    it("returns no rows when nothing matches", function()
      assert.same({}, assert(report.cost(store, { by = "template", template = "no-such-template" })).rows)
    end)

    it("returns nil, err for an unknown --by column", function()
      assert.same({ nil, "REPORT: unknown --by column 'user' for cost (use template, model, platform, org, day)",
        "REPORT" }, { report.cost(store, { by = "user" }) })
      assert.same(assert(report.cost(store, { by = "template" })), assert(report.cost(store, {})))
      assert.same(assert(report.latency(store, { by = "model" })), assert(report.latency(store, {})))
    end)

    it("returns nil, err for a bad duration", function()
      assert.same({ nil, "REPORT: bad time '7days' " .. BAD_TIME, "REPORT" },
        { report.cost(store, { by = "template", since = "7days" }) })
    end)

    it("binds filter values: a quote in a template id is just data", function()
      assert.same({}, assert(report.cost(store, { by = "template", template = "x' OR '1'='1" })).rows)
    end)

    it("raises on a missing store", function()
      assert.has_error(function() report.cost(nil, { by = "template" }) end,
        "bad argument #1 to 'cost' (store expected, got nil)")
    end)
  end)

  describe("repairs()", function()
    it("answers the Stability Test: top 3 templates by repairs over 7 days", function()
      local got = assert(report.repairs(store, { top = 3, since = "7d" }))
      assert.same(REPAIR_COLUMNS, got.columns)
      assert.equal(3, #got.rows)
      assert_rows(expected_repairs(rows, { top = 3, since = "7d" }), got.rows, got.columns)
      for _, r in ipairs(got.rows) do assert.are_not.equal(LEGACY, r.template_id) end
    end)

    it("ranks all time by default, where the legacy template leads", function()
      local got = assert(report.repairs(store, {}))
      assert.equal(LEGACY, got.rows[1].template_id)
      assert_rows(expected_repairs(rows, {}), got.rows, got.columns)
    end)

    it("lists every template with a large top, and filters by org", function()
      for _, opts in ipairs({ { top = 10 }, { top = 10, org = "org-b" }, { top = 2, org = 42, since = "10d" } }) do
        local got = assert(report.repairs(store, opts))
        assert_rows(expected_repairs(rows, opts), got.rows, got.columns)
      end
      assert.equal(#TEMPLATES, #assert(report.repairs(store, { top = 10 })).rows)
    end)

    it("names the three most common repair types, ties by slug", function()
      local got = assert(report.repairs(store, { top = 10 }))
      for _, r in ipairs(got.rows) do
        local n = 0
        for slug, count in pairs(r.top_repair_types) do
          n = n + 1
          assert.matches("^[%l_]+$", slug)
          assert.equal(0, count % 1)
        end
        assert.is_true(n <= 3)
      end
    end)

    it("returns nil, err for a bad top or duration", function()
      assert.same({ nil, "REPORT: top must be a positive integer, got '0'", "REPORT" },
        { report.repairs(store, { top = 0 }) })
      assert.same({ nil, "REPORT: top must be a positive integer, got 'x'", "REPORT" },
        { report.repairs(store, { top = "x" }) })
      assert.same({ nil, "REPORT: bad time '1y' " .. BAD_TIME, "REPORT" },
        { report.repairs(store, { since = "1y" }) })
    end)
  end)

  describe("latency()", function()
    local LATENCY_GROUP = { model = "model_identifier", template = "template_id", platform = "platform",
                            org = "org_id" }
    for _, by in ipairs({ "model", "template", "platform", "org" }) do
      it("matches the nearest-rank percentiles grouped by " .. by, function()
        local got = assert(report.latency(store, { by = by }))
        assert.same(with_group(LATENCY_GROUP[by], LATENCY_COLUMNS), got.columns)
        assert_rows(expected_latency(rows, { by = by }), got.rows, got.columns)
      end)
    end

    it("limits to a period and an org", function()
      local opts = { by = "model", since = "10d", org = "org-a" }
      local got = assert(report.latency(store, opts))
      assert.is_true(#got.rows > 0)
      assert_rows(expected_latency(rows, opts), got.rows, got.columns)
    end)

    it("returns nil, err for a column it cannot group by", function()
      assert.same({ nil, "REPORT: unknown --by column 'day' for latency (use model, template, platform, org)",
        "REPORT" }, { report.latency(store, { by = "day" }) })
    end)
  end)

  describe("filters", function()
    -- days and instants inside the data set, from the seeded rows themselves
    local function day_of(k)
      local list = {}
      for i, r in ipairs(rows) do list[i] = r.created_at end
      table.sort(list)
      return list[k]:sub(1, 10), list[k]:sub(1, 19):gsub(" ", "T")
    end

    it("limits by --until (a duration), by status, and by template on every report", function()
      for _, opts in ipairs({ { ["until"] = "7d" }, { since = "10d", ["until"] = "36h" }, { status = "failed" },
                              { status = "completed", template = "launch-post" }, { status = "all" },
                              { template = "hiring", org = "org-a" } }) do
        assert.is_true(#select_rows(rows, opts) > 0, "a filter that selects rows")
        local c = { by = "template" }
        for k, v in pairs(opts) do c[k] = v end
        assert_rows(expected_cost(rows, c), assert(report.cost(store, c)).rows, assert(report.cost(store, c)).columns)
        local l = { by = "model" }
        for k, v in pairs(opts) do l[k] = v end
        local got = assert(report.latency(store, l))
        assert_rows(expected_latency(rows, l), got.rows, got.columns)
        local rp = { top = 10 }
        for k, v in pairs(opts) do rp[k] = v end
        got = assert(report.repairs(store, rp))
        assert_rows(expected_repairs(rows, rp), got.rows, got.columns)
      end
    end)

    it("takes absolute UTC dates and date-times for --since and --until", function()
      local d1, t1 = day_of(20)
      local d2, t2 = day_of(60)
      for _, opts in ipairs({ { since = d1 }, { ["until"] = d2 }, { since = d1, ["until"] = d2 },
                              { since = t1, ["until"] = t2 }, { since = t1 .. "Z" },
                              { ["until"] = d1 .. " 12:00" } }) do
        local e = { by = "day" }
        for k, v in pairs(opts) do e[k] = (v:gsub("Z$", ""):gsub(" ", "T")) end
        local n = #select_rows(rows, e)
        assert.is_true(n > 0 and n < #rows, "a period that selects some rows")
        local c = { by = "day" }
        for k, v in pairs(opts) do c[k] = v end
        local got = assert(report.cost(store, c))
        assert_rows(expected_cost(rows, e), got.rows, got.columns)
      end
    end)

    it("returns nil, err for a bad time or status", function()
      for _, bad in ipairs({ "2026-13-01", "2026-02-30", "2026-11-01T25:00", "11/01/2026", "1969-12-31",
                             "yesterday" }) do
        assert.same({ nil, "REPORT: bad time '" .. bad .. "' " .. BAD_TIME, "REPORT" },
          { report.cost(store, { ["until"] = bad }) })
      end
      assert.same({ nil, "REPORT: unknown status 'done' (use completed, failed or all)", "REPORT" },
        { report.repairs(store, { status = "done" }) })
    end)

    it("reads a leap day and the end of a day as UTC instants", function()
      assert.same({ at = "2028-02-29 00:00:00" }, report.parse_time("2028-02-29"))
      assert.same({ at = "2028-03-01 00:00:00" }, report.parse_time("2028-02-29", true))
      assert.same({ at = "2027-01-01 00:00:00" }, report.parse_time("2026-12-31", true))
      assert.same({ at = "2026-11-01 12:30:05" }, report.parse_time("2026-11-01T12:30:05Z", true))
      assert.same({ ago = 604800 }, report.parse_time("7d"))
    end)
  end)

  describe("list()", function()
    local function expected_list(opts, limit)
      local sel = select_rows(rows, opts)
      table.sort(sel, function(a, b)
        if a.created_at ~= b.created_at then return a.created_at > b.created_at end
        return a.id > b.id
      end)
      local out = {}
      for i = 1, math.min(limit, #sel) do
        local r = sel[i]
        out[i] = { id = r.id, created_at = r.created_at, template_id = r.template_id,
                   status = r.failed and "failed" or "completed", estimated_cost = r.cost, repair_count = r.repairs }
      end
      return out
    end

    it("lists the 20 newest snapshots, newest first", function()
      local got = assert(report.list(store))
      assert.same({ "id", "created_at", "template_id", "status", "estimated_cost", "repair_count" }, got.columns)
      assert.same(expected_list({}, 20), got.rows)
    end)

    it("filters by template, org, status and period, with a limit", function()
      for _, opts in ipairs({ { template = "hiring", limit = 5 }, { org = "org-b", status = "completed", limit = 100 },
                              { status = "failed" }, { since = "10d", ["until"] = "7d", limit = 3 } }) do
        local got = assert(report.list(store, opts))
        assert.same(expected_list(opts, opts.limit or 20), got.rows)
        assert.is_true(#got.rows > 0)
      end
    end)

    it("returns nil, err for a bad limit", function()
      assert.same({ nil, "REPORT: limit must be a positive integer, got '0'", "REPORT" },
        { report.list(store, { limit = 0 }) })
    end)
  end)

  describe("show()", function()
    it("returns every column of the row", function()
      local r = rows[1]
      local got, columns = report.show(store, r.id)
      assert.equal(TRICKY, got.final_user_prompt)
      assert.same(assert(store:query("SELECT * FROM generation_snapshots WHERE id = ?", { r.id }))[1], got)
      -- 0008 added drafts, the seal and the purge marks (10 columns, purged_by last)
      assert.equal(36, #columns)
      assert.same({ "id", "org_id" }, { columns[1], columns[2] })
      assert.equal("purged_by", columns[#columns])
    end)

    it("finds a snapshot by its id in lower case", function()
      local row = assert(report.show(store, rows[5].id:lower()))
      assert.equal(rows[5].id, row.id)
    end)

    it("returns nil, NOT_FOUND for an unknown id", function()
      assert.same({ nil, "NOT_FOUND: no snapshot with id 'nope'", "NOT_FOUND" }, { report.show(store, "nope") })
    end)
  end)

  describe("query plans", function()
    local function plan(name, opts) return assert(report.explain(store, name, opts)) end

    it("answers cost by template for one template from snapshots_template_time", function()
      local p = plan("cost", { by = "template", template = "launch-post" })
      assert.matches("SEARCH generation_snapshots USING [%u ]*INDEX snapshots_template_time", p)
    end)

    it("answers repairs over a period from a snapshots_* index", function()
      local p = plan("repairs", { top = 3, since = "7d" })
      assert.matches("SEARCH generation_snapshots USING [%u ]*INDEX snapshots_%l+_%l+ %(created_at>%?%)", p)
    end)

    it("answers every org-scoped report from snapshots_org_time", function()
      for _, c in ipairs({ { "cost", { by = "model", org = "org-a" } },
                           { "cost", { by = "day", org = "org-a", since = "7d" } },
                           { "repairs", { org = "org-a" } }, { "latency", { by = "template", org = "org-a" } },
                           { "export", { format = "jsonl", org = "org-a" } } }) do
        local p = plan(c[1], c[2])
        assert.matches("SEARCH generation_snapshots USING [%u ]*INDEX snapshots_org_time %(org_id=%?", p)
        assert.falsy(p:find("SCAN generation_snapshots", 1, true), p)
      end
    end)
  end)

  describe("export()", function()
    local function decode_lines(text)
      local out = {}
      for line in text:gmatch("([^\n]*)\n") do out[#out + 1] = cjson.decode(line) end
      return out
    end

    it("writes one JSON object per row that reads back to the stored row", function()
      local b = buffer()
      assert.equal(N_ROWS, assert(report.export(store, { format = "jsonl", out = b })))
      local objs, stored = decode_lines(b:text()), stored_rows(store)
      local columns = assert(report.columns(store))
      assert.equal(N_ROWS, #objs)
      for i, row in ipairs(stored) do
        for _, c in ipairs(columns) do
          local v = objs[i][c]
          if row[c] == nil then
            assert.equal(cjson.null, v, c)
          elseif c == "token_metrics" or c == "performance_metrics" or c == "repair_metrics"
              or c == "request_params" then
            assert.same(cjson.decode(row[c]), v, c)
          else
            assert.equal(row[c], v, c)
          end
        end
      end
    end)

    it("embeds the metric documents verbatim, so every digit survives", function()
      local b = buffer()
      report.export(store, { format = "jsonl", out = b })
      local text = b:text()
      for _, row in ipairs(stored_rows(store)) do
        assert.truthy(text:find('"token_metrics":' .. row.token_metrics, 1, true))
        assert.truthy(text:find('"repair_metrics":' .. row.repair_metrics, 1, true))
      end
    end)

    it("escapes quotes, control characters and NUL bytes in strings", function()
      local b = buffer()
      report.export(store, { format = "jsonl", out = b })
      local found
      for _, o in ipairs(decode_lines(b:text())) do
        if o.id == rows[1].id then found = o end
      end
      assert.equal(TRICKY, found.final_user_prompt)
    end)

    it("writes RFC 4180 CSV that reads back to the stored rows", function()
      local b = buffer()
      assert.equal(N_ROWS, assert(report.export(store, { format = "csv", out = b })))
      local records = parse_csv(b:text())
      local columns = assert(report.columns(store))
      assert.same(columns, records[1])
      assert.equal(N_ROWS + 1, #records)
      for i, row in ipairs(stored_rows(store)) do
        local rec = records[i + 1]
        assert.equal(#columns, #rec)
        for j, c in ipairs(columns) do
          local v = row[c]
          if v == nil then
            assert.equal("", rec[j], c)
          elseif type(v) == "number" then
            assert.equal(v, tonumber(rec[j]), c)
          else
            assert.equal(v, rec[j], c)
          end
        end
      end
    end)

    it("keeps the tricky prompt intact through CSV", function()
      local b = buffer()
      report.export(store, { format = "csv", out = b })
      local records = parse_csv(b:text())
      local idcol, promptcol
      for j, c in ipairs(records[1]) do
        if c == "id" then idcol = j elseif c == "final_user_prompt" then promptcol = j end
      end
      local found
      for k = 2, #records do
        if records[k][idcol] == rows[1].id then found = records[k][promptcol] end
      end
      assert.equal(TRICKY, found)
    end)

    it("limits to a period and an org", function()
      local opts = { format = "jsonl", org = "org-a", since = "10d" }
      local b = buffer()
      opts.out = b
      local n = assert(report.export(store, opts))
      assert.equal(#select_rows(rows, opts), n)
      for _, o in ipairs(decode_lines(b:text())) do
        assert.equal("org-a", o.org_id)
      end
    end)

    it("returns nil, err for an unknown format or a bad duration", function()
      assert.same({ nil, "REPORT: unknown export format 'xml' (use jsonl or csv)", "REPORT" },
        { report.export(store, { format = "xml", out = buffer() }) })
      assert.same({ nil, "REPORT: bad time 'soon' " .. BAD_TIME, "REPORT" },
        { report.export(store, { format = "csv", since = "soon", out = buffer() }) })
    end)

    it("raises when a write fails", function()
      local broken = { write = function() return nil, "disk full" end }
      assert.has_error(function() report.export(store, { format = "csv", out = broken }) end,
        "export: write failed: disk full")
    end)
  end)
end)

describe("genaudit.report export() memory", function()
  it("streams 5,000 rows in constant memory", function()
    local store = assert(genaudit.open("sqlite::memory:"))
    local filler = string.rep("lorem ipsum dolor sit amet, ", 40) -- ~1 KB per row
    local persister = genaudit.persister(store)
    for i = 1, 5000 do
      assert(persister:persist_generation{
        org_id = "org", user_id = "u", platform = "x", template_id = "t" .. i % 7,
        final_system_prompt = "system", final_user_prompt = filler .. i,
        token_usage = { prompt_tokens = i, completion_tokens = 1, estimated_cost = i / 1e7 },
        performance = { total_latency_ms = i, provider_latency_ms = i / 2, model_identifier = "m" },
        repair_info = {},
      })
    end
    -- Live memory (after a full collection) sampled while rows stream: if the
    -- export kept its rows, it would grow by the ~7 MB written.
    local sink = { writes = 0, bytes = 0, peak = 0 }
    function sink:write(s)
      self.writes, self.bytes = self.writes + 1, self.bytes + #s
      if self.writes % 250 == 0 then
        collectgarbage("collect")
        local kb = collectgarbage("count")
        if kb > self.peak then self.peak = kb end
      end
      return self
    end
    collectgarbage("collect")
    collectgarbage("collect")
    local base = collectgarbage("count")
    assert.equal(5000, assert(report.export(store, { format = "jsonl", out = sink })))
    store:close()
    assert.is_true(sink.bytes > 5 * 1024 * 1024, "wrote " .. sink.bytes .. " bytes")
    assert.is_true(sink.peak - base < 2048, ("grew by %.0f KB"):format(sink.peak - base))
  end)
end)
