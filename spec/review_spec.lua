-- Issue 11, second hostile review: cases the other specs do not cover, one
-- describe per class of the issue. What is still open is a pending() with
-- its exact repro (README "Reliability" does not claim it).
local genaudit = require("genaudit")
local cjson = require("cjson")
local provider_server = require("spec.support.provider")
local tmp = require("spec.support.tmp")

local KEY = "sk-review-5e4d3c2b1a-SECRET"
local PRICES = { ["gpt-4o-mini"] = { input_cost_per_token = 1.5e-07, output_cost_per_token = 6e-07 } }

local function usage(p, c, extra)
  local u = { prompt_tokens = p, completion_tokens = c, total_tokens = p + c }
  for k, v in pairs(extra or {}) do u[k] = v end
  return u
end

-- A query that never ends: opts.query_timeout bounds every query() call and each() step (both stores).
local function endless_query_specs(open, endless, row_count)
  local ROW = { org_id = "o", user_id = "u", platform = "p", template_id = "t", final_system_prompt = "s",
    final_user_prompt = "u", content = "c", token_usage = { prompt_tokens = 1, completion_tokens = 1 },
    performance = { total_latency_ms = 2, provider_latency_ms = 1 }, repair_info = {} }
  local TIMEOUT = { nil, "TIMEOUT: query ran longer than query_timeout (200 ms)", "TIMEOUT" }

  it("query() and each() of a statement that never ends return TIMEOUT after query_timeout", function()
    -- they used to run forever, holding the store's connection
    local store, reopen = open{ query_timeout = 200 }
    assert.same(TIMEOUT, { store:query(endless) })
    local seen = 0
    assert.same(TIMEOUT, { store:each(endless, nil, function() seen = seen + 1 end) })
    assert.equal(0, seen)
    -- the connection goes on: reads, a query() inside each(), and a durable persist
    assert.same({ { v = 1 } }, store:query("SELECT 1 AS v"))
    local inner = {}
    assert.equal(2, store:each("SELECT 1 AS v UNION ALL SELECT 2", nil, function(r)
      inner[#inner + 1] = assert(store:query("SELECT ? AS w", { r.v }))[1].w
    end))
    assert.same({ 1, 2 }, inner)
    local id = assert(store:persist_generation(ROW))
    assert.is_true(store:close())
    store = reopen()
    assert.equal(1, row_count(store, id))
    store:close()
  end)

  it("refuses a query_timeout that is not a number of ms", function()
    assert.has_error(function() open{ query_timeout = -1 } end)
  end)

  it("bounds a query by default (store.QUERY_TIMEOUT_MS) when the caller sets no query_timeout", function()
    local store_mod = require("genaudit.store")
    local saved = store_mod.QUERY_TIMEOUT_MS
    assert.equal(60000, saved)
    store_mod.QUERY_TIMEOUT_MS = 200 -- the default, shortened for the spec
    local ok, store = pcall(open, {})
    store_mod.QUERY_TIMEOUT_MS = saved
    assert(ok, store)
    assert.same(TIMEOUT, { store:query(endless) })
    store:close()
  end)
end

describe("review: class 1, query() cannot hang (SQLite)", function()
  local dir
  before_each(function() dir = tmp.dir() end)
  after_each(function() tmp.rm(dir) end)
  endless_query_specs(function(opts)
    local function reopen() return assert(genaudit.open("sqlite:" .. dir .. "/q.db", opts)) end
    return reopen(), reopen
  end, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
  function(store, id) return #assert(store:query("SELECT id FROM generation_snapshots WHERE id = ?", { id })) end)
end)

describe("review: classes 3 and 4, one string.gsub call cannot run long or build gigabytes", function()
  local dir
  before_each(function()
    dir = tmp.dir()
    os.execute("mkdir -p " .. dir .. "/rules")
  end)
  after_each(function() tmp.rm(dir) end)

  local function validate(check_src, timeout_ms)
    tmp.write(dir .. "/rules/r.lua", "return function(d) " .. check_src .. " end")
    local v = require("genaudit.validator").new{ rules = dir .. "/rules", script_timeout_ms = timeout_ms or 500 }
    return v:validate("draft", { platform = "x" })
  end

  -- C's gsub checks no size: one call with 10 000 "%0" per match built a gigabyte (53 s under Lua 5.4,
  -- past a 500 ms limit, and out of memory under LuaJIT) before the size check after it
  it("refuses a string replacement whose result could exceed the cap, before building it", function()
    local issues = validate([[return { message = "len " .. #string.gsub(string.rep("x", 100000), ".",
      string.rep("%0", 10000)), penalty = 1 }]])
    assert.equal(1, #issues)
    assert.equal("rule_error", issues[1].slug)
    assert.matches("string.gsub: a result of up to 23000100000 bytes is over the limit of 16777216 bytes$",
      issues[1].message)
  end)

  it("stops a function or table replacement as soon as its values pass the cap", function()
    for _, repl in ipairs({ "function(c) return string.rep(c, 10000) end",
                            "setmetatable({}, { __index = function(_, c) return string.rep(c, 10000) end })" }) do
      -- the cap must stop it, not the clock: building 16 MB through ~1 700 calls took over 500 ms under ASan
      local issues = validate("return { message = 'len ' .. #string.gsub(string.rep('x', 100000), '.', "
        .. repl .. "), penalty = 1 }", 20000)
      assert.same({ { slug = "rule_error", penalty = 10,
        message = "r: string.gsub: result of 16780000 bytes is over the limit of 16777216 bytes" } }, issues)
    end
  end)

  it("keeps gsub's results for captures, position captures, %%, tables and false values", function()
    local issues = validate([[return { message = table.concat({
      (string.gsub("hello world", "(o)", "[%1%0]")), (string.gsub("hello", "()l", "%1")),
      (("abc"):gsub("%w", "%%%0")), (string.gsub("hello world", "(l)(l)", { l = "L" })),
      (string.gsub("hello", "l", function() return false end)), (string.gsub("a b", "%w", "%0%0", 1)) }, "|"),
      penalty = 1 }]])
    assert.same({ { slug = "r", penalty = 1, message = "hell[oo] w[oo]rld|he34o|%a%b%c|heLo world|hello|aa b" } },
      issues)
  end)
end)

describe("review: class 5, nothing replaces what the snapshot records", function()
  local srv, dir, store

  setup(function() srv = provider_server.start{ api_key = KEY } end)
  teardown(function() srv:stop() end)
  before_each(function()
    srv:reset()
    dir = tmp.dir()
    os.execute("mkdir -p " .. dir .. "/templates " .. dir .. "/rules")
    tmp.write(dir .. "/templates/t.lua", [[return { version = "1", voice_signature = "V.", task = "Write." }]])
    store = assert(genaudit.open("sqlite:" .. dir .. "/audit.db"))
  end)
  after_each(function()
    store:close()
    tmp.rm(dir)
  end)

  -- request params were copied over the body: params.messages sent other prompts than the stored
  -- final_system_prompt/final_user_prompt, params.model another model than the recorded requested one
  for _, case in ipairs({
    { "openai", "model", "gpt-4o" },
    { "openai", "messages", { { role = "user", content = "Something else entirely." } } },
    { "anthropic", "system", "Another system prompt." },
    { "anthropic", "messages", { { role = "user", content = "Something else entirely." } } },
  }) do
    local wire, name, value = case[1], case[2], case[3]
    it("refuses params." .. name .. " (" .. wire .. "): INVALID, nothing sent, nothing stored", function()
      srv:queue{ { content = "Hello.", usage = usage(10, 5) } }
      local prov = genaudit.providers[wire]{ base_url = srv.url, api_key = KEY, model = "gpt-4o-mini" }
      local p = genaudit.pipeline{ store = store, provider = prov, templates = dir .. "/templates",
        rules = dir .. "/rules", backoff_ms = 10, retries = 0 }
      local r, err, code = p:generate{ org_id = 1, user_id = 2, platform = "linkedin", template_id = "t",
        params = { temperature = 0.5, [name] = value } }
      assert.same({ nil, "INVALID: params." .. name .. " is set by genaudit (the snapshot records it); it cannot"
        .. " be a parameter", "INVALID" }, { r, err, code })
      assert.same({}, srv:requests())
      assert.equal(0, assert(store:query("SELECT count(*) AS n FROM generation_snapshots"))[1].n)
    end)
  end
end)

describe("review: class 6, costs and attribution", function()
  local srv, dir, store

  setup(function() srv = provider_server.start{ api_key = KEY } end)
  teardown(function() srv:stop() end)

  before_each(function()
    srv:reset()
    dir = tmp.dir()
    os.execute("mkdir -p " .. dir .. "/templates " .. dir .. "/rules")
    tmp.write(dir .. "/templates/t.lua", [[return { version = "1", voice_signature = "V.", task = "Write." }]])
    tmp.write(dir .. "/rules/policy.lua", [[return { budget = 0 }]])
    store = assert(genaudit.open("sqlite:" .. dir .. "/audit.db"))
  end)

  after_each(function()
    store:close()
    tmp.rm(dir)
  end)

  local function generate(provider)
    local p = genaudit.pipeline{
      store = store, provider = provider, templates = dir .. "/templates", rules = dir .. "/rules",
      pricing = assert(genaudit.pricing.load(PRICES)), backoff_ms = 10, retries = 0,
    }
    local r, err, code, id = p:generate{ org_id = 1, user_id = 2, platform = "linkedin", template_id = "t" }
    local row = assert(store:query("SELECT * FROM generation_snapshots WHERE id = ?", { r and r.snapshot_id or id }))[1]
    return r, err, code, row, cjson.decode(row.token_metrics)
  end

  it("keeps a billed call's usage when OpenRouter reports a cost the meter cannot hold (1e300 USD)", function()
    -- it used to fail the generation: tokens 0, cost_source "no_usage", although usage was reported
    srv:queue{ { content = "Hello.", model = "mystery/model-7", usage = usage(100, 20, { cost = 1e300 }) } }
    local prov = genaudit.providers.openrouter{ base_url = srv.url, api_key = KEY, model = "mystery/model-7" }
    local r, err, _, row, tm = generate(prov)
    assert.is_table(r, err)
    assert.same({ "completed", "Hello." }, { row.status, row.content })
    assert.is_nil(row.estimated_cost)
    assert.same({ 100, 20, 120, "unpriced", cjson.null }, { tm.prompt_tokens, tm.completion_tokens,
      tm.total_tokens, tm.cost_source, tm.provider_cost or cjson.null })
  end)

  it("keeps a billed call's usage and local price when the reported model is over the meter's 512 bytes", function()
    local served = string.rep("m", 4096)
    srv:queue{ { content = "Hello.", model = served, usage = usage(100, 20) } }
    local prov = genaudit.providers.openai{ base_url = srv.url, api_key = KEY, model = "gpt-4o-mini" }
    local r, err, _, row, tm = generate(prov)
    assert.is_table(r, err)
    assert.same({ "completed", served }, { row.status, row.model_identifier })
    assert.same({ 100, 20, "unpriced_served_model", served }, { tm.prompt_tokens, tm.completion_tokens,
      tm.cost_source, tm.calls[1].served_model })
  end)

  it("keeps a billed answer with a lone UTF-16 surrogate escape (valid JSON lua-cjson refuses) as U+FFFD", function()
    -- it used to be "BAD_RESPONSE: provider body is not JSON": a failed row, 0 tokens, no content
    local body = cjson.encode{ id = "x", object = "chat.completion", model = "gpt-4o-mini",
      choices = { { index = 0, message = { role = "assistant", content = "aXb" }, finish_reason = "stop" } },
      usage = usage(100, 20) }
    srv:queue{ { body = (body:gsub("aXb", "a\\ud83d\\ude00 \\ud800b\\udc00 \\\\ud800")) } }
    local prov = genaudit.providers.openai{ base_url = srv.url, api_key = KEY, model = "gpt-4o-mini" }
    local r, err, _, row, tm = generate(prov)
    assert.is_table(r, err)
    assert.same({ "completed", "a\240\159\152\128 \239\191\189b\239\191\189 \\ud800" }, { row.status, row.content })
    assert.same({ 100, 20, "local_estimate" }, { tm.prompt_tokens, tm.completion_tokens, tm.cost_source })
    assert.equal((100 * 150000 + 20 * 600000) / 1e12, row.estimated_cost)
  end)
end)

describe("review: class 7, secrets", function()
  local srv, dir, store
  local LONG_KEY = "sk-review-7f6e5d4c3b2a1908-LONGSECRET-0a9b8c7d" -- real keys are 40 to 170 characters

  setup(function() srv = provider_server.start{ api_key = LONG_KEY } end)
  teardown(function() srv:stop() end)
  before_each(function()
    srv:reset()
    dir = tmp.dir()
    os.execute("mkdir -p " .. dir .. "/templates " .. dir .. "/rules")
    tmp.write(dir .. "/templates/t.lua", [[return { version = "1", voice_signature = "V.", task = "Write." }]])
    tmp.write(dir .. "/rules/r.lua",
      [[return function(d) if d:find("again") then return { message = d, penalty = 50 } end end]])
    tmp.write(dir .. "/rules/policy.lua", [[return { budget = 1, feedback = function(d) return "Fix: " .. d end }]])
    store = assert(genaudit.open("sqlite:" .. dir .. "/audit.db"))
  end)
  after_each(function()
    store:close()
    tmp.rm(dir)
  end)

  it("keeps a key cut short by one character, or its second half alone, out of the rows and files", function()
    -- only the whole key (and its encodings) used to be scrubbed: all but one of its characters were stored
    local half = math.floor(#LONG_KEY / 2)
    srv:queue{ { content = "again " .. LONG_KEY:sub(1, -2) .. " and " .. LONG_KEY:sub(2):upper(),
                 usage = usage(10, 5) },
               { content = "ok " .. LONG_KEY:sub(half + 1) .. ".", usage = usage(10, 5) } }
    local prov = genaudit.providers.openai{ base_url = srv.url, api_key = LONG_KEY, model = "gpt-4o-mini" }
    local p = genaudit.pipeline{ store = store, provider = prov, templates = dir .. "/templates",
      rules = dir .. "/rules", backoff_ms = 10, retries = 0 }
    local r, err = p:generate{ org_id = 1, user_id = 2, platform = "linkedin", template_id = "t" }
    assert.is_table(r, err)
    assert.equal("ok [REDACTED].", r.content)
    local row = assert(store:query("SELECT * FROM generation_snapshots WHERE id = ?", { r.snapshot_id }))[1]
    assert.truthy(row.repair_metrics:find("again [REDACTED] and [REDACTED]", 1, true))
    store:close()
    local files = assert(io.popen("cat " .. dir .. "/audit.db*"))
    local bytes = files:read("a"):lower()
    files:close()
    for i = 1, #LONG_KEY - 15 do
      local run = LONG_KEY:sub(i, i + 15):lower()
      assert.falsy(bytes:find(run, 1, true), run)
    end
    store = assert(genaudit.open("sqlite:" .. dir .. "/audit.db"))
  end)

  it("leaves runs shorter than 16 characters of the key, such as its public prefix, alone", function()
    local prov = genaudit.providers.openai{ base_url = srv.url, api_key = LONG_KEY, model = "gpt-4o-mini" }
    assert.equal("keys start with sk-review- and " .. LONG_KEY:sub(3, 17),
      prov.scrub("keys start with sk-review- and " .. LONG_KEY:sub(3, 17)))
    assert.equal("[REDACTED]", prov.scrub(LONG_KEY:sub(3, 18)))
  end)
end)

local pg = require("spec.support.pg")

pg.describe("review: class 8, waits (PostgreSQL) #postgresql", function()
  local MIGRATION_LOCK = "7450482329108636020" -- ga_pg_migrate.c: the one migration lock
  teardown(pg.drop_schemas)

  it("open() returns BUSY after lock_timeout while another session holds the migration lock", function()
    -- a process stopped or stuck inside a migration made every open() wait as long as it held the lock
    local marker = "ga_review_lock_" .. pg.schema()
    local holder = assert(io.popen("psql " .. pg.shq(pg.url) .. " -qAtc " .. pg.shq("SELECT '" .. marker
      .. "', pg_advisory_lock(" .. MIGRATION_LOCK .. "), pg_sleep(15)") .. " >/dev/null 2>&1 & echo started"))
    holder:read("a")
    holder:close()
    local held
    for _ = 1, 200 do
      held = assert(pg.psql("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE"
        .. " l.locktype = 'advisory' AND l.granted AND a.query LIKE '%" .. marker .. "%'")):match("%d+") == "1"
      if held then break end
      os.execute("sleep 0.05")
    end
    assert.is_true(held)
    local store, err, code = genaudit.open(pg.url, { schema = pg.schema(), lock_timeout = 300 })
    pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%" .. marker
      .. "%' AND pid <> pg_backend_pid()")
    if store then store:close() end
    assert.same({ nil, "BUSY: another session has held the migration lock for lock_timeout (300 ms)", "BUSY" },
      { store, err, code })
    -- once the lock is free, open() goes on as before
    store = assert(genaudit.open(pg.url, { schema = pg.schema(), lock_timeout = 300 }))
    assert.is_true(store:schema_version() >= 5)
    store:close()
  end)

  it("refuses a lock_timeout that is not a number of ms", function()
    assert.has_error(function() genaudit.open(pg.url, { lock_timeout = -1 }) end,
      "bad argument #2 to 'pg_open' (lock_timeout must be an integer number of ms (0-3600000))")
  end)
end)

pg.describe("review: class 1, query() cannot hang (PostgreSQL) #postgresql", function()
  teardown(pg.drop_schemas)
  endless_query_specs(function(opts)
    local schema = pg.schema()
    local function reopen() return assert(pg.open(schema, opts)) end
    return reopen(), reopen
  end, "SELECT pg_sleep(1e6)", function(store, id)
    -- a query runs under its transaction's own statement_timeout (SET LOCAL: the session's stays)
    assert.same({ { statement_timeout = "200ms" } }, store:query("SHOW statement_timeout"))
    return #assert(store:query("SELECT id FROM generation_snapshots WHERE id = ?", { id }))
  end)
end)

