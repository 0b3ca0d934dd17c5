-- Issue 13, point 3 (pinned code), through the real pipeline and the local
-- provider server, on both stores: every snapshot records the SHA-256 of the
-- template and of every rule and policy script in force
-- (repair_metrics.scripts), their sources are stored once, byte-exact, in
-- the immutable scripts table, `genaudit show --scripts` prints them, and
-- `genaudit report repairs --by rule_set` groups by the rule-set digest.
local genaudit = require("genaudit")
local core = require("genaudit.core")
local json = require("genaudit.json")
local cjson = require("cjson")
local provider_server = require("spec.support.provider")
local tmp = require("spec.support.tmp")
local pg = require("spec.support.pg")
local util = require("spec.support.util")
local q, cli = util.q, util.cli

local KEY = "sk-pinned-7e8f9a0b1c-SECRET"
local PRICES = { ["gpt-4o-mini"] = { input_cost_per_token = 1.5e-07, output_cost_per_token = 6e-07 } }

local TEMPLATE = [[return { version = "1",
  voice_signature = "You are {{business.name}}.", task = "Announce {{facts.product}}." }
]]
-- The rule as first written (fires on "BAD") and as edited (fires on "WORSE").
local RULE_V1 = [[return { slug = "no_bad", check = function(d)
  if d:find("BAD", 1, true) then return { message = "remove BAD", penalty = 30 } end end }
]]
local RULE_V2 = [[-- edited: stricter
return { slug = "no_bad", check = function(d)
  if d:find("BAD", 1, true) or d:find("WORSE", 1, true) then return { message = "remove BAD", penalty = 40 } end end }
]]
local POLICY = "return { budget = 1 }\n"
-- A rule whose bytes are not UTF-8 and hold a NUL (in a comment: Lua loads it).
local ODD_RULE = "-- caf\233 \255\254 \0 end of comment\nreturn { slug = \"odd\", check = function() end }\n"

local function ctx()
  return { org_id = 42, user_id = 7, platform = "linkedin", template_id = "launch",
           business = { name = "Acme" }, facts = { product = "Anvil 2" } }
end

-- The rule_set_digest as the README defines it, recomputed independently.
local function recompute(entries)
  local list = {}
  for i, e in ipairs(entries) do list[i] = e end
  table.sort(list, function(a, b)
    if a.slug ~= b.slug then return a.slug < b.slug end
    if a.path ~= b.path then return a.path < b.path end
    return a.digest < b.digest
  end)
  local s = {}
  for i, e in ipairs(list) do s[i] = e.slug .. "\0" .. e.digest .. "\n" end
  return core.sha256(table.concat(s))
end

local function sqlite3(path, sql)
  local out, ok = pg.sh("sqlite3 " .. q(path) .. " " .. q(sql))
  return out, ok
end

