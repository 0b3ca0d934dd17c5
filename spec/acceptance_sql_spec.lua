-- spec/acceptance_sql_spec.lua
-- Owns: the seed's acceptance criteria 3 (Financial Test) and 4 (Stability
-- Test) as SQL over a seeded store. 60 snapshots across 5 templates are spread
-- over 14 days with seeded pseudo-random costs and repair counts; the expected
-- answers are computed here in Lua from the generated data, independently of
-- SQLite, then compared with what the queries return. Also checks that both
-- queries are planned on the snapshots_* indexes and read no table rows.
-- The queries are the README's: they count completed generations that are
-- not replays (what genaudit report counts by default), so the data set also
-- holds failed generations and replays, which must not change the answers;
-- and the Financial query gives the CLI's avg_cost to the last digit.

local genaudit = require("genaudit")

local DAY = 86400
local N_ROWS = 60
local TEMPLATES = { "tpl-announce", "tpl-digest", "tpl-event", "tpl-hiring", "tpl-legacy" }
-- tpl-legacy needed many repairs long ago and none recently: it leads the
-- 14-day ranking but must not appear in the 7-day one.
local LEGACY = "tpl-legacy"

local report = require("genaudit.report")
local COUNTED = " AND status = 'completed' AND replay_of IS NULL"
local AVG = "CAST(sum(estimated_cost_picousd) AS REAL) / 1e12 / count(estimated_cost_picousd) AS avg_cost"
local FINANCIAL_SQL = "SELECT " .. AVG .. " FROM generation_snapshots WHERE template_id = ?" .. COUNTED
local FINANCIAL_7D_SQL = "SELECT " .. AVG .. " FROM generation_snapshots"
  .. " WHERE template_id = ? AND created_at >= strftime('%Y-%m-%d %H:%M:%f', 'now', '-7 days')" .. COUNTED
local STABILITY_SQL = "SELECT template_id, sum(repair_count) AS repairs FROM generation_snapshots"
  .. " WHERE created_at >= strftime('%Y-%m-%d %H:%M:%f','now','-7 days')" .. COUNTED
  .. " GROUP BY template_id ORDER BY repairs DESC, template_id LIMIT 3"

-- Park-Miller minimal standard generator seeded with 42: the same numbers under
-- Lua 5.4 and LuaJIT (math.random differs between the two), exact in doubles.
local function seeded_random(seed)
  local state = seed
  local r = {}
  function r.int(lo, hi)
    state = (state * 48271) % 2147483647
    return lo + state % (hi - lo + 1)
  end
  function r.float()
    state = (state * 48271) % 2147483647
    return state / 2147483647
  end
  return r
end

