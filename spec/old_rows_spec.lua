-- Issue 13, point 7, on both stores: a database at schema 5 holding rows of
-- that time's shape (token_metrics without estimated_cost_picousd or
-- cost_picousd, repair_metrics without drafts, script_errors or rules)
-- migrates to 6 in place; its rows stay readable (show, export, copy), the
-- new generated column holds their recorded float cost in picodollars (NULL
-- when it was unknown), and the reports treat every missing field as
-- unknown: a cost-less row is not priced at 0, a row without rules adds
-- nothing to any rule's counts. copy keeps the exact cost of new rows.
local genaudit = require("genaudit")
local copy = require("genaudit.copy")
local core = require("genaudit.core")
local json = require("genaudit.json")
local cjson = require("cjson")
local tmp = require("spec.support.tmp")
local pg = require("spec.support.pg")
local util = require("spec.support.util")
local q, cli = util.q, util.cli

-- A directory with the store's migrations 0001..0005 only (copied in Lua:
-- make check preloads libasan, whose leak report fails cp).
local function schema5_migrations(backend)
  local dir, n = tmp.dir(), 0
  for _, name in ipairs(assert(core.listdir("migrations/" .. backend))) do
    if name:match("^000[1-5]_.*%.sql$") then
      tmp.write(dir .. "/" .. name, tmp.read("migrations/" .. backend .. "/" .. name))
      n = n + 1
    end
  end
  assert.equal(5, n)
  return dir
end

-- Rows as schema 5 wrote them: the float cost only (or none), no exact cost,
-- no drafts, no rules.
local OLD = {
  { cost = 0.1, repairs = 1, status = "completed" },
  { cost = 0.2, repairs = 0, status = "completed" },
  { cost = nil, repairs = 2, status = "completed" }, -- cost unknown
  { cost = 0.05, repairs = 0, status = "failed" },
}

local function old_row(i, o)
  return {
    org_id = "org-old", user_id = "u" .. i, platform = "linkedin", template_id = "legacy",
    created_at = os.date("!%Y-%m-%d %H:%M:%S", os.time() - 3600 * i) .. ".000",
    final_system_prompt = "system " .. i, final_user_prompt = "user " .. i,
    token_usage = { prompt_tokens = 100, completion_tokens = 20, estimated_cost = o.cost,
                    cost_source = o.cost and "local_estimate" or "unpriced",
                    calls = { { kind = "initial", cost = o.cost or genaudit.null, cost_source = "local_estimate" } } },
    performance = { total_latency_ms = 1000 + i, provider_latency_ms = 900 + i, model_identifier = "m-old" },
    repair_info = { repair_count = o.repairs, repair_types = o.repairs > 0 and { "length_exceeded" } or {},
                    initial_validation_score = 70 },
    status = o.status, error = o.status == "failed" and "PROVIDER_ERROR: HTTP 401" or nil,
    content = "old content " .. i,
  }
end

-- The columns a schema-5 row has.
local COLUMNS5 = { "id", "org_id", "user_id", "platform", "template_id", "template_version", "status", "content",
  "error", "created_at", "final_system_prompt", "final_user_prompt", "token_metrics", "performance_metrics",
  "repair_metrics", "request_params", "replay_of" }

local function literal(v)
  if v == nil then return "NULL" end
  return "'" .. tostring(v):gsub("'", "''") .. "'"
end