-- Found by the review and left open (each needs a design choice; README does not claim them).
describe("review: open findings", function()
  pending("class 3: one slow C call is not cut at the script time limit: a rule running"
    .. " string.find(string.rep('a', 3000), 'a-a-a-a-a-a-b') with script_timeout_ms = 500 runs for hours"
    .. " (the deadline is checked only after the C function returns; Lua patterns backtrack exponentially),"
    .. " under Lua 5.4 and LuaJIT; likewise match, gmatch and gsub")
  pending("classes 3/4: a few heavy VM instructions escape the time limit and every size cap: the rule"
    .. " 'return function() local s = \"x\" for i = 1, 31 do s = s .. s end return { message = #s } end'"
    .. " (about 124 instructions, so the 1000-instruction count hook never fires) builds a 2 GiB string in"
    .. " 3 s past a 1000 ms limit and returns normally under Lua 5.4 (RSS 3.6 GB; LuaJIT stops at 2 GiB with"
    .. " 'string length overflow', RSS 3 GB); 'for i = 1, 34' wants 16 GiB (an OOM kill of the host). A line"
    .. " hook ('l' mask) stops it at the limit but made a word-counting rule 11x slower; the '..' operator has"
    .. " no size cap to hook")
end)

describe("review: class 2, limits", function()
  it("names a row size over length_limit that is over it (the record's overhead counted in)", function()
    -- 3000, not 2000: since migration 0006 the table's CREATE text (one value of sqlite_schema, under the
    -- same limit) is over 2000 bytes; the content alone stays under the limit, the row over it
    local store = assert(genaudit.open("sqlite::memory:", { length_limit = 3000 }))
    local id, err, code = store:persist_generation{ org_id = "o", user_id = "u", platform = "p", template_id = "t",
      final_system_prompt = "s", final_user_prompt = "u", content = string.rep("x", 2000),
      token_usage = { prompt_tokens = 1, completion_tokens = 1 },
      performance = { total_latency_ms = 2, provider_latency_ms = 1 }, repair_info = {} }
    store:close()
    assert.is_nil(id)
    assert.equal("INVALID", code)
    local n = tonumber(err:match("^INVALID: the row's (%d+) bytes exceed the database's limit of 3000 bytes per row$"))
    assert.is_true(n > 3000, err) -- it said "the row's 1298 bytes exceed ... 2000" (with 1000 bytes under 2000)
  end)