-- suite(name, open, refuse) with open(dir, opts) -> store, db argument for
-- bin/genaudit; refuse(db, sql) -> output, ok of running a write outside genaudit.
local function suite(name, open, describe_fn, refuse)
  describe_fn(name, function()
    local srv, dir, store, db

    local function pipeline(s)
      return genaudit.pipeline{
        store = s or store, templates = dir .. "/templates", rules = dir .. "/rules",
        provider = genaudit.providers.openai{ base_url = srv.url, api_key = KEY, model = "gpt-4o-mini" },
        pricing = assert(genaudit.pricing.load(PRICES)), backoff_ms = 10, script_timeout_ms = 200,
      }
    end

    local function metrics(id, s)
      local r = assert((s or store):query("SELECT repair_metrics FROM generation_snapshots WHERE id = ?", { id }))[1]
      return json.decode(r.repair_metrics)
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
      tmp.write(dir .. "/templates/launch.lua", TEMPLATE)
      store, db = open(dir)
    end)

    after_each(function()
      store:close()
      tmp.rm(dir)
    end)

    it("a rule edited between two generations: two digests, both sources byte-exact in scripts", function()
      rule("no_bad", RULE_V1)
      rule("policy", POLICY)
      local p = pipeline()
      srv:queue{ { content = "a BAD draft" }, { content = "a good draft" } }
      local r1 = assert(p:generate(ctx()))
      rule("no_bad", RULE_V2)
      srv:queue{ { content = "a WORSE draft" }, { content = "a fine draft" } }
      local r2 = assert(p:generate(ctx()))

      local s1, s2 = metrics(r1.snapshot_id).scripts, metrics(r2.snapshot_id).scripts
      local rule_path, policy_path = dir .. "/rules/no_bad.lua", dir .. "/rules/policy.lua"
      assert.same({ { slug = "no_bad", path = rule_path, digest = core.sha256(RULE_V1) } }, s1.rules)
      assert.same({ { slug = "no_bad", path = rule_path, digest = core.sha256(RULE_V2) } }, s2.rules)
      assert.are_not.equal(s1.rules[1].digest, s2.rules[1].digest)
      -- the template and the policy, unchanged, have one digest each
      local template = { path = dir .. "/templates/launch.lua", digest = core.sha256(TEMPLATE) }
      assert.same({ template, template }, { s1.template, s2.template })
      local policy = { path = policy_path, digest = core.sha256(POLICY) }
      assert.same({ policy, policy }, { s1.policy, s2.policy })
      -- the rule-set digest is the README's definition, and changed with the rule
      assert.equal(recompute({ s1.rules[1], { slug = "policy", path = policy_path, digest = policy.digest } }),
        s1.rule_set_digest)
      assert.equal(recompute({ s2.rules[1], { slug = "policy", path = policy_path, digest = policy.digest } }),
        s2.rule_set_digest)
      assert.are_not.equal(s1.rule_set_digest, s2.rule_set_digest)
      assert.is_nil(s1.unstored)
      -- both versions are retrievable, byte for byte
      for digest, src in pairs({ [s1.rules[1].digest] = RULE_V1, [s2.rules[1].digest] = RULE_V2,
                                 [template.digest] = TEMPLATE, [policy.digest] = POLICY }) do
        local got = assert(store:get_script(digest))
        assert.same({ digest, src, "text" }, { got.digest, got.source, got.encoding })
        assert.matches("^%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d%.%d%d%d$", got.first_seen)
      end
      assert.equal(4, assert(store:query("SELECT count(*) AS n FROM scripts", {}))[1].n)
      -- validator:rule_set() gives what a generation would record now
      local now = p.validator:rule_set()
      assert.same({ s2.rules, s2.policy, s2.rule_set_digest }, { now.rules, now.policy, now.rule_set_digest })
    end)

    it("a rule whose source is not UTF-8 and holds a NUL round-trips byte-exact (stored as base64)", function()
      rule("odd", ODD_RULE)
      srv:queue{ { content = "draft" } }
      local r = assert(pipeline():generate(ctx()))
      local sc = metrics(r.snapshot_id).scripts
      assert.same({ { slug = "odd", path = dir .. "/rules/odd.lua", digest = core.sha256(ODD_RULE) } }, sc.rules)
      local got = assert(store:get_script(sc.rules[1].digest))
      assert.same({ "base64", ODD_RULE }, { got.encoding, got.source })
      local raw = assert(store:query("SELECT source FROM scripts WHERE digest = ?", { sc.rules[1].digest }))[1]
      assert.equal(core.base64(ODD_RULE), raw.source)
    end)

    it("a script that never loaded is pinned by its failed bytes (load_error), then by its fixed version", function()
      local BROKEN = "return { slug = 'no_bad', check = function( -- syntax error\n"
      rule("no_bad", BROKEN)
      local p = pipeline()
      srv:queue{ { content = "draft" } }
      local _, _, _, id = p:generate(ctx()) -- the broken rule counts against the draft: stored failed
      local sc = metrics(id).scripts
      assert.same({ { slug = "no_bad", path = dir .. "/rules/no_bad.lua", digest = core.sha256(BROKEN),
                      load_error = true } }, sc.rules)
      assert.equal(BROKEN, assert(store:get_script(sc.rules[1].digest)).source)
      rule("no_bad", RULE_V1)
      srv:queue{ { content = "draft" } }
      local r = assert(p:generate(ctx()))
      assert.same({ { slug = "no_bad", path = dir .. "/rules/no_bad.lua", digest = core.sha256(RULE_V1) } },
        metrics(r.snapshot_id).scripts.rules)
      -- a template that does not load: the COMPOSE failure pins its bytes, and no rule set (no validation ran)
      local BAD_TEMPLATE = "return {{{ not a template\n"
      tmp.write(dir .. "/templates/broken.lua", BAD_TEMPLATE)
      local c = ctx()
      c.template_id = "broken"
      local _, err, code, fid = p:generate(c)
      assert.same({ "COMPOSE" }, { code }, err)
      assert.same({ template = { path = dir .. "/templates/broken.lua", digest = core.sha256(BAD_TEMPLATE),
                                 load_error = true } }, metrics(fid).scripts)
      assert.equal(BAD_TEMPLATE, assert(store:get_script(core.sha256(BAD_TEMPLATE))).source)
    end)

    it("put_script is idempotent on the digest; get_script of an unknown digest is nil", function()
      local src = "return { slug = 'x', check = function() end }\n"
      local d = assert(store:put_script("/r/x.lua", src))
      assert.equal(core.sha256(src), d)
      local first = assert(store:get_script(d)).first_seen
      assert.equal(d, assert(store:put_script("/elsewhere/y.lua", src)))
      local rows = assert(store:query("SELECT path, first_seen FROM scripts WHERE digest = ?", { d }))
      assert.same({ { path = "/r/x.lua", first_seen = first } }, rows) -- the first row stays as it was
      assert.is_nil(store:get_script(core.sha256("never stored")))
      assert.same({ nil, "INVALID" }, { select(1, store:put_script("", src)), select(3, store:put_script("", src)) })
      assert.same({ nil, "INVALID" },
        { select(1, store:put_script("bad\255path", src)), select(3, store:put_script("bad\255path", src)) })
    end)

    it("the scripts table refuses UPDATE and DELETE", function()
      local d = assert(store:put_script("/r/x.lua", "return 1\n"))
      store:close()
      local out, ok = refuse(db, "UPDATE scripts SET source = 'return 2' WHERE digest = '" .. d .. "'")
      assert.is_false(ok)
      assert.matches("scripts rows are immutable", out, 1, true)
      out, ok = refuse(db, "DELETE FROM scripts")
      assert.is_false(ok)
      assert.matches("scripts rows are immutable", out, 1, true)
      store = open(dir, { reopen = true })
      assert.same({ path = "/r/x.lua", source = "return 1\n" },
        (function(g) return { path = g.path, source = g.source } end)(assert(store:get_script(d))))
    end)

    it("show --scripts prints each script that judged the draft and its exact source; --json carries them", function()
      rule("no_bad", RULE_V1)
      local p = pipeline()
      srv:queue{ { content = "a BAD draft" }, { content = "a good draft" } }
      local r1 = assert(p:generate(ctx()))
      rule("no_bad", RULE_V2)
      srv:queue{ { content = "fine" } }
      local r2 = assert(p:generate(ctx()))
      store:close()
      for _, case in ipairs({ { r1.snapshot_id, RULE_V1, RULE_V2 }, { r2.snapshot_id, RULE_V2, RULE_V1 } }) do
        local out, err, rc = cli("--db " .. q(db) .. " show --scripts " .. case[1])
        assert.same({ 0, "" }, { rc, err })
        local tail = out:sub((assert(out:find("\n== scripts ==\n", 1, true))))
        local sc = tail:match("rule_set_digest: (%x+)\n")
        assert.equal(64, #sc)
        local expected = "\n-- template launch: " .. dir .. "/templates/launch.lua\n-- sha256 " .. core.sha256(TEMPLATE)
          .. " (" .. #TEMPLATE .. " bytes, first seen "
        assert.truthy(tail:find(expected, 1, true))
        assert.truthy(tail:find(TEMPLATE, 1, true))
        local rule_head = "\n-- rule no_bad: " .. dir .. "/rules/no_bad.lua\n-- sha256 " .. core.sha256(case[2])
        local at = assert(tail:find(rule_head, 1, true))
        local body_at = assert(tail:find("\n", at + #rule_head, true)) + 1
        assert.equal(case[2], tail:sub(body_at, body_at + #case[2] - 1)) -- the exact code that judged it
        assert.is_nil(tail:find(case[3], 1, true))                       -- and not the other version

        out, err, rc = cli("--db " .. q(db) .. " --json show --scripts " .. case[1])
        assert.same({ 0, "" }, { rc, err })
        local doc = cjson.decode(out)
        assert.equal(case[1], doc.id)
        assert.equal(sc, doc.rule_set_digest)
        assert.same({ "template", "launch", TEMPLATE, "text" },
          { doc.scripts[1].kind, doc.scripts[1].slug, doc.scripts[1].source, doc.scripts[1].encoding })
        assert.same({ "rule", "no_bad", case[2], core.sha256(case[2]), false },
          { doc.scripts[2].kind, doc.scripts[2].slug, doc.scripts[2].source, doc.scripts[2].digest,
            doc.scripts[2].load_error })
      end
      store = open(dir, { reopen = true })
    end)

    it("show --scripts on a snapshot without scripts, and --csv --scripts is a usage error", function()
      local id = assert(store:persist_generation{
        org_id = 1, user_id = 1, platform = "x", template_id = "old", final_system_prompt = "s",
        final_user_prompt = "u", token_usage = { prompt_tokens = 1, completion_tokens = 1 },
        performance = { total_latency_ms = 1, provider_latency_ms = 1 }, repair_info = {}, content = "c" })
      store:close()
      local out, err, rc = cli("--db " .. q(db) .. " show --scripts " .. id)
      assert.same({ 0, "" }, { rc, err })
      local tail = "\n== scripts ==\n(no scripts recorded: this snapshot was written before genaudit pinned its code)\n"
      assert.equal(tail, out:sub(-#tail))
      out, err, rc = cli("--db " .. q(db) .. " --json show --scripts " .. id)
      assert.same({ 0, "" }, { rc, err })
      assert.equal(cjson.null, cjson.decode(out).scripts)
      out, err, rc = cli("--db " .. q(db) .. " --csv show --scripts " .. id)
      assert.same({ "", "genaudit: show --scripts: use the text output or --json\n", 2 }, { out, err, rc })
      store = open(dir, { reopen = true })
    end)

    it("async mode: every digest on a row has its source stored by the time the row is", function()
      rule("no_bad", RULE_V1)
      local astore = open(dir, { reopen = true, async = true })
      local p = pipeline(astore)
      srv:queue{ { content = "a BAD draft" }, { content = "ok" } }
      local r = assert(p:generate(ctx()))
      assert(astore:flush())
      local sc = metrics(r.snapshot_id, astore).scripts
      for _, d in ipairs({ sc.template.digest, sc.rules[1].digest }) do
        assert.truthy(astore:get_script(d))
      end
      astore:close()
    end)

    it("report repairs --by rule_set: one line per rule set, rows without one as unknown", function()
      rule("no_bad", RULE_V1)
      local p = pipeline()
      srv:queue{ { content = "BAD one" }, { content = "good one" } }
      local r1 = assert(p:generate(ctx()))
      srv:queue{ { content = "fine" } }
      assert(p:generate(ctx()))
      rule("no_bad", RULE_V2)
      srv:queue{ { content = "WORSE one" }, { content = "good two" } }
      local r3 = assert(p:generate(ctx()))
      srv:queue{ { status = 500, body = "{}" }, { status = 500, body = "{}" }, { status = 500, body = "{}" } }
      local _, _, _, failed_id = pipeline():generate(ctx()) -- no validation ran: no rule set
      assert.truthy(failed_id)
      -- status all: the failed generation (no rule set) counts too, as unknown
      local res = assert(genaudit.report.repairs(store, { by = "rule_set", top = 10, status = "all" }))
      local d1, d3 = metrics(r1.snapshot_id).scripts.rule_set_digest, metrics(r3.snapshot_id).scripts.rule_set_digest
      assert.same({ "rule_set_digest", "repairs", "posts", "repaired_posts", "repair_rate", "avg_initial_score",
                    "top_repair_types", "first_created_at", "last_created_at" }, res.columns)
      local by = {}
      for _, row in ipairs(res.rows) do by[row.rule_set_digest] = row end
      assert.same({ 1, 2, 1, { no_bad = 1 } }, { by[d1].repairs, by[d1].posts, by[d1].repaired_posts,
        by[d1].top_repair_types })
      assert.same({ 1, 1, 1, 60 }, { by[d3].repairs, by[d3].posts, by[d3].repaired_posts, by[d3].avg_initial_score })
      assert.same({ 0, 1 }, { by.unknown.repairs, by.unknown.posts })
      assert.equal(3, #res.rows)
      store:close()
      local out, err, rc = cli("--db " .. q(db) .. " --json report repairs --by rule_set --top 10 --status all")
      assert.same({ 0, "" }, { rc, err })
      assert.equal(3, #cjson.decode(out).rows)
      out, err, rc = cli("--db " .. q(db) .. " report repairs --by nonsense")
      assert.same({ "", "genaudit: unknown --by column 'nonsense' for repairs (use template, rule_set)\n", 2 },
        { out, err, rc })
      store = open(dir, { reopen = true })
    end)
  end)
end

suite("pinned scripts (SQLite)", function(dir, opts)
  local path = dir .. "/audit.db"
  return assert(genaudit.open("sqlite:" .. path, opts and opts.async and { async = true } or nil)), path
end, describe, function(path, sql) return sqlite3(path, sql) end)

local schema
suite("pinned scripts (PostgreSQL) #postgresql", function(_, opts)
  if not (opts and opts.reopen) then schema = pg.schema() end
  return assert(pg.open(schema, opts and opts.async and { async = true } or nil)), pg.url_for(schema)
end, pg.describe, function(_, sql) return pg.psql(sql, schema) end)

-- The same generations on both stores (written into SQLite through the
-- pipeline, copied to PostgreSQL with their ids and created_at): the report
-- by rule set is the same, byte for byte.
pg.describe("report repairs --by rule_set is identical on both stores #postgresql", function()
  local srv, dir
  setup(function() srv = provider_server.start{ api_key = KEY } end)
  teardown(function()
    srv:stop()
    tmp.rm(dir)
    pg.drop_schemas()
  end)

  it("text, JSON and CSV", function()
    dir = tmp.dir()
    os.execute("mkdir -p " .. dir .. "/templates " .. dir .. "/rules")
    tmp.write(dir .. "/templates/launch.lua", TEMPLATE)
    tmp.write(dir .. "/rules/no_bad.lua", RULE_V1)
    local path = dir .. "/audit.db"
    local store = assert(genaudit.open("sqlite:" .. path))
    local p = genaudit.pipeline{
      store = store, templates = dir .. "/templates", rules = dir .. "/rules",
      provider = genaudit.providers.openai{ base_url = srv.url, api_key = KEY, model = "gpt-4o-mini" },
      pricing = assert(genaudit.pricing.load(PRICES)), backoff_ms = 10,
    }
    srv:queue{ { content = "BAD" }, { content = "ok" }, { content = "fine" } }
    assert(p:generate(ctx()))
    assert(p:generate(ctx()))
    tmp.write(dir .. "/rules/no_bad.lua", RULE_V2)
    srv:queue{ { content = "WORSE" }, { content = "BAD again" }, { content = "fine" } }
    p:generate(ctx()) -- budget 2: the second repair passes
    assert(store:persist_generation{ -- a row from before scripts were pinned
      org_id = 1, user_id = 1, platform = "x", template_id = "old", final_system_prompt = "s",
      final_user_prompt = "u", token_usage = { prompt_tokens = 1, completion_tokens = 1 },
      performance = { total_latency_ms = 1, provider_latency_ms = 1 },
      repair_info = { repair_count = 2, repair_types = { "legacy" }, initial_validation_score = 50 } })
    store:close()
    local target = pg.schema()
    assert(pg.open(target)):close() -- creates the schema (migrated)
    local url = pg.url_for(target)
    local _, err, rc = cli("copy --from " .. q(path) .. " --to " .. q(url))
    assert.same({ 0, "" }, { rc, err })
    for _, fmt in ipairs({ "", "--json ", "--csv " }) do
      local a, ea, ra = cli("--db " .. q(path) .. " " .. fmt .. "report repairs --by rule_set --top 10")
      local b, eb, rb = cli("--db " .. q(url) .. " " .. fmt .. "report repairs --by rule_set --top 10")
      assert.same({ 0, "", 0, "" }, { ra, ea, rb, eb })
      assert.equal(a, b)
      assert.truthy(a:find("unknown", 1, true))
    end
  end)
end)

describe("core.base64_decode (how base64 scripts are read back)", function()
  it("inverts core.base64 on any bytes and refuses anything that is not canonical padded base64", function()
    for _, s in ipairs({ "", "a", "ab", "abc", "abcd", "\0\255\254", ODD_RULE, string.rep("\200", 1000) }) do
      assert.equal(s, core.base64_decode(core.base64(s)))
    end
    for _, bad in ipairs({ "abc", "ab=c", "a===", "YQ", "YR==", "YWI=YWI=", "YW\nI=", "YW*=", "Y Q==" }) do
      assert.same({ nil, "INVALID: not canonical base64", "INVALID" }, { core.base64_decode(bad) }, bad)
    end
  end)
end)