-- The data set: { template_id, created_at, age_s, cost (or nil), repairs }.
-- No row lies within an hour of the 7-day boundary, so the run time of the
-- test cannot move a row across it.
local function generate(now)
  local rnd = seeded_random(42)
  local rows = {}
  for i = 1, N_ROWS do
    local template = TEMPLATES[(i - 1) % #TEMPLATES + 1]
    local age
    repeat age = rnd.int(60, 14 * DAY - 1) until math.abs(age - 7 * DAY) > 3600
    local created_at = os.date("!%Y-%m-%d %H:%M:%S", now - age) .. string.format(".%03d", rnd.int(0, 999))
    local cost
    if rnd.int(1, 8) ~= 1 then cost = rnd.float() * 0.05 end -- some generations have no cost
    local repairs
    if template == LEGACY then
      repairs = age > 7 * DAY and rnd.int(8, 12) or 0
    else
      repairs = rnd.int(0, 4)
    end
    rows[i] = { template_id = template, created_at = created_at, age = age, cost = cost, repairs = repairs }
  end
  -- rows the reports leave out: a failed generation and a replay per template,
  -- recent, cheap and repaired many times (they would move both answers)
  for i, template in ipairs(TEMPLATES) do
    for _, kind in ipairs({ "failed", "replay" }) do
      rows[#rows + 1] = { template_id = template, age = 3600 * i,
        created_at = os.date("!%Y-%m-%d %H:%M:%S", now - 3600 * i) .. ".000",
        cost = kind == "replay" and 0 or 0.5, repairs = 20, [kind] = true }
    end
  end
  return rows
end

local function persist_all(store, rows)
  for i, r in ipairs(rows) do
    local id, err = store:persist_generation({
      org_id = "org-" .. (i % 3), user_id = "user-" .. (i % 7), platform = "linkedin",
      template_id = r.template_id, created_at = r.created_at,
      final_system_prompt = "system " .. i, final_user_prompt = "user " .. i,
      token_usage = { prompt_tokens = 100 + i, completion_tokens = 50 + i, estimated_cost = r.cost },
      performance = { total_latency_ms = 1000.5 + i, provider_latency_ms = 800.25 + i, model_identifier = "m" },
      repair_info = { repair_count = r.repairs },
      status = r.failed and "failed" or nil, error = r.failed and "PROVIDER_ERROR: HTTP 401" or nil,
      replay_of = r.replay and "01J00000000000000000000000" or nil,
    })
    assert(id, err)
  end
end

-- Expected Financial answer: the mean of the costs that exist (NULLs ignored).
local function expected_avg(rows, template, max_age)
  local sum, n = 0, 0
  for _, r in ipairs(rows) do
    if r.template_id == template and r.cost and not r.failed and not r.replay and (not max_age or r.age < max_age) then
      sum, n = sum + r.cost, n + 1
    end
  end
  assert(n > 0, "the data set has no cost for " .. template)
  return sum / n
end

-- Expected Stability answer: templates by summed repairs, ties by name, top 3.
local function expected_top3(rows, max_age)
  local sums = {}
  for _, r in ipairs(rows) do
    if (not max_age or r.age < max_age) and not r.failed and not r.replay then
      sums[r.template_id] = (sums[r.template_id] or 0) + r.repairs
    end
  end
  local list = {}
  for t, s in pairs(sums) do list[#list + 1] = { template_id = t, repairs = s } end
  table.sort(list, function(a, b)
    if a.repairs ~= b.repairs then return a.repairs > b.repairs end
    return a.template_id < b.template_id
  end)
  return { list[1], list[2], list[3] }
end

-- The opcodes of `sql` that read generation_snapshots' own b-tree (not an index).
local function table_reads(store, sql, params)
  local root = assert(store:query("SELECT rootpage FROM sqlite_master"
    .. " WHERE type = 'table' AND name = 'generation_snapshots'"))[1].rootpage
  local program = assert(store:query("EXPLAIN " .. sql, params))
  local cursors = {}
  for _, op in ipairs(program) do
    if op.opcode == "OpenRead" and op.p2 == root then cursors[op.p1] = true end
  end
  local row_readers = { Column = true, Rowid = true, RowData = true, Rewind = true, Next = true, Last = true,
                        Prev = true, SeekRowid = true, NotExists = true, SeekGE = true, SeekGT = true,
                        SeekLE = true, SeekLT = true }
  local reads = {}
  for _, op in ipairs(program) do
    if row_readers[op.opcode] and cursors[op.p1] then reads[#reads + 1] = op.opcode end
  end
  return reads, next(cursors) ~= nil
end

local function plan_details(store, sql, params)
  local details = {}
  for _, r in ipairs(assert(store:query("EXPLAIN QUERY PLAN " .. sql, params))) do details[#details + 1] = r.detail end
  return table.concat(details, "\n")
end

describe("genaudit acceptance SQL", function()
  local store, rows

  before_each(function()
    store = assert(genaudit.open("sqlite::memory:"))
    rows = generate(os.time())
    persist_all(store, rows)
  end)

  after_each(function() store:close() end)

  it("has seeded all the generated snapshots", function()
    assert.same({ { n = N_ROWS + 2 * #TEMPLATES } }, store:query("SELECT count(*) AS n FROM generation_snapshots"))
  end)

  describe("Financial Test: average estimated_cost for a template", function()
    for _, template in ipairs(TEMPLATES) do
      it("matches the mean computed from the data for " .. template, function()
        local got = assert(store:query(FINANCIAL_SQL, { template }))
        assert.equal(1, #got)
        assert.near(expected_avg(rows, template), got[1].avg_cost, 1e-12)
      end)
    end

    it("does not count snapshots without an estimated_cost (JSON null) as 0", function()
      local sum, n, missing = 0, 0, 0
      for _, r in ipairs(rows) do
        if r.template_id == TEMPLATES[1] and not r.failed and not r.replay then
          sum, n = sum + (r.cost or 0), n + 1
          if not r.cost then missing = missing + 1 end
        end
      end
      assert.is_true(missing > 0, "the data set should hold a cost-less snapshot for " .. TEMPLATES[1])
      local got = assert(store:query(FINANCIAL_SQL, { TEMPLATES[1] }))[1].avg_cost
      assert.is_true(math.abs(got - sum / n) > 1e-6)
      assert.near(expected_avg(rows, TEMPLATES[1]), got, 1e-12)
    end)

    it("matches the mean over the last 7 days for every template", function()
      for _, template in ipairs(TEMPLATES) do
        local got = assert(store:query(FINANCIAL_7D_SQL, { template }))
        assert.near(expected_avg(rows, template, 7 * DAY), got[1].avg_cost, 1e-12)
      end
    end)

    it("gives genaudit report cost's avg_cost to the last digit", function()
      for _, template in ipairs(TEMPLATES) do
        local sql = assert(store:query(FINANCIAL_SQL, { template }))[1].avg_cost
        local cli = assert(report.cost(store, { template = template })).rows[1].avg_cost
        assert.equal(string.format("%.17g", cli), string.format("%.17g", sql))
      end
    end)

    it("leaves out failed generations and replays", function()
      local all = "SELECT " .. AVG .. " FROM generation_snapshots WHERE template_id = ?"
      for _, template in ipairs(TEMPLATES) do
        local with = assert(store:query(all, { template }))[1].avg_cost
        assert.is_true(math.abs(with - expected_avg(rows, template)) > 1e-6)
      end
    end)

    it("returns no average (NULL, an absent key) for an unknown template", function()
      assert.same({ {} }, store:query(FINANCIAL_SQL, { "tpl-unknown" }))
    end)

    it("plans the query on a snapshots_* index", function()
      assert.matches("USING [%u ]*INDEX snapshots_", plan_details(store, FINANCIAL_SQL, { TEMPLATES[1] }))
    end)

    it("answers the query from the index alone (no table row is read)", function()
      local reads, opened = table_reads(store, FINANCIAL_SQL, { TEMPLATES[1] })
      assert.is_true(opened)
      assert.same({}, reads)
    end)
  end)

  describe("Stability Test: top 3 templates by repair_count over 7 days", function()
    it("matches the ranking computed from the data", function()
      assert.same(expected_top3(rows, 7 * DAY), store:query(STABILITY_SQL))
    end)

    it("leaves out failed generations and replays (20 repairs each, all recent)", function()
      local got = assert(store:query(STABILITY_SQL))
      for _, r in ipairs(got) do assert.is_true(r.repairs < 20 * 2, r.template_id) end
      assert.same(expected_top3(rows, 7 * DAY), got)
    end)

    it("leaves out repairs older than 7 days", function()
      local all_time = expected_top3(rows)
      assert.equal(LEGACY, all_time[1].template_id)
      for _, r in ipairs(assert(store:query(STABILITY_SQL))) do assert.are_not.equal(LEGACY, r.template_id) end
    end)

    it("returns at most 3 templates", function()
      assert.equal(3, #assert(store:query(STABILITY_SQL)))
    end)

    it("plans the query on a snapshots_* index", function()
      assert.matches("USING [%u ]*INDEX snapshots_", plan_details(store, STABILITY_SQL))
    end)

    it("answers the query from the index alone (no table row is read)", function()
      local reads, opened = table_reads(store, STABILITY_SQL)
      assert.is_true(opened)
      assert.same({}, reads)
    end)
  end)
end)