end)

pg.describe("review: class 6/9, a billed answer PostgreSQL text cannot hold is still stored #postgresql", function()
  local srv, dir
  setup(function() srv = provider_server.start{ api_key = KEY } end)
  teardown(function()
    srv:stop()
    pg.drop_schemas()
  end)
  before_each(function()
    srv:reset()
    dir = tmp.dir()
    os.execute("mkdir -p " .. dir .. "/templates " .. dir .. "/rules")
    tmp.write(dir .. "/templates/t.lua", [[return { version = "1", voice_signature = "V.", task = "Write." }]])
  end)
  after_each(function() tmp.rm(dir) end)

  -- it used to leave no snapshot at all (generate() returned INVALID and no id) although the
  -- call was billed; SQLite stores the same answer byte for byte
  for name, content in pairs({ nul = "a\0b", latin1 = "caf\233" }) do
    it("stores the generation as failed, with U+FFFD for the bytes and its billed tokens (" .. name .. ")", function()
      local store = assert(pg.open(pg.schema()))
      srv:queue{ { content = content, usage = usage(10, 5) } }
      local prov = genaudit.providers.openai{ base_url = srv.url, api_key = KEY, model = "gpt-4o-mini" }
      local p = genaudit.pipeline{ store = store, provider = prov, templates = dir .. "/templates",
        rules = dir .. "/rules", pricing = genaudit.pricing.load(PRICES), retries = 0 }
      local r, err, code, id = p:generate{ org_id = 1, user_id = 2, platform = "linkedin", template_id = "t" }
      assert.is_nil(r)
      assert.equal("INVALID", code)
      assert.matches("^INVALID: content: PostgreSQL text .* %(stored with U%+FFFD in place of those bytes%)$", err)
      local row = assert(store:query("SELECT status, error, content, total_tokens, token_metrics"
        .. " FROM generation_snapshots WHERE id = ?", { assert(id) }))[1]
      store:close()
      local tm = cjson.decode(row.token_metrics)
      assert.same({ "failed", err, (content:gsub("[%z\233]", "\239\191\189")), 15, 10, 5 },
        { row.status, row.error, row.content, row.total_tokens, tm.prompt_tokens, tm.completion_tokens })
    end)
  end
end)
