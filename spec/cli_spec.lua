-- spec/cli_spec.lua
-- Owns: bin/genaudit, run as a subprocess with lua5.4 (under both busted
-- engines): migrate, the reports in text / --json / --csv over a seeded store
-- (expected numbers computed here from the seed), show, replay against the
-- local provider server, export, and the exit codes and one-line errors.

local genaudit = require("genaudit")
local cjson = require("cjson")
local provider_server = require("spec.support.provider")
local tmp = require("spec.support.tmp")
local util = require("spec.support.util")
local q, cli, lcg, parse_csv = util.q, util.cli, util.lcg, util.parse_csv

local KEY = "sk-cli-test-5b7c1d-SECRET"
local DAY = 86400
local TEMPLATES = { "event-invite", "hiring", "launch-post", "weekly-tips" }
local LEGACY = "hiring" -- repaired a lot, but only more than 7 days ago

-- 32 ordinary snapshots over 14 days (none within an hour of the 7-day
-- boundary) plus one with a repair log, for show and replay.
local function generate(now)
  local rnd = lcg(777).int
  local rows = {}
  for i = 1, 32 do
    local age
    repeat age = rnd(60, 14 * DAY - 1) until math.abs(age - 7 * DAY) > 3600
    local t = TEMPLATES[(i - 1) % #TEMPLATES + 1]
    local r = {
      template_id = t, age = age, org = i % 2 == 0 and "org-a" or "org-b",
      created_at = os.date("!%Y-%m-%d %H:%M:%S", now - age) .. string.format(".%03d", rnd(0, 999)),
      cost = (i ~= 3 and i ~= 11) and rnd(1, 400000) / 1e8 or nil, -- two launch-post rows have no cost
      model = i % 3 == 0 and "claude-3-5-haiku-20241022" or "gpt-4o-mini-2024-07-18",
      provider_ms = rnd(100, 3000), overhead = rnd(1, 200),
    }
    if t == LEGACY then r.repairs = age > 7 * DAY and rnd(5, 8) or 0 else r.repairs = rnd(0, 3) end
    rows[i] = r
  end
  return rows
end

local SHOW = {
  system = "You write for Acme Anvils.\nConstraints:\n- At most 20 words.",
  user = "Announce the Anvil 2.\n\nTone: playful",
  content = "alpha beta gamma delta",
  feedback = "Please shorten the post.\n- 31 words, limit 20",
}

local function seed(dbfile)
  local store = assert(genaudit.open("sqlite:" .. dbfile))
  local rows = generate(os.time())
  for i, r in ipairs(rows) do
    local types = {}
    for k = 1, math.min(r.repairs, 2) do types[k] = k == 1 and "length_exceeded" or "missing_hashtag" end
    r.id = assert(store:persist_generation{
      org_id = r.org, user_id = "u" .. i, platform = "linkedin", template_id = r.template_id,
      created_at = r.created_at, final_system_prompt = "system " .. i, final_user_prompt = "user " .. i,
      token_usage = { prompt_tokens = 100 + i, completion_tokens = 20 + i, estimated_cost = r.cost },
      performance = { total_latency_ms = r.provider_ms + r.overhead, provider_latency_ms = r.provider_ms,
                      model_identifier = r.model },
      repair_info = { repair_count = r.repairs, repair_types = types, initial_validation_score = 60 + i },
      content = "content " .. i,
    })
  end
  local show_id = assert(store:persist_generation{
    org_id = "org-z", user_id = "u0", platform = "x", template_id = "launch-post", template_version = "7",
    final_system_prompt = SHOW.system, final_user_prompt = SHOW.user,
    token_usage = { prompt_tokens = 812, completion_tokens = 240, estimated_cost = 0.000266 },
    performance = { total_latency_ms = 2310.4, provider_latency_ms = 2291.7,
                    model_identifier = "gpt-4o-mini-2024-07-18", requested_model = "gpt-4o-mini", provider = "openai" },
    repair_info = { repair_count = 1, repair_types = { "length_exceeded" }, initial_validation_score = 70,
                    repair_log = { { attempt = 1, feedback = SHOW.feedback, score_before = 70, score_after = 100,
                                     issues = { { slug = "length_exceeded", message = "31 words, limit 20",
                                                  penalty = 30 } } } } },
    request_params = { temperature = 0.5, max_tokens = 200 },
    content = SHOW.content,
  })
  store:close()
  rows[#rows + 1] = { template_id = "launch-post", age = 0, org = "org-z", cost = 0.000266, repairs = 1, id = show_id,
                      model = "gpt-4o-mini-2024-07-18" }
  return rows, show_id
end

-- Expected cost by template: posts, priced, avg_cost, in plain Lua.
local function expected_cost(rows, template)
  local out = {}
  for _, r in ipairs(rows) do
    if not template or r.template_id == template then
      local e = out[r.template_id] or { posts = 0, priced = 0, total = 0 }
      out[r.template_id] = e
      e.posts = e.posts + 1
      if r.cost then e.priced, e.total = e.priced + 1, e.total + r.cost end
    end
  end
  for _, e in pairs(out) do e.avg = e.total / e.priced end
  return out
end

-- Expected Stability Test: { {template_id, repairs} } top 3 over 7 days.
local function expected_top3(rows)
  local sums = {}
  for _, r in ipairs(rows) do
    if r.age < 7 * DAY then sums[r.template_id] = (sums[r.template_id] or 0) + r.repairs end
  end
  local list = {}
  for t, s in pairs(sums) do list[#list + 1] = { t, s } end
  table.sort(list, function(a, b)
    if a[2] ~= b[2] then return a[2] > b[2] end
    return a[1] < b[1]
  end)
  return { list[1], list[2], list[3] }
end

local function lines(s)
  local out = {}
  for l in s:gmatch("([^\n]*)\n") do out[#out + 1] = l end
  return out
end

local function words(s)
  local out = {}
  for w in s:gmatch("%S+") do out[#out + 1] = w end
  return out
end

local function near(expected, got, rel)
  return math.abs(expected - got) <= (rel or 1e-9) * math.max(1, math.abs(expected))
end

describe("bin/genaudit", function()
  local dir, db, rows, show_id, srv

  local function query(sql, params)
    local store = assert(genaudit.open("sqlite:" .. db, { migrate = false }))
    local r = assert(store:query(sql, params or {}))
    store:close()
    return r
  end

  setup(function()
    dir = tmp.dir()
    db = dir .. "/audit.db"
    rows, show_id = seed(db)
    srv = provider_server.start{ api_key = KEY }
  end)

  teardown(function()
    srv:stop()
    tmp.rm(dir)
  end)

  before_each(function() srv:reset() end)

  describe("migrate", function()
    it("creates a database at the current schema, then finds nothing to do", function()
      local path = dir .. "/new.db"
      local out, err, rc = cli("--db " .. q(path) .. " migrate")
      assert.same({ "schema version 8 (8 migrations applied)\n", "", 0 }, { out, err, rc })
      out, err, rc = cli("--json --db " .. q("sqlite:" .. path) .. " migrate")
      assert.same({ '{"schema_version":8,"applied":0}\n', "", 0 }, { out, err, rc })
      local store = assert(genaudit.open("sqlite:" .. path, { migrate = false }))
      assert.equal(8, store:schema_version())
      store:close()
    end)
  end)

  describe("report cost", function()
    it("prints an aligned table with a header row", function()
      local out, err, rc = cli("--db " .. q(db) .. " report cost --by template")
      assert.same({ "", 0 }, { err, rc })
      local ls = lines(out)
      -- first what it counted (every seeded row is a completed non-replay)
      assert.equal("counted: completed generations, replays excluded (33 rows)", table.remove(ls, 1))
      assert.same({ "template_id", "posts", "priced_posts", "total_cost", "avg_cost", "p50_cost", "p95_cost",
                    "total_tokens", "avg_tokens" }, words(ls[1]))
      assert.equal(1 + #TEMPLATES, #ls)
      local e = expected_cost(rows)
      for k = 2, #ls do
        local w = words(ls[k])
        local x = assert(e[w[1]], w[1])
        assert.same({ x.posts, x.priced }, { tonumber(w[2]), tonumber(w[3]) })
        assert.is_true(near(x.avg, tonumber(w[5]), 1e-5), ls[k])
        assert.equal(#ls[1], #ls[k]) -- aligned: every line as wide as the header
      end
    end)

    it("prints JSON with every number exact", function()
      local out, err, rc = cli("--db " .. q(db) .. " --json report cost --by template")
      assert.same({ "", 0 }, { err, rc })
      local doc = cjson.decode(out)
      assert.equal("template_id", doc.columns[1])
      local e = expected_cost(rows)
      assert.equal(#TEMPLATES, #doc.rows)
      for _, r in ipairs(doc.rows) do
        local x = e[r.template_id]
        assert.same({ x.posts, x.priced }, { r.posts, r.priced_posts })
        assert.is_true(near(x.avg, r.avg_cost), r.template_id)
        assert.is_true(near(x.total, r.total_cost), r.template_id)
      end
      for k = 2, #doc.rows do assert.is_true(doc.rows[k - 1].total_cost >= doc.rows[k].total_cost) end
    end)

    it("prints CSV with a header row", function()
      local out, err, rc = cli("--csv --db " .. q(db) .. " report cost --by template")
      assert.same({ "", 0 }, { err, rc })
      local recs = parse_csv(out)
      assert.same({ "template_id", "posts", "priced_posts", "total_cost", "avg_cost", "p50_cost", "p95_cost",
                    "total_tokens", "avg_tokens" }, recs[1])
      local e = expected_cost(rows)
      assert.equal(1 + #TEMPLATES, #recs)
      for k = 2, #recs do
        local x = e[recs[k][1]]
        assert.same({ x.posts, x.priced }, { tonumber(recs[k][2]), tonumber(recs[k][3]) })
        assert.is_true(near(x.avg, tonumber(recs[k][5])))
      end
    end)

    it("answers the Financial Test with --template", function()
      local out, err, rc = cli("--json --db " .. q(db) .. " report cost --by template --template launch-post")
      assert.same({ "", 0 }, { err, rc })
      local doc = cjson.decode(out)
      local x = expected_cost(rows, "launch-post")["launch-post"]
      assert.equal(1, #doc.rows)
      assert.is_true(x.priced < x.posts, "the seed has costless launch-post rows")
      assert.same({ "launch-post", x.posts, x.priced }, { doc.rows[1].template_id, doc.rows[1].posts,
        doc.rows[1].priced_posts })
      assert.is_true(near(x.avg, doc.rows[1].avg_cost))
    end)

    it("limits to one org", function()
      local out, _, rc = cli("--json --db " .. q(db) .. " report cost --by org --org org-z")
      assert.equal(0, rc)
      local doc = cjson.decode(out)
      assert.equal(1, #doc.rows)
      assert.same({ "org-z", 1, 0.000266 }, { doc.rows[1].org_id, doc.rows[1].posts, doc.rows[1].total_cost })
    end)
  end)

  describe("report repairs", function()
    it("answers the Stability Test with --top 3 --since 7d", function()
      local out, err, rc = cli("--json --db " .. q(db) .. " report repairs --top 3 --since 7d")
      assert.same({ "", 0 }, { err, rc })
      local doc = cjson.decode(out)
      local got = {}
      for k, r in ipairs(doc.rows) do got[k] = { r.template_id, r.repairs } end
      assert.same(expected_top3(rows), got)
      for _, r in ipairs(doc.rows) do assert.are_not.equal(LEGACY, r.template_id) end
    end)

    it("prints the ranking as a table and as CSV", function()
      local out, _, rc = cli("--db " .. q(db) .. " report repairs --top 3 --since 7d")
      assert.equal(0, rc)
      local ls = lines(out)
      assert.equal("counted: completed generations, replays excluded", table.remove(ls, 1):match("^(.-) %("))
      assert.equal(4, #ls)
      assert.same({ "template_id", "repairs", "posts" }, { words(ls[1])[1], words(ls[1])[2], words(ls[1])[3] })
      local top = expected_top3(rows)
      for k = 1, 3 do assert.same({ top[k][1], tostring(top[k][2]) }, { words(ls[k + 1])[1], words(ls[k + 1])[2] }) end
      out, _, rc = cli("--csv --db " .. q(db) .. " report repairs --top 3 --since 7d")
      assert.equal(0, rc)
      local recs = parse_csv(out)
      assert.equal("top_repair_types", recs[1][7])
      for k = 1, 3 do assert.same({ top[k][1], tostring(top[k][2]) }, { recs[k + 1][1], recs[k + 1][2] }) end
    end)
  end)

  describe("report latency", function()
    it("prints percentiles per model", function()
      local out, err, rc = cli("--json --db " .. q(db) .. " report latency --by model")
      assert.same({ "", 0 }, { err, rc })
      local doc = cjson.decode(out)
      local posts = {}
      for _, r in ipairs(rows) do posts[r.model] = (posts[r.model] or 0) + 1 end
      assert.equal(2, #doc.rows)
      for _, r in ipairs(doc.rows) do
        assert.equal(posts[r.model_identifier], r.posts)
        assert.is_true(r.p50_total_ms <= r.p95_total_ms and r.p95_total_ms <= r.p99_total_ms)
        assert.is_true(r.p99_overhead_ms <= 200)
      end
      out, err, rc = cli("--db " .. q(db) .. " report latency --by template")
      assert.same({ "", 0 }, { err, rc })
      assert.equal("p99_overhead_ms", words(lines(out)[2])[11])
    end)
  end)

  describe("show", function()
    it("prints the ids, the prompts in full, the metrics and the repair log", function()
      local out, err, rc = cli("--db " .. q(db) .. " show " .. show_id)
      assert.same({ "", 0 }, { err, rc })
      for _, s in ipairs({ "id:          " .. show_id, "status:      completed", "template:    launch-post (version 7)",
                           "model:       gpt-4o-mini-2024-07-18", SHOW.system, SHOW.user, SHOW.content,
                           '"estimated_cost": 0.000266', '"provider_latency_ms": 2291.7', '"repair_count": 1',
                           "attempt 1  score 70 -> 100", "issues:   length_exceeded: 31 words, limit 20 (-30)",
                           "feedback: Please shorten the post.\n              - 31 words, limit 20" }) do
        assert.truthy(out:find(s, 1, true), s)
      end
    end)

    it("prints the row as JSON with --json", function()
      local out, err, rc = cli("--json --db " .. q(db) .. " show " .. show_id)
      assert.same({ "", 0 }, { err, rc })
      local doc = cjson.decode(out)
      assert.same({ show_id, SHOW.user, 0.000266, 70 }, { doc.id, doc.final_user_prompt, doc.estimated_cost,
        doc.repair_metrics.initial_validation_score })
      assert.equal(SHOW.feedback, doc.repair_metrics.repair_log[1].feedback)
    end)

    it("exits 1 with one line on stderr for an unknown id", function()
      assert.same({ "", "genaudit: no snapshot with id '01NOPE'\n", 1 }, { cli("--db " .. q(db) .. " show 01NOPE") })
    end)
  end)

  describe("errors", function()
    it("exits 1 when the database is missing, and does not create it", function()
      local path = dir .. "/missing.db"
      for _, args in ipairs({ "report cost --by template", "report repairs", "show X", "export --format csv",
                              "replay X" }) do
        assert.same({ "", "genaudit: no database at " .. path .. " (run 'genaudit migrate' to create one)\n", 1 },
          { cli("--db " .. q(path) .. " " .. args) })
      end
      assert.is_nil(io.open(path, "rb"))
    end)

    it("exits 1 when the file is not a migrated store", function()
      local path = dir .. "/empty.db"
      tmp.write(path, "")
      assert.same({ "", "genaudit: " .. path .. " is not a genaudit store at the current schema"
        .. " (run 'genaudit migrate')\n", 1 }, { cli("--db " .. q(path) .. " report repairs") })
    end)

    it("exits 2 for a bad time", function()
      assert.same({ "", "genaudit: bad time '7days' (use e.g. 30m, 24h, 7d, 2w, 2026-11-01 or 2026-11-01T12:00:00)\n",
        2 }, { cli("--db " .. q(db) .. " report repairs --since 7days") })
      assert.same({ "", "genaudit: bad time '0h' (use e.g. 30m, 24h, 7d, 2w, 2026-11-01 or 2026-11-01T12:00:00)\n", 2 },
        { cli("--db " .. q(db) .. " export --format jsonl --since 0h") })
      assert.same({ "", "genaudit: bad time '2026-02-30' (use e.g. 30m, 24h, 7d, 2w, 2026-11-01 or "
        .. "2026-11-01T12:00:00)\n", 2 }, { cli("--db " .. q(db) .. " list --until 2026-02-30") })
    end)

    it("exits 2 for an unknown --by column, even without a database", function()
      assert.same({ "", "genaudit: unknown --by column 'user' for cost (use template, model, platform, org, day)\n",
        2 }, { cli("--db " .. q(db) .. " report cost --by user") })
      assert.same({ "", "genaudit: unknown --by column 'day' for latency (use model, template, platform, org)\n", 2 },
        { cli("--db /nonexistent/x.db report latency --by day") })
    end)

    it("exits 2 for an unknown command or option", function()
      assert.same({ "", "genaudit: unknown command 'frobnicate'\n", 2 }, { cli("frobnicate") })
      assert.same({ "", "genaudit: unknown option '--colour'\n", 2 }, { cli("--colour report repairs") })
      local out, err, rc = cli("report")
      assert.same({ "", 2 }, { out, rc })
      assert.matches("^genaudit: [^\n]+\n$", err)
    end)

    it("exits 2 for a bad --top", function()
      assert.same({ "", "genaudit: top must be a positive integer, got 'many'\n", 2 },
        { cli("--db " .. q(db) .. " report repairs --top many") })
    end)
  end)

  describe("replay", function()
    local function row(id)
      return query("SELECT * FROM generation_snapshots WHERE id = ?", { id })[1]
    end

    local function replay_args(extra)
      return "--db " .. q(db) .. " replay " .. show_id .. " --provider openai --base-url " .. q(srv.url)
        .. " --model gpt-4o-mini" .. (extra or "")
    end

    it("prints both outputs and the similarity, and records a linked snapshot", function()
      local before = row(show_id)
      srv:queue{ { content = "alpha beta gamma epsilon" } }
      local out, err, rc = cli(replay_args(), "GENAUDIT_API_KEY=" .. KEY)
      assert.same({ "", 0 }, { err, rc })
      -- SHOW was repaired once and predates stored drafts: its first draft is
      -- unknown, and comparing with its repaired content would be false drift
      assert.truthy(out:find("similarity: unknown (the original was repaired 1 time(s) before drafts were stored:"
        .. " its first draft is not kept)\n", 1, true), out)
      assert.truthy(out:find("== stored content ==\nalpha beta gamma delta\n", 1, true), out)
      assert.truthy(out:find("== new output ==\nalpha beta gamma epsilon\n", 1, true), out)
      assert.falsy(out:find(KEY, 1, true))
      local sid = out:match("replay snapshot: (%w+)\n")
      assert.equal(26, #sid)
      local replayed = row(sid)
      assert.same({ show_id, "alpha beta gamma epsilon", SHOW.system, SHOW.user },
        { replayed.replay_of, replayed.content, replayed.final_system_prompt, replayed.final_user_prompt })
      assert.same(before, row(show_id))
      local sent = cjson.decode(srv:requests()[1].body)
      assert.same({ "gpt-4o-mini", SHOW.system, SHOW.user, 0.5, 200 }, { sent.model, sent.messages[1].content,
        sent.messages[2].content, sent.temperature, sent.max_tokens })
    end)

    it("records nothing with --no-record", function()
      local count = query("SELECT count(*) AS n FROM generation_snapshots")[1].n
      srv:queue{ { content = "alpha beta gamma delta" } }
      local out, err, rc = cli(replay_args(" --no-record"), "GENAUDIT_API_KEY=" .. KEY)
      assert.same({ "", 0 }, { err, rc })
      assert.truthy(out:find("similarity: unknown (", 1, true), out)
      assert.truthy(out:find("replay snapshot: not recorded (--no-record)\n", 1, true), out)
      assert.equal(count, query("SELECT count(*) AS n FROM generation_snapshots")[1].n)
    end)

    it("uses the stored provider and requested model by default", function()
      local out, err, rc = cli("--json --db " .. q(db) .. " replay " .. show_id .. " --no-record",
        "GENAUDIT_API_KEY=" .. KEY .. " GENAUDIT_BASE_URL=" .. q(srv.url))
      assert.same({ "", 0 }, { err, rc })
      local doc = cjson.decode(out)
      assert.same({ show_id, "openai", "gpt-4o-mini", SHOW.content }, { doc.id, doc.provider, doc.model,
        doc.stored_content })
      assert.equal("gpt-4o-mini", cjson.decode(srv:requests()[1].body).model)
    end)

    it("exits 1 when the provider rejects the key, without printing it", function()
      local out, err, rc = cli(replay_args(" --no-record"), "GENAUDIT_API_KEY=sk-wrong-key-0000")
      assert.same({ "", 1 }, { out, rc })
      assert.matches("^genaudit: replay failed: PROVIDER_REJECTED: [^\n]+\n$", err)
      assert.falsy(err:find("sk-wrong-key-0000", 1, true))
    end)

    it("replays through Gemini's OpenAI-compatible endpoint with --provider gemini", function()
      local out, err, rc = cli("--json --db " .. q(db) .. " replay " .. show_id .. " --no-record --provider gemini"
        .. " --model gemini-2.0-flash --base-url " .. q(srv.url .. "/v1beta/openai/"), "GENAUDIT_API_KEY=" .. KEY)
      assert.same({ "", 0 }, { err, rc })
      assert.same({ "gemini", "gemini-2.0-flash" }, { cjson.decode(out).provider, cjson.decode(out).model })
      local e = srv:requests()[1]
      assert.same({ "/v1beta/openai/chat/completions", "valid", "Bearer [redacted]" },
        { e.path, e.auth, e.headers.authorization })
    end)

    it("replays through an Azure deployment with --provider azure: api-version and the api-key header", function()
      local out, err, rc = cli("--json --db " .. q(db) .. " replay " .. show_id .. " --no-record --provider azure"
        .. " --base-url " .. q(srv.url .. "/openai/deployments/gpt4o-prod"), "GENAUDIT_API_KEY=" .. KEY)
      assert.same({ "", 0 }, { err, rc })
      assert.equal("azure", cjson.decode(out).provider)
      local e = srv:requests()[1]
      assert.same({ "/openai/deployments/gpt4o-prod/chat/completions", "api-version=2024-10-21", "valid", nil },
        { e.path, e.query, e.auth, e.headers.authorization })
    end)

    it("exits 2 for --provider azure without a base URL, and for a base URL that is not one", function()
      local out, err, rc = cli("--db " .. q(db) .. " replay " .. show_id .. " --provider azure",
        "GENAUDIT_API_KEY=" .. KEY)
      assert.same({ "", 2 }, { out, rc })
      assert.matches("^genaudit: replay %-%-provider azure needs %-%-base%-url", err)
      out, err, rc = cli("--db " .. q(db) .. " replay " .. show_id .. " --base-url api.example.com",
        "GENAUDIT_API_KEY=" .. KEY)
      assert.same({ "", "genaudit: replay: openai: base_url: http(s) URL without query or spaces expected\n", 2 },
        { out, err, rc })
    end)

    it("exits 1 for an unknown id", function()
      assert.same({ "", "genaudit: no snapshot with id 'NOPE'\n", 1 },
        { cli("--db " .. q(db) .. " replay NOPE --base-url " .. q(srv.url)) })
    end)
  end)

  describe("export", function()
    local function count() return query("SELECT count(*) AS n FROM generation_snapshots")[1].n end

    it("writes JSONL to a file", function()
      local file = dir .. "/out.jsonl"
      local n = count()
      local out, err, rc = cli("--db " .. q(db) .. " export --format jsonl --out " .. q(file))
      assert.same({ n .. " rows written to " .. file .. "\n", "", 0 }, { out, err, rc })
      local ls = lines(tmp.read(file))
      assert.equal(n, #ls)
      local ids = {}
      for _, l in ipairs(ls) do ids[cjson.decode(l).id] = true end
      assert.truthy(ids[show_id])
    end)

    it("writes CSV to a file", function()
      local file = dir .. "/out.csv"
      local n = count()
      local _, err, rc = cli("--db " .. q(db) .. " export --format csv --out " .. q(file))
      assert.same({ "", 0 }, { err, rc })
      local recs = parse_csv(tmp.read(file))
      assert.equal(n + 1, #recs)
      assert.same({ "id", "org_id" }, { recs[1][1], recs[1][2] })
    end)

    it("writes to stdout, filtered by org and period", function()
      local out, err, rc = cli("--db " .. q(db) .. " export --format jsonl --org org-z --since 1d")
      assert.same({ "", 0 }, { err, rc })
      local ls = lines(out)
      assert.is_true(#ls >= 1)
      for _, l in ipairs(ls) do assert.equal("org-z", cjson.decode(l).org_id) end
    end)
  end)
  describe("on a store no other test writes to", function()
    local fdb, frows, fshow

    setup(function()
      fdb = dir .. "/fresh.db"
      frows, fshow = seed(fdb)
    end)

    describe("report options", function()
      it("answers the Financial Test with --template alone (--by defaults to template)", function()
        local a = cli("--json --db " .. q(fdb) .. " report cost --template launch-post")
        assert.equal(a, cli("--json --db " .. q(fdb) .. " report cost --by template --template launch-post"))
        local doc = cjson.decode(a)
        local x = expected_cost(frows, "launch-post")["launch-post"]
        assert.same({ 1, "launch-post", x.posts, x.priced }, { #doc.rows, doc.rows[1].template_id, doc.rows[1].posts,
          doc.rows[1].priced_posts })
        assert.is_true(near(x.avg, doc.rows[1].avg_cost))
      end)

      it("takes absolute UTC dates in --since and --until", function()
        local sorted = {}
        for _, r in ipairs(frows) do if r.created_at then sorted[#sorted + 1] = r end end
        table.sort(sorted, function(a, b) return a.created_at < b.created_at end)
        local d1, d2 = sorted[8].created_at:sub(1, 10), sorted[24].created_at:sub(1, 10)
        local want = 0
        for _, r in ipairs(sorted) do
          if r.created_at:sub(1, 10) >= d1 and r.created_at:sub(1, 10) <= d2 then want = want + 1 end
        end
        local out, err, rc = cli("--json --db " .. q(fdb) .. " report cost --by org --since " .. d1
          .. " --until " .. d2)
        assert.same({ "", 0 }, { err, rc })
        local got = 0
        for _, r in ipairs(cjson.decode(out).rows) do got = got + r.posts end
        assert.equal(want, got)
        local t = sorted[8].created_at:sub(1, 19)
        local before = 0
        for _, r in ipairs(sorted) do if r.created_at < t then before = before + 1 end end
        out = cli("--json --db " .. q(fdb) .. " list --limit 100 --until " .. t:gsub(" ", "T"))
        assert.equal(before, #cjson.decode(out).rows)
        assert.is_true(before >= 7)
      end)

      it("groups latency by platform and by org", function()
        for by, col in pairs({ platform = "platform", org = "org_id" }) do
          local out, err, rc = cli("--json --db " .. q(fdb) .. " report latency --by " .. by)
          assert.same({ "", 0 }, { err, rc })
          local posts = {}
          for _, r in ipairs(frows) do
            local k = by == "org" and r.org or (r.org == "org-z" and "x" or "linkedin")
            posts[k] = (posts[k] or 0) + 1
          end
          local doc = cjson.decode(out)
          assert.equal(col, doc.columns[1])
          for _, r in ipairs(doc.rows) do assert.equal(posts[r[col]], r.posts, r[col]) end
        end
      end)

      it("limits repairs to one template", function()
        local out, err, rc = cli("--json --db " .. q(fdb) .. " report repairs --template " .. LEGACY)
        assert.same({ "", 0 }, { err, rc })
        local sum, repaired = 0, 0
        for _, r in ipairs(frows) do
          if r.template_id == LEGACY then sum = sum + r.repairs end
          if r.template_id == LEGACY and r.repairs >= 2 then repaired = repaired + 1 end
        end
        local doc = cjson.decode(out)
        assert.same({ 1, LEGACY, sum }, { #doc.rows, doc.rows[1].template_id, doc.rows[1].repairs })
        assert.same({ length_exceeded = repaired, missing_hashtag = repaired }, doc.rows[1].top_repair_types)
      end)

      it("filters by --status", function()
        local out = cli("--json --db " .. q(fdb) .. " report cost --by org --status failed")
        assert.same({}, cjson.decode(out).rows) -- every seeded row completed
        out = cli("--json --db " .. q(fdb) .. " report cost --by org --status completed")
        assert.equal(cli("--json --db " .. q(fdb) .. " report cost --by org"), out)
        local _, err, rc = cli("--db " .. q(fdb) .. " report cost --status done")
        assert.same({ "genaudit: unknown status 'done' (use completed, failed or all)\n", 2 }, { err, rc })
      end)
    end)

    describe("list", function()
      -- the seeded frows newest first (the show row is the newest: created now)
      local function newest()
        local list = {}
        for _, r in ipairs(frows) do list[#list + 1] = r end
        table.sort(list, function(a, b)
          if (a.age or 0) ~= (b.age or 0) then return (a.age or 0) < (b.age or 0) end
          return a.id > b.id
        end)
        return list
      end

      it("prints the 20 newest snapshots, newest first: id, created_at, template, status, cost, repairs", function()
        local out, err, rc = cli("--db " .. q(fdb) .. " list")
        assert.same({ "", 0 }, { err, rc })
        local ls = lines(out)
        assert.same({ "id", "created_at", "template_id", "status", "estimated_cost", "repair_count" }, words(ls[1]))
        assert.equal(21, #ls)
        local want = newest()
        for k = 2, 21 do
          local w = words(ls[k])
          local r = want[k - 1]
          assert.same({ r.id, r.template_id, "completed", tostring(r.repairs) },
            { w[1], w[4], w[5], w[7] })
          if r.cost then assert.is_true(near(r.cost, tonumber(w[6]), 1e-5)) else assert.equal("-", w[6]) end
        end
      end)

      it("filters by template, org and status, with --limit, as JSON", function()
        local out, err, rc = cli("--json --db " .. q(fdb) .. " list --template hiring --org org-a --limit 3")
        assert.same({ "", 0 }, { err, rc })
        local want = {}
        for _, r in ipairs(newest()) do
          if r.template_id == "hiring" and r.org == "org-a" and #want < 3 then want[#want + 1] = r.id end
        end
        local got = {}
        for i, r in ipairs(cjson.decode(out).rows) do got[i] = r.id end
        assert.same(want, got)
        assert.equal(3, #got)
      end)

      it("finds ids that show accepts in lower case", function()
        local id = words(lines(cli("--db " .. q(fdb) .. " list --limit 1"))[2])[1]
        assert.equal(fshow, id)
        local out, err, rc = cli("--db " .. q(fdb) .. " show " .. id:lower())
        assert.same({ "", 0 }, { err, rc })
        assert.truthy(out:find("id:          " .. fshow, 1, true))
      end)

      it("exits 2 for a bad --limit", function()
        assert.same({ "", "genaudit: limit must be a positive integer, got 'lots'\n", 2 },
          { cli("--db " .. q(fdb) .. " list --limit lots") })
      end)
    end)
  end)

  describe("machine output", function()
    local noisy

    setup(function()
      noisy = dir .. "/noisy.db"
      local store = assert(genaudit.open("sqlite:" .. noisy))
      for i, cost in ipairs({ 0.1, 0.2 }) do
        assert(store:persist_generation{
          org_id = "o", user_id = "u", platform = "x", template_id = "t", final_system_prompt = "s",
          final_user_prompt = "u" .. i,
          token_usage = { prompt_tokens = 1, completion_tokens = 1, estimated_cost = cost },
          performance = { total_latency_ms = 1.1, provider_latency_ms = 1 },
          repair_info = { repair_count = 3, repair_types = { "length_exceeded", "tone_mismatch" } },
        })
      end
      store:close()
      assert.equal("0.30000000000000004", string.format("%.17g", 0.1 + 0.2)) -- the noise itself
    end)

    it("prints sums and averages without float noise in JSON and CSV", function()
      local out, err, rc = cli("--json --db " .. q(noisy) .. " report cost")
      assert.same({ "", 0 }, { err, rc })
      assert.truthy(out:find('"total_cost":0.3,"avg_cost":0.15,', 1, true), out)
      out = cli("--csv --db " .. q(noisy) .. " report cost")
      local rec = parse_csv(out)[2]
      assert.same({ "0.3", "0.15" }, { rec[4], rec[5] })
    end)

    it("prints repair types as a JSON object of counts", function()
      local out = cli("--json --db " .. q(noisy) .. " report repairs")
      assert.truthy(out:find('"top_repair_types":{"length_exceeded":2,"tone_mismatch":2}', 1, true), out)
      local rec = parse_csv(cli("--csv --db " .. q(noisy) .. " report repairs"))[2]
      assert.equal('{"length_exceeded":2,"tone_mismatch":2}', rec[7])
      assert.truthy(cli("--db " .. q(noisy) .. " report repairs"):find("length_exceeded×2, tone_mismatch×2", 1, true))
    end)

    it("keeps stored values exact in export", function()
      local out = cli("--db " .. q(noisy) .. " export --format jsonl")
      assert.truthy(out:find('"estimated_cost":0.1,', 1, true))
      assert.truthy(out:find('"estimated_cost":0.2,', 1, true))
    end)
  end)

  describe("errors for files that are not stores", function()
    it("says plainly that a text file is not a genaudit database", function()
      local path = dir .. "/notes.txt"
      tmp.write(path, "shopping list: anvils, coffee\n")
      for _, args in ipairs({ "report cost", "list", "show X", "migrate", "export --format jsonl" }) do
        assert.same({ "", "genaudit: " .. path .. " is not a genaudit database (file is not a database)\n", 1 },
          { cli("--db " .. q(path) .. " " .. args) })
      end
      assert.equal("shopping list: anvils, coffee\n", tmp.read(path))
    end)

    it("says plainly that a file cannot be read, run as a user who may not read it", function()
      local ok = os.execute("[ \"$(id -u)\" = 0 ] && command -v runuser >/dev/null"
        .. " && runuser -u nobody -- lua5.4 -e '' 2>/dev/null")
      if ok ~= true and ok ~= 0 then
        pending("needs root and runuser to run the CLI as nobody")
        return
      end
      local sub = dir .. "/private"
      assert(os.execute("mkdir -p " .. q(sub) .. " && chmod 755 " .. q(dir) .. " " .. q(sub)))
      local path = sub .. "/audit.db"
      assert(os.execute("cp " .. q(db) .. " " .. q(path) .. " && chmod 600 " .. q(path)))
      local out, err, rc = cli("--db " .. q(path) .. " list", "runuser -u nobody --")
      assert.same({ "", "genaudit: cannot read " .. path .. " (Permission denied)\n", 1 }, { out, err, rc })
    end)

    it("says so for a directory", function()
      assert.same({ "", "genaudit: " .. dir .. " is not a genaudit database (it is a directory)\n", 1 },
        { cli("--db " .. q(dir) .. " list") })
    end)
  end)

  describe("help", function()
    for _, c in ipairs({ { "replay", { "GENAUDIT_API_KEY", "GENAUDIT_BASE_URL", "GENAUDIT_PRICES" } },
                         { "migrate", { "GENAUDIT_MIGRATIONS" } }, { "copy", { "GENAUDIT_MIGRATIONS" } },
                         { "list", { "Environment:" } }, { "report cost", { "Environment:" } },
                         { "export", { "Environment:" } } }) do
      it(c[1] .. " --help names the environment variables it reads", function()
        local out, _, rc = cli(c[1] .. " --help")
        assert.equal(0, rc)
        for _, v in ipairs(c[2]) do assert.truthy(out:find(v, 1, true), c[1] .. ": " .. v) end
      end)
    end
  end)

  describe("Ctrl-C", function()
    it("exits 130 with one line when interrupted in the middle of an export", function()
      local big = dir .. "/big.db"
      local store = assert(genaudit.open("sqlite:" .. big))
      for i = 1, 200 do
        assert(store:persist_generation{
          org_id = "o", user_id = "u", platform = "x", template_id = "t", final_system_prompt = ("s"):rep(2000),
          final_user_prompt = "u" .. i, token_usage = { prompt_tokens = 1, completion_tokens = 1 },
          performance = { total_latency_ms = 1, provider_latency_ms = 1 }, repair_info = {},
        })
      end
      store:close()
      -- the export fills a FIFO nobody reads (64 KiB), blocks in write(), then gets SIGINT
      local fifo, errf = dir .. "/fifo", dir .. "/ctrlc.err"
      local script = table.concat({
        "rm -f " .. q(fifo) .. " && mkfifo " .. q(fifo) .. " || exit 9",
        "exec 3<>" .. q(fifo),
        "env -u GENAUDIT_API_KEY lua5.4 bin/genaudit --db " .. q(big) .. " export --format jsonl --out " .. q(fifo)
          .. " 2>" .. q(errf) .. " & pid=$!",
        "i=0; while ! grep -q pipe /proc/$pid/wchan 2>/dev/null && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done",
        "kill -INT $pid; wait $pid; echo rc=$?",
      }, "\n")
      local p = assert(io.popen("sh -c " .. q(script), "r"))
      local all = p:read("a")
      p:close()
      assert.equal("rc=130\n", all)
      assert.equal("genaudit: interrupted\n", tmp.read(errf))
    end)
  end)
end)

-- issue 12: the CLI finds its modules without LUA_PATH (through symlinks too),
-- says which price map it uses, and warns when a model it records is unpriced.
describe("bin/genaudit outside the checkout", function()
  local dir, srv
  local ROOT = io.popen("pwd"):read("l")
  local CLEAN = "env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 -u GENAUDIT_PRICES "
    .. "-u GENAUDIT_API_KEY -u GENAUDIT_BASE_URL "

  -- runs a command line in `dir`; returns stdout, stderr, exit code
  local function sh(cmd)
    local errfile = os.tmpname()
    local p = assert(io.popen("cd " .. q(dir) .. " && " .. cmd .. " 2>" .. q(errfile) .. '; echo "rc=$?"'))
    local all = p:read("a")
    p:close()
    local err = tmp.read(errfile)
    os.remove(errfile)
    local out, rc = all:match("^(.*)rc=(%d+)\n$")
    return out, err, tonumber(rc)
  end

  setup(function()
    dir = tmp.dir()
    srv = provider_server.start{ api_key = KEY }
  end)
  teardown(function()
    srv:stop()
    tmp.rm(dir)
  end)

  describe("run through a symlink from another directory, with LUA_PATH and LUA_CPATH unset", function()
    setup(function()
      assert(os.execute("mkdir -p " .. q(dir .. "/bin") .. " " .. q(dir .. "/links")))
      -- links/genaudit -> ../bin/genaudit -> <checkout>/bin/genaudit
      assert(os.execute("ln -s " .. q(ROOT .. "/bin/genaudit") .. " " .. q(dir .. "/bin/genaudit")))
      assert(os.execute("ln -s ../bin/genaudit " .. q(dir .. "/links/genaudit")))
    end)

    it("loads the checkout's modules (lua5.4)", function()
      local out, err, rc = sh(CLEAN .. "./links/genaudit --version")
      assert.same({ "", 0 }, { err, rc })
      assert.equal("genaudit 0.1.0 (Lua 5.4, modules " .. ROOT .. "/bin/../lua/genaudit/init.lua)\n", out)
    end)

    it("loads the checkout's modules and its LuaJIT build (luajit)", function()
      local out, err, rc = sh(CLEAN .. "luajit links/genaudit --version")
      assert.same({ "", 0 }, { err, rc })
      assert.equal("genaudit 0.1.0 (Lua 5.1, modules " .. ROOT .. "/bin/../lua/genaudit/init.lua)\n", out)
    end)

    it("migrates a database in the current directory", function()
      local out, err, rc = sh(CLEAN .. "./links/genaudit --db here.db migrate")
      assert.same({ "schema version 8 (8 migrations applied)\n", "", 0 }, { out, err, rc })
      assert.truthy(io.open(dir .. "/here.db")):close()
    end)
  end)

  describe("prices", function()
    local SHIPPED = ROOT .. "/bin/../lua/genaudit/data/litellm-model-prices-2026-07.json"

    it("names the shipped file, its source and date, and its model count", function()
      local out, err, rc = sh(CLEAN .. "lua5.4 " .. q(ROOT .. "/bin/genaudit") .. " --json prices")
      assert.same({ "", 0 }, { err, rc })
      local doc = cjson.decode(out)
      local count = 0
      for k, entry in pairs(cjson.decode(tmp.read(ROOT .. "/lua/genaudit/data/litellm-model-prices-2026-07.json"))) do
        local priced = false
        for _, f in ipairs(genaudit.pricing.PRICE_FIELDS) do
          if type(entry[f]) == "number" then priced = true end
        end
        if k ~= "sample_spec" and priced then count = count + 1 end
      end
      assert.is_true(count > 200)
      assert.same({ SHIPPED, "shipped", "2026-07", count }, { doc.path, doc.origin, doc.date, doc.models })
      assert.truthy(doc.source:find("LiteLLM", 1, true))
    end)

    it("uses GENAUDIT_PRICES when it is set", function()
      tmp.write(dir .. "/my-prices.json", '{"house-model": {"input_cost_per_token": 1e-06,'
        .. ' "output_cost_per_token": 2e-06}}')
      local out, err, rc = sh(CLEAN .. "GENAUDIT_PRICES=my-prices.json lua5.4 " .. q(ROOT .. "/bin/genaudit")
        .. " prices")
      assert.same({ "", 0 }, { err, rc })
      assert.equal("price map: my-prices.json\nsource:    GENAUDIT_PRICES\ndate:      unknown\nmodels:    1\n", out)
    end)

    it("check shows the key a provider's model name resolves to, with its prices", function()
      local out, err, rc = sh(CLEAN .. "lua5.4 " .. q(ROOT .. "/bin/genaudit") ..
        " prices check openai/gpt-4o-mini-2024-07-18")
      assert.same({ "", 0 }, { err, rc })
      assert.equal("openai/gpt-4o-mini-2024-07-18 -> gpt-4o-mini-2024-07-18 (" .. SHIPPED .. ")\n" ..
        "  input_cost_per_token                             1.5e-07 USD/token\n" ..
        "  output_cost_per_token                            6e-07 USD/token\n" ..
        "  cache_read_input_token_cost                      7.5e-08 USD/token\n", out)
    end)

    it("check says unpriced and exits 1 for a model the map does not price", function()
      local out, err, rc = sh(CLEAN .. "lua5.4 " .. q(ROOT .. "/bin/genaudit") .. " --json prices check llama-9-house")
      assert.same({ "", 1 }, { err, rc })
      assert.same({ "llama-9-house", cjson.null, cjson.null }, (function(d) return { d.model, d.key, d.prices } end)(
        cjson.decode(out)))
    end)

    it("exits 1 with one line when the price map cannot be read", function()
      local out, err, rc = sh(CLEAN .. "GENAUDIT_PRICES=/nonexistent/p.json lua5.4 " .. q(ROOT .. "/bin/genaudit")
        .. " prices")
      assert.same({ "", 1 }, { out, rc })
      assert.matches("^genaudit: cannot load the price map: [^\n]*/nonexistent/p.json[^\n]*\n$", err)
    end)
  end)

  describe("replay of an unpriced model", function()
    it("prints one warning line on stderr and stores the cost as null", function()
      local db = dir .. "/unpriced.db"
      local store = assert(genaudit.open("sqlite:" .. db))
      local id = assert(store:persist_generation{
        org_id = "o", user_id = "u", platform = "linkedin", template_id = "t",
        final_system_prompt = "s", final_user_prompt = "u", content = "a b c",
        token_usage = { prompt_tokens = 1, completion_tokens = 1 },
        performance = { total_latency_ms = 2, provider_latency_ms = 1, model_identifier = "m" },
        repair_info = { repair_count = 0, repair_types = {} },
      })
      store:close()
      srv:queue{ { content = "a b d", model = "house-llm-7b" } }
      local out, err, rc = sh(CLEAN .. "GENAUDIT_API_KEY=" .. KEY .. " lua5.4 " .. q(ROOT .. "/bin/genaudit") ..
        " --db unpriced.db replay " .. id .. " --provider openai --base-url " .. q(srv.url) .. " --model house-llm")
      assert.equal(0, rc, err)
      assert.equal("genaudit: warning: model 'house-llm-7b' has no price in " .. ROOT ..
        "/bin/../lua/genaudit/data/litellm-model-prices-2026-07.json (see 'genaudit prices check');" ..
        " estimated cost stored as null\n", err)
      local sid = out:match("replay snapshot: (%w+)\n")
      store = assert(genaudit.open("sqlite:" .. db))
      local r = store:query("SELECT estimated_cost, model_identifier FROM generation_snapshots WHERE id = ?",
        { sid })[1]
      store:close()
      assert.same({ "house-llm-7b" }, { r.model_identifier, r.estimated_cost })
    end)
  end)
end)
