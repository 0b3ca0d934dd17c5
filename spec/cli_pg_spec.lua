-- spec/cli_pg_spec.lua
-- Owns: reports and bin/genaudit on a PostgreSQL store (#postgresql), and
-- `genaudit copy`. The same deterministic snapshots are written into a
-- SQLite store and a PostgreSQL store; every report must come out identical
-- on both — through the Lua API and as `genaudit report ... --json` output,
-- byte for byte. A copy of the SQLite store into PostgreSQL keeps ids,
-- created_at and the metric documents, so show and export match too.

local genaudit = require("genaudit")
local report = require("genaudit.report")
local copy = require("genaudit.copy")
local pg = require("spec.support.pg")
local tmp = require("spec.support.tmp")
local util = require("spec.support.util")
local q, cli, lcg = util.q, util.cli, util.lcg

local DAY = 86400
local TEMPLATES = { "customer-story", "event-invite", "hiring", "launch-post", "weekly-tips", "Zeta", "alpha_beta" }
local MODELS = { "claude-3-5-haiku-20241022", "gpt-4o-mini-2024-07-18", "llama-3.1-8b-instruct" }
local PLATFORMS = { "instagram", "linkedin", "x" }
local ORGS = { "org-a", "org-b", 42 }
local SLUGS = { "banned_word", "length_exceeded", "missing_hashtag", "tone_mismatch", "Tone-Case" }
local SINCES = { 7 * DAY, 10 * DAY, 36 * 3600 }

-- 150 snapshot rows over 20 days, as persist_generation tables. Costs and
-- scores with many digits (float sums must agree to the last bit), rows
-- without a cost or a model, repairs with types, prompts that need escaping.
local function generate(now)
  local rnd = lcg(424242)
  local out = {}
  for i = 1, 150 do
    local age
    repeat
      age = rnd.int(120, 20 * DAY - 1)
      local near = false
      for _, b in ipairs(SINCES) do near = near or math.abs(age - b) < 3600 end
    until not near
    local failed = rnd.int(1, 10) == 1
    local repairs = rnd.int(0, 3)
    local types = {}
    for k = 1, math.min(repairs, 3) do types[k] = SLUGS[(i + k) % #SLUGS + 1] end
    local cost
    if not failed and rnd.int(1, 6) ~= 1 then
      cost = rnd.int(1, 5) == 1 and (rnd.int(1, 999) / 3 * 1e-7) or rnd.int(1, 900000) / 1e8
    end
    local provider_ms = rnd.int(80, 6000) + rnd.int(0, 9) / 10
    out[i] = {
      org_id = rnd.pick(ORGS), user_id = "user-" .. i % 5, platform = rnd.pick(PLATFORMS),
      template_id = TEMPLATES[(i - 1) % #TEMPLATES + 1], template_version = i % 3 == 0 and "2" or nil,
      created_at = os.date("!%Y-%m-%d %H:%M:%S", now - age) .. string.format(".%03d", rnd.int(0, 999)),
      final_system_prompt = "You write for business " .. i .. ".\n\t\"quoted\", back\\slash",
      final_user_prompt = "Write post " .. i .. ", please \226\130\172 caf\195\169",
      token_usage = { prompt_tokens = rnd.int(50, 3000), completion_tokens = rnd.int(10, 800), estimated_cost = cost,
                      cost_source = cost and "local_estimate" or "unpriced" },
      performance = { total_latency_ms = provider_ms + rnd.int(1, 900) + rnd.int(0, 99) / 100,
                      provider_latency_ms = provider_ms, model_identifier = not failed and rnd.pick(MODELS) or nil },
      repair_info = { repair_count = repairs, repair_types = types,
                      initial_validation_score = rnd.int(1, 5) ~= 1 and rnd.int(400, 1000) / 10 or nil,
                      repair_log = repairs > 0 and { { attempt = 1, feedback = "Fix, \"please\".", score_after = 100 } }
                        or nil },
      request_params = i % 2 == 0 and { temperature = 0.7, max_tokens = 400 } or nil,
      status = failed and "failed" or "completed", error = failed and "PROVIDER_ERROR: boom" or nil,
      content = not failed and ("Post " .. i .. ", with a comma.") or nil,
    }
  end
  return out
end

local REPORTS = {
  { "cost", { by = "template" }, "report cost --by template" },
  { "cost", { by = "model" }, "report cost --by model" },
  { "cost", { by = "platform" }, "report cost --by platform" },
  { "cost", { by = "org" }, "report cost --by org" },
  { "cost", { by = "day" }, "report cost --by day" },
  { "cost", { by = "template", since = "7d" }, "report cost --by template --since 7d" },
  { "cost", { by = "day", org = 42, since = "10d" }, "report cost --by day --org 42 --since 10d" },
  { "cost", { by = "template", template = "launch-post" }, "report cost --by template --template launch-post" },
  { "repairs", { top = 3, since = "7d" }, "report repairs --top 3 --since 7d" },
  { "repairs", { top = 10 }, "report repairs --top 10" },
  { "repairs", { top = 2, org = "org-b", since = "36h" }, "report repairs --top 2 --org org-b --since 36h" },
  { "latency", { by = "model" }, "report latency --by model" },
  { "latency", { by = "template", since = "10d" }, "report latency --by template --since 10d" },
  { "latency", { by = "model", org = "org-a" }, "report latency --by model --org org-a" },
}
-- absolute UTC dates and the other filters: the same answer from both stores
local D10, D3 = os.date("!%Y-%m-%d", os.time() - 10 * DAY), os.date("!%Y-%m-%d", os.time() - 3 * DAY)
for _, r in ipairs({
  { "cost", { by = "template", since = D10, ["until"] = D3 }, "report cost --by template --since " .. D10
    .. " --until " .. D3 },
  { "cost", { by = "platform", status = "failed" }, "report cost --by platform --status failed" },
  { "latency", { by = "platform", status = "completed", ["until"] = "36h" },
    "report latency --by platform --status completed --until 36h" },
  { "latency", { by = "org", since = D10 .. "T06:30:00" }, "report latency --by org --since " .. D10 .. "T06:30:00" },
  { "repairs", { top = 5, template = "hiring", status = "completed" },
    "report repairs --top 5 --template hiring --status completed" },
  { "list", { limit = 30, since = D10, ["until"] = D3 }, "list --limit 30 --since " .. D10 .. " --until " .. D3 },
  { "list", { template = "Zeta", org = 42 }, "list --template Zeta --org 42" },
}) do REPORTS[#REPORTS + 1] = r end

pg.describe("reports and bin/genaudit on PostgreSQL #postgresql", function()
  local dir, sqlite_db, sqlite_store, pg_schema, pg_store, copy_schema

  setup(function()
    dir = tmp.dir()
    sqlite_db = dir .. "/audit.db"
    sqlite_store = assert(genaudit.open("sqlite:" .. sqlite_db))
    pg_schema = pg.schema()
    pg_store = assert(pg.open(pg_schema))
    for _, g in ipairs(generate(os.time())) do
      assert(sqlite_store:persist_generation(g))
      assert(pg_store:persist_generation(g))
    end
    copy_schema = pg.schema()
    assert(pg.open(copy_schema)):close() -- the schema bin/genaudit copies into
  end)

  teardown(function()
    if sqlite_store then sqlite_store:close() end
    if pg_store then pg_store:close() end
    tmp.rm(dir)
    pg.drop_schemas()
  end)

  describe("genaudit.report", function()
    for _, r in ipairs(REPORTS) do
      it("gives the same answer on both stores: " .. r[3], function()
        local a = assert(report[r[1]](sqlite_store, r[2]))
        local b = assert(report[r[1]](pg_store, r[2]))
        assert.is_true(#a.rows > 0)
        if r[1] == "list" then -- each store made its own ids: compare everything else
          for _, res in ipairs({ a, b }) do
            for _, row in ipairs(res.rows) do
              assert.equal(26, #row.id)
              row.id = nil
            end
          end
        end
        assert.same(a, b)
        assert.equal(report.to_json(a), report.to_json(b))
      end)
    end

    it("lists the same columns in the same order", function()
      assert.same(assert(report.columns(sqlite_store)), assert(report.columns(pg_store)))
    end)
  end)

  describe("genaudit report --json", function()
    for _, r in ipairs(REPORTS) do
      it("prints the same bytes for both stores: " .. r[3], function()
        local out_a, err_a, rc_a = cli("--db " .. q(sqlite_db) .. " --json " .. r[3])
        local out_b, err_b, rc_b = cli("--db " .. q(pg.url_for(pg_schema)) .. " --json " .. r[3])
        assert.same({ 0, "", 0, "" }, { rc_a, err_a, rc_b, err_b })
        if r[1] == "list" then -- each store made its own ids
          out_a, out_b = out_a:gsub('"id":"%w+",', ""), out_b:gsub('"id":"%w+",', "")
        end
        assert.equal(out_a, out_b)
      end)
    end

    it("prints the same text table for both stores", function()
      local a = cli("--db " .. q(sqlite_db) .. " report cost --by template")
      local b = cli("--db " .. q(pg.url_for(pg_schema)) .. " report cost --by template")
      assert.equal(a, b)
    end)
  end)

  describe("genaudit copy", function()
    it("copies every snapshot, keeping ids, created_at and the documents; show and export then match", function()
      local out, err, rc = cli("--db " .. q(sqlite_db) .. " copy --to " .. q(pg.url_for(copy_schema)))
      assert.same({ 0, "" }, { rc, err })
      assert.matches("^150 snapshots copied from %S+ to postgresql://%S+ %(0 already there, 0 failed%)\n$", out)
      -- the copy seals every row into the destination's own chain (migration
      -- 0008): the seal columns differ, nothing else does
      for _, args in ipairs({ "export --format jsonl", "export --format csv", "report repairs --top 10 --json" }) do
        local a = cli("--db " .. q(sqlite_db) .. " " .. args)
        local b = cli("--db " .. q(pg.url_for(copy_schema)) .. " " .. args)
        local format = args:match("^export %-%-format (%a+)")
        if format then a, b = util.unsealed(a, format), util.unsealed(b, format) end
        assert.same(a, b, args)
      end
      local id = assert(sqlite_store:query("SELECT id FROM generation_snapshots ORDER BY id LIMIT 1"))[1].id
      assert.equal(util.unsealed(cli("--db " .. q(sqlite_db) .. " show " .. id .. " --json")),
        util.unsealed(cli("--db " .. q(pg.url_for(copy_schema)) .. " show " .. id .. " --json")))
      -- show's "sealed:" line names the row's chain, position and hash: the copy's own
      local function show(db) return (cli("--db " .. q(db) .. " show " .. id):gsub("\nsealed: +chain %w+ position %d+,"
        .. " record_hash %x+\n", "\nsealed: -\n", 1)) end
      local a, b = show(sqlite_db), show(pg.url_for(copy_schema))
      assert.truthy(a:find("\nsealed: -\n", 1, true), a)
      assert.equal(a, b)
    end)

    it("skips what is already there when run again", function()
      cli("copy --from " .. q(sqlite_db) .. " --to " .. q(pg.url_for(copy_schema)))
      local out, err, rc = cli("--json copy --from " .. q(sqlite_db) .. " --to " .. q(pg.url_for(copy_schema)))
      assert.same({ 0, "", '{"copied":0,"skipped":150,"failed":0,"purged":0}\n' }, { rc, err, out })
    end)

    it("finishes a partial copy: the rows already in PostgreSQL are skipped, the others copied", function()
      local target = pg.schema()
      local dst = assert(pg.open(target))
      local pre = 0
      for i, row in ipairs(assert(sqlite_store:query("SELECT * FROM generation_snapshots ORDER BY id"))) do
        if i % 4 == 0 or i == 1 then
          assert(dst:persist_generation(assert(copy.generation(row))))
          pre = pre + 1
        end
      end
      dst:close()
      local out, err, rc = cli("--json copy --from " .. q(sqlite_db) .. " --to " .. q(pg.url_for(target)))
      assert.same({ 0, "", string.format('{"copied":%d,"skipped":%d,"failed":0,"purged":0}\n', 150 - pre, pre) },
        { rc, err, out })
      assert.equal(util.unsealed(cli("--db " .. q(sqlite_db) .. " export --format jsonl")),
        util.unsealed(cli("--db " .. q(pg.url_for(target)) .. " export --format jsonl")))
    end)

    it("copies PostgreSQL back into a new SQLite file", function()
      local back = dir .. "/back.db"
      local out, err, rc = cli("--json copy --from " .. q(pg.url_for(copy_schema)) .. " --to " .. q("sqlite:" .. back))
      assert.same({ 0, "", '{"copied":150,"skipped":0,"failed":0,"purged":0}\n' }, { rc, err, out })
      assert.equal(util.unsealed(cli("--db " .. q(sqlite_db) .. " export --format jsonl")),
        util.unsealed(cli("--db " .. q(back) .. " export --format jsonl")))
    end)

    it("copies what PostgreSQL can hold and exits 1 naming a row it cannot", function()
      local src = dir .. "/nul.db"
      local s = assert(genaudit.open("sqlite:" .. src))
      local good = generate(os.time())[1]
      assert(s:persist_generation(good))
      local bad = generate(os.time())[2]
      bad.final_user_prompt = "a\0b"
      local bad_id = assert(s:persist_generation(bad))
      s:close()
      local target = pg.schema()
      assert(pg.open(target)):close()
      local out, err, rc = cli("copy --from " .. q(src) .. " --to " .. q(pg.url_for(target)))
      assert.equal(1, rc)
      assert.matches("^1 snapshot copied .* %(0 already there, 1 failed%)\n$", out)
      assert.equal("genaudit: 1 snapshot could not be copied; first: " .. bad_id
        .. ": INVALID: final_user_prompt: PostgreSQL text cannot contain NUL bytes\n", err)
    end)

    it("exits 2 without --to", function()
      local _, err, rc = cli("--db " .. q(sqlite_db) .. " copy")
      assert.equal(2, rc)
      assert.matches("^genaudit: .*%-%-to", err)
    end)
  end)

  describe("errors", function()
    it("exits 1 with one line when the server cannot be reached, without the password", function()
      local out, err, rc = cli("--db " .. q("postgresql://postgres:s3cr3t@127.0.0.1:1/x") .. " report repairs")
      assert.same({ 1, "" }, { rc, out })
      assert.matches("^genaudit: CONNECT: cannot connect to postgresql://postgres@127%.0%.0%.1:1/x: [^\n]*\n$", err)
      assert.falsy(err:find("s3cr3t", 1, true))
    end)

    it("exits 1 for a PostgreSQL database that is not a migrated store", function()
      local schema = pg.schema()
      assert(pg.open(schema, { migrate = false })):close()
      local _, err, rc = cli("--db " .. q(pg.url_for(schema)) .. " report repairs")
      assert.equal(1, rc)
      assert.matches("is not a genaudit store at the current schema %(run 'genaudit migrate'%)\n$", err)
    end)

    it("migrates a PostgreSQL store", function()
      local schema = pg.schema()
      assert(pg.psql("CREATE SCHEMA " .. schema))
      local out, err, rc = cli("--db " .. q(pg.url_for(schema)) .. " --json migrate")
      assert.same({ 0, "", '{"schema_version":8,"applied":8}\n' }, { rc, err, out })
    end)
  end)
end)