-- The INSERT statements that put the OLD rows into a schema-5 database, as
-- that time's genaudit wrote them: today's store seals every row into a
-- hash chain (migration 0008) and cannot write a schema-5 table, so the rows
-- are built by the row builder in a scratch store and inserted with SQL.
-- Returns the statements (one string) and the rows' ids.
local function old_inserts(backend)
  local scratch = assert(genaudit.open("sqlite::memory:"))
  local sql, ids = {}, {}
  for i, o in ipairs(OLD) do
    ids[i] = assert(scratch:persist_generation(old_row(i, o)))
    local r = assert(scratch:query("SELECT " .. table.concat(COLUMNS5, ", ")
      .. " FROM generation_snapshots WHERE id = ?", { ids[i] }))[1]
    local vals = {}
    for j, c in ipairs(COLUMNS5) do
      vals[j] = literal(r[c]) .. (c == "created_at" and backend == "postgresql" and "::timestamp AT TIME ZONE 'UTC'"
        or "")
    end
    sql[#sql + 1] = "INSERT INTO generation_snapshots (" .. table.concat(COLUMNS5, ", ") .. ") VALUES ("
      .. table.concat(vals, ", ") .. ");"
  end
  scratch:close()
  return table.concat(sql, "\n"), ids
end

-- suite(name, backend, new_target, describe_fn); new_target() -> open(opts)
-- -> store, --db argument: one database, opened as often as needed; and
-- external(sql) -> output, ok: another client's SQL on it.
local function suite(name, backend, new_target, describe_fn)
  describe_fn(name, function()
    local store, db, ids, new_id, dir

    setup(function()
      dir = tmp.dir()
      local open, external = new_target(dir)
      local s5
      s5, db = open({ migrations_dir = schema5_migrations(backend) })
      assert.equal(5, s5:schema_version())
      s5:close()
      local sql
      sql, ids = old_inserts(backend)
      local out, ok = external(sql)
      assert(ok, out)
      store = open({}) -- every migration: 0006 (and 0008) run over the rows above
      new_id = assert(store:persist_generation{
        org_id = "org-old", user_id = "u9", platform = "linkedin", template_id = "legacy",
        final_system_prompt = "s", final_user_prompt = "u",
        token_usage = { prompt_tokens = 10, completion_tokens = 0, estimated_cost = 0.3,
                        estimated_cost_picousd = 300000000000,
                        calls = { { kind = "initial", cost = 0.3, cost_picousd = 300000000000 } } },
        performance = { total_latency_ms = 5, provider_latency_ms = 4 },
        repair_info = { repair_count = 0, rules = { { slug = "r", runs = 1, fired = 0, errors = 0, timeouts = 0 } } },
      })
    end)

    teardown(function()
      if store then store:close() end
      tmp.rm(dir)
      pg.drop_schemas()
    end)

    it("migrates the database with rows from 5 to the latest schema", function()
      local latest = 0
      for _, m in ipairs(assert(require("genaudit.store").load_migrations(backend))) do latest = m.version end
      assert.equal(latest, store:schema_version())
      assert.is_true(latest >= 6)
      assert.same({ { n = #OLD + 1 } }, store:query("SELECT count(*) AS n FROM generation_snapshots", {}))
    end)

    it("counts the old rows as the ones older than the chain (0008), and verifies", function()
      assert.same({ { legacy_rows = #OLD } }, store:query("SELECT legacy_rows FROM chain_genesis", {}))
      local r = assert(store:verify())
      assert.same({ true, #OLD + 1, #OLD, 1 }, { r.ok, r.rows, r.legacy_rows, r.chains })
    end)

    it("gives old rows their recorded float cost in picodollars, and NULL (never 0) when unknown", function()
      local got = {}
      for i, id in ipairs(ids) do
        got[i] = assert(store:query("SELECT estimated_cost_picousd AS p FROM generation_snapshots WHERE id = ?",
          { id }))[1].p or "NULL"
      end
      assert.same({ 100000000000, 200000000000, "NULL", 50000000000 }, got)
    end)

    it("keeps old rows readable: show and export print them as stored", function()
      local out, err, rc = cli("--db " .. q(db) .. " show " .. ids[3])
      assert.same({ "", 0 }, { err, rc })
      assert.truthy(out:find('"estimated_cost": null', 1, true), out)
      out, err, rc = cli("--db " .. q(db) .. " export --format jsonl --quiet")
      assert.same({ "", 0 }, { err, rc })
      local n = 0
      for line in out:gmatch("[^\n]+") do
        local r = cjson.decode(line)
        n = n + 1
        if r.id == ids[1] then
          assert.same({ 0.1, 100000000000 }, { r.token_metrics.estimated_cost, r.estimated_cost_picousd })
          assert.is_nil(r.token_metrics.estimated_cost_picousd)
          assert.is_nil(r.repair_metrics.rules)
        end
      end
      assert.equal(#OLD + 1, n)
    end)

    it("prices only the rows with a known cost: a missing cost is not 0", function()
      local doc = cjson.decode((cli("--json --db " .. q(db) .. " report cost --template legacy")))
      local r = doc.rows[1]
      -- completed: 0.1, 0.2, unknown and the new 0.3
      assert.same({ 4, 3 }, { r.posts, r.priced_posts })
      assert.equal(core.usd_from_picousd(600000000000), r.total_cost)
      local api = assert(genaudit.report.cost(store, { template = "legacy" })).rows[1]
      assert.equal(core.usd_from_picousd(600000000000) / 3, api.avg_cost)
      doc = cjson.decode((cli("--json --db " .. q(db) .. " report cost --template legacy --status all")))
      assert.same({ 5, 4 }, { doc.rows[1].posts, doc.rows[1].priced_posts })
    end)

    it("counts no rule runs for rows without repair_metrics.rules", function()
      local doc = cjson.decode((cli("--json --db " .. q(db) .. " report rules")))
      assert.same({ status = "all", replays = "excluded", rows = #OLD + 1 }, doc.counted)
      assert.same({ { slug = "r", snapshots = 1, runs = 1, fired = 0, errors = 0, timeouts = 0 } }, doc.rows)
      -- only old rows: read and counted, but no rule to report
      doc = cjson.decode((cli("--json --db " .. q(db) .. " report rules --status failed")))
      assert.same({ { status = "failed", replays = "excluded", rows = 1 }, {} }, { doc.counted, doc.rows })
      assert.equal("counted: failed generations, replays excluded (1 row)\n"
        .. "slug  snapshots  runs  fired  errors  timeouts\n",
        (cli("--db " .. q(db) .. " report rules --status failed")))
    end)

    it("reports repairs of old rows as before: repair_count is there", function()
      local doc = cjson.decode((cli("--json --db " .. q(db) .. " report repairs")))
      assert.same({ "legacy", 3, 4, 2 }, { doc.rows[1].template_id, doc.rows[1].repairs, doc.rows[1].posts,
        doc.rows[1].repaired_posts })
    end)

    it("copies old and new rows to another store, keeping the exact cost", function()
      local other = assert(genaudit.open("sqlite::memory:"))
      assert.same({ copied = #OLD + 1, skipped = 0, failed = 0, purged = 0, errors = {} }, copy.run(store, other))
      for _, id in ipairs({ ids[1], ids[3], new_id }) do
        local sql = "SELECT token_metrics, estimated_cost_picousd FROM generation_snapshots WHERE id = ?"
        local a, b = store:query(sql, { id })[1], other:query(sql, { id })[1]
        assert.same(json.decode(a.token_metrics), json.decode(b.token_metrics))
        assert.equal(a.estimated_cost_picousd, b.estimated_cost_picousd)
      end
      local tm = other:query("SELECT token_metrics FROM generation_snapshots WHERE id = ?", { new_id })[1].token_metrics
      assert.truthy(tm:find('"estimated_cost_picousd":300000000000', 1, true), tm)
      assert.truthy(tm:find('"cost_picousd":300000000000', 1, true), tm)
      other:close()
    end)
  end)
end

suite("old rows (SQLite)", "sqlite", function(dir)
  local path = dir .. "/old.db"
  return function(opts) return assert(genaudit.open("sqlite:" .. path, opts)), path end,
    function(sql) return pg.sh("sqlite3 -bail " .. q(path) .. " " .. q(sql)) end
end, describe)

suite("old rows (PostgreSQL) #postgresql", "postgresql", function()
  local schema = pg.schema()
  return function(opts) return assert(pg.open(schema, opts)), pg.url_for(schema) end,
    function(sql) return pg.psql(sql, schema) end
end, pg.describe)
