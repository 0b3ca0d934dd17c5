-- spec.support.store_suite — the store specs every backend must pass, from
-- one source: opening and migrating, persist_generation() (byte-exact
-- columns, exact metric JSON, validation), immutability against another
-- client, query(), each(), the lifecycle and the persister. Run by
-- spec/store_spec.lua (SQLite) and spec/store_pg_spec.lua (PostgreSQL):
--
--   require("spec.support.store_suite")("genaudit.store (sqlite)", backend)
--
-- backend: name, class (the C type's name), migrations_dir, nul_ok (text may
-- hold NUL bytes), target() (a fresh, empty database), open(target, opts),
-- fresh(opts) (optional: a quicker fresh store), detail(target) (what tostring shows), table_exists(store, name),
-- external(target, sql) (another client's output), sql = { epoch, json_number,
-- json_type } (SQL fragments), errors = { broken_migration, syntax,
-- unknown_table, code, invalid_json(col) }, hostile (statements query() and
-- each() must refuse, beyond the transaction control every backend has),
-- state (read-only statements whose answers no query may change), poison
-- (SQL that makes the database refuse rows with template_id 'poison').
-- GENAUDIT_SKIP_SLOW=1 skips the 10 MB prompt (for valgrind runs).

local busted = require("busted") -- describe, it, ... (globals only in spec files)
local genaudit = require("genaudit")

local IS_54 = _VERSION == "Lua 5.4" and rawget(_G, "jit") == nil
local math_type = rawget(math, "type")

local ULID_PATTERN = "^[0-9A-HJKMNP-TV-Z]+$"
local CREATED_AT_PATTERN = "^%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d%.%d%d%d$"
local SELECT_BY_ID = "SELECT * FROM generation_snapshots WHERE id = ?"
local COUNT_ROWS = "SELECT count(*) AS n FROM generation_snapshots"

local function shq(s) return "'" .. (s:gsub("'", "'\\''")) .. "'" end

local function sh(cmd)
  local f = assert(io.popen(cmd .. " 2>&1"))
  local out = f:read("*a")
  f:close()
  return out
end

local function write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = deep_copy(x) end
  return t
end

-- A complete, valid persist_generation argument; `over` replaces top-level fields.
local function valid_row(over)
  local row = {
    org_id = "org-1",
    user_id = "user-1",
    platform = "linkedin",
    template_id = "tpl-launch",
    template_version = "3",
    final_system_prompt = "You are a concise copywriter.",
    final_user_prompt = "Write a launch post. Tone: playful.",
    content = "We shipped it!",
    token_usage = { prompt_tokens = 120, completion_tokens = 80, estimated_cost = 0.0015 },
    performance = { total_latency_ms = 1500.5, provider_latency_ms = 1200.25,
                    model_identifier = "anthropic/claude-3.5-sonnet:beta" },
    repair_info = { repair_count = 1, repair_types = { "length_exceeded" },
                    initial_validation_score = 0.5, repair_log = "shorten to 80 words" },
  }
  for k, v in pairs(over or {}) do row[k] = deep_copy(v) end
  return row
end

local assert = busted.assert

local function count_rows(store)
  return assert(store:query(COUNT_ROWS))[1].n
end

local function fetch(store, id)
  local rows = assert(store:query(SELECT_BY_ID, { id }))
  assert.equal(1, #rows)
  return rows[1]
end

return function(suite_name, B)
  local describe, it, pending = busted.describe, busted.it, busted.pending
  local before_each, after_each = busted.before_each, busted.after_each
  local it54 = IS_54 and it or pending
  local itjit = rawget(_G, "jit") ~= nil and it or pending
  local it_slow = os.getenv("GENAUDIT_SKIP_SLOW") == "1" and pending or it
  -- The migration files, as {version=, name=} in order, read independently of the store.
  local function expected_migrations()
    local list = {}
    for line in sh("ls " .. B.migrations_dir):gmatch("[^\n]+") do
      local v, name = line:match("^(%d%d%d%d)_([%w_]+)%.sql$")
      if v then list[#list + 1] = { version = tonumber(v), name = name } end
    end
    return list
  end
  -- the schema version a fully migrated store reports, and how many migrations there are
  local all_migrations = expected_migrations()
  local LATEST, COUNT = all_migrations[#all_migrations].version, #all_migrations

  local temp_dirs = {}
  local function temp_dir()
    local d = sh("mktemp -d"):gsub("%s+$", "")
    temp_dirs[#temp_dirs + 1] = d
    return d
  end

  -- A fresh store on a fresh database, every migration applied.
  local function fresh(opts)
    if B.fresh then return assert(B.fresh(opts)) end
    return assert(B.open(B.target(), opts))
  end

  -- NUL bytes where the backend's text holds them; elsewhere nothing.
  local NUL = B.nul_ok and "\0" or ""

  describe(suite_name, function()
    after_each(function()
      for _, d in ipairs(temp_dirs) do sh("rm -rf " .. shq(d)) end
      temp_dirs = {}
      if B.cleanup then B.cleanup() end
    end)

    describe("open()", function()
      it("opens a fresh database with every migration applied", function()
        local store = fresh()
        assert.equal(LATEST, store:schema_version())
        assert.equal(B.name, store.backend)
        store:close()
      end)

      it("records every migration with its name in schema_migrations", function()
        local store = fresh()
        local rows = assert(store:query("SELECT version, name FROM schema_migrations ORDER BY version"))
        assert.same({
          { version = 1, name = "create_generation_snapshots" },
          { version = 2, name = "add_metrics_and_final_prompts_to_snapshots" },
          { version = 3, name = "add_request_params_and_replay_link" },
          { version = 4, name = "add_analytics_columns_and_indexes" },
          { version = 5, name = "make_snapshots_immutable" },
          { version = 6, name = "add_exact_cost_and_report_indexes" },
          { version = 7, name = "add_scripts_table" },
        }, { rows[1], rows[2], rows[3], rows[4], rows[5], rows[6], rows[7] })
        assert.same({ version = 8, name = "add_hash_chain_and_purge" }, rows[#rows])
        assert.same(expected_migrations(), rows)
        store:close()
      end)

      it("raises when opts is not a table", function()
        assert.has_error(function() B.open(B.target(), 5) end,
          "bad argument #2 to 'open' (table expected, got number)")
      end)
    end)

    describe("migrate()", function()
      -- A copy of the real migrations plus 0099_broken.sql, which creates a table
      -- and then fails with a syntax error.
      local function broken_migrations_dir()
        local dir = temp_dir()
        sh("cp " .. B.migrations_dir .. "/*.sql " .. shq(dir))
        write_file(dir .. "/0099_broken.sql", "CREATE TABLE broken_marker (x INTEGER);\nCREATE TABLE oops (;\n")
        return dir
      end

      it("starts from an empty database at version 0", function()
        local store = fresh({ migrate = false })
        assert.equal(0, store:schema_version())
        store:close()
      end)

      it("applies every migration to an empty database", function()
        local store = fresh({ migrate = false })
        local applied, version = store:migrate()
        assert.equal(COUNT, applied)
        assert.equal(LATEST, version)
        store:close()
      end)

      it("applies nothing when run again", function()
        local store = fresh()
        local applied, version = store:migrate()
        assert.equal(0, applied)
        assert.equal(LATEST, version)
        store:close()
      end)

      it("applies nothing when a migrated database is reopened", function()
        local t = B.target()
        assert(B.open(t)):close()
        local store = assert(B.open(t))
        local applied, version = store:migrate()
        assert.same({ 0, LATEST }, { applied, version })
        store:close()
      end)

      it("returns nil, err, 'MIGRATION' when a migration fails", function()
        local store, err, code = B.open(B.target(), { migrations_dir = broken_migrations_dir() })
        assert.is_nil(store)
        assert.equal(B.errors.broken_migration, err)
        assert.equal("MIGRATION", code)
      end)

      it("rolls back what the failed migration created", function()
        local t = B.target()
        assert.is_nil(B.open(t, { migrations_dir = broken_migrations_dir() }))
        local store = assert(B.open(t, { migrate = false }))
        assert.is_false(B.table_exists(store, "broken_marker"))
        assert.equal(LATEST, store:schema_version())
        store:close()
      end)

      it("raises on migration SQL with a NUL byte before running any of the list", function()
        local store = assert(B.open(B.target()))
        assert.has_error(function()
          store._conn:migrate({ { version = 99, name = "cut", sql = "CREATE TABLE cut_marker (x INT);\0DROP" } })
        end)
        assert.is_false(B.table_exists(store, "cut_marker"))
        store:close()
      end)

      it("leaves a database that reopens without the broken migration", function()
        local t = B.target()
        assert.is_nil(B.open(t, { migrations_dir = broken_migrations_dir() }))
        local store = assert(B.open(t))
        assert.equal(LATEST, store:schema_version())
        assert.truthy(store:persist_generation(valid_row()))
        store:close()
      end)
    end)

    describe("persist_generation()", function()
      local store
      before_each(function() store = fresh() end)
      after_each(function() store:close() end)

      it("returns a 26-character Crockford base32 ULID", function()
        local id = assert(store:persist_generation(valid_row()))
        assert.equal(26, #id)
        assert.matches(ULID_PATTERN, id)
      end)

      it("stores the row under the id it returns", function()
        local id = assert(store:persist_generation(valid_row()))
        assert.equal(id, fetch(store, id).id)
      end)

      it("stores multi-byte UTF-8 prompts byte-exact", function()
        local sys = "Emoji \240\159\154\128\240\159\145\141\240\159\143\189 and CJK \228\184\173\230\150\135"
        local user = "Combining: e\204\129 a\204\136 n\204\131; RTL: \215\169\215\156\215\149\215\157"
        local id = assert(store:persist_generation(valid_row({ final_system_prompt = sys, final_user_prompt = user })))
        local row = fetch(store, id)
        assert.equal(sys, row.final_system_prompt)
        assert.equal(user, row.final_user_prompt)
      end)

      it("stores tabs, newlines, backslashes and quotes byte-exact", function()
        local user = "a\tb\nc\r\nd\\e 'single' \"double\" $1 ?1 :name \\N"
        local row = fetch(store, assert(store:persist_generation(valid_row({ final_user_prompt = user }))))
        assert.equal(user, row.final_user_prompt)
      end)

      it("stores empty prompts as empty strings, not NULL", function()
        local id = assert(store:persist_generation(valid_row({ final_system_prompt = "", final_user_prompt = "" })))
        local row = fetch(store, id)
        assert.equal("", row.final_system_prompt)
        assert.equal("", row.final_user_prompt)
      end)

      it_slow("stores a 10 MB prompt byte-exact", function()
        local unit = "0123456789abcdef" .. NUL .. "\195\169"
        local big = string.rep(unit, math.floor(10 * 1024 * 1024 / #unit) + 1)
        local id = assert(store:persist_generation(valid_row({ final_user_prompt = big })))
        local row = fetch(store, id)
        assert.equal(#big, #row.final_user_prompt)
        assert.is_true(big == row.final_user_prompt)
      end)

      it("stores every text column byte-exact", function()
        local input = valid_row({
          org_id = "org-" .. NUL .. "-\226\130\172", user_id = "user \"quoted\"", platform = "x\ny",
          template_id = "tpl/\239\188\161", template_version = "2024-06-01+rc.1",
          content = "Line 1\nLine 2" .. NUL .. "tail", replay_of = "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        })
        local row = fetch(store, assert(store:persist_generation(input)))
        local keys = { "org_id", "user_id", "platform", "template_id", "template_version", "content", "replay_of",
                       "final_system_prompt", "final_user_prompt" }
        local got, want = {}, {}
        for _, k in ipairs(keys) do got[k], want[k] = row[k], input[k] end
        assert.same(want, got)
      end)

      it("stores integer org_id, user_id and template_version as text", function()
        local row = fetch(store, assert(store:persist_generation(valid_row({
          org_id = 42, user_id = 7, template_version = 3 }))))
        assert.same({ "42", "7", "3" }, { row.org_id, row.user_id, row.template_version })
      end)

      it("defaults status to 'completed' and leaves error NULL", function()
        local row = fetch(store, assert(store:persist_generation(valid_row())))
        assert.equal("completed", row.status)
        assert.is_nil(row.error)
      end)

      it("stores a failed generation with its error text byte-exact", function()
        local err = "provider timeout after 30000 ms\n" .. NUL .. "\240\159\146\165"
        local row = fetch(store, assert(store:persist_generation(valid_row({
          status = "failed", error = err, content = genaudit.null }))))
        assert.same({ "failed", err }, { row.status, row.error })
        assert.is_nil(row.content)
      end)

      it("stores request_params as exact JSON with sorted keys", function()
        local row = fetch(store, assert(store:persist_generation(valid_row({
          request_params = { temperature = 0.7, max_tokens = 512, stop = { "\n\n", "END" }, seed = 42 } }))))
        assert.equal('{"max_tokens":512,"seed":42,"stop":["\\n\\n","END"],"temperature":0.7}', row.request_params)
      end)

      it("leaves optional columns NULL (absent) when not given", function()
        local input = valid_row()
        input.template_version, input.content = nil, nil
        local row = fetch(store, assert(store:persist_generation(input)))
        assert.is_nil(row.template_version)
        assert.is_nil(row.content)
        assert.is_nil(row.request_params)
        assert.is_nil(row.replay_of)
      end)

      it("stamps created_at as UTC text 'YYYY-MM-DD HH:MM:SS.mmm'", function()
        local row = fetch(store, assert(store:persist_generation(valid_row())))
        assert.matches(CREATED_AT_PATTERN, row.created_at)
      end)

      it("stamps created_at within a few seconds of now as the database reads it", function()
        local id = assert(store:persist_generation(valid_row()))
        local t = assert(store:query(B.sql.epoch, { id }))[1].t
        assert.is_true(math.abs(t - os.time()) <= 5)
      end)

      it("keeps an explicit created_at", function()
        local id = assert(store:persist_generation(valid_row({ created_at = "2024-02-29 23:59:58.123" })))
        local row = fetch(store, id)
        assert.equal("2024-02-29 23:59:58.123", row.created_at)
      end)

      it("keeps an explicit created_at to the millisecond: .000 added, more digits cut", function()
        local function at(t) return fetch(store, assert(store:persist_generation(valid_row({ created_at = t })))) end
        local a, b = at("2024-01-02 03:04:05"), at("2024-01-02 03:04:05.98765")
        assert.same({ "2024-01-02 03:04:05.000", "2024-01-02 03:04:05.987" }, { a.created_at, b.created_at })
      end)

      it("keeps an explicit id (copies between stores)", function()
        local id = "01HZX3M4A5B6C7D8E9F0GHJKMN"
        local got = store:persist_generation(valid_row({ id = id, created_at = "2024-06-01 12:00:00.001" }))
        assert.equal(id, got)
        local row = fetch(store, id)
        assert.same({ id, "2024-06-01 12:00:00.001" }, { row.id, row.created_at })
      end)

      it("returns nil, 'CONSTRAINT: ...', 'CONSTRAINT' for an id that is already stored", function()
        local id = assert(store:persist_generation(valid_row()))
        local got, err, code = store:persist_generation(valid_row({ id = id }))
        assert.same({ nil, "CONSTRAINT" }, { got, code })
        assert.matches("^CONSTRAINT: cannot persist snapshot: ", err)
        assert.equal(1, count_rows(store))
      end)

      it("returns strictly increasing ids across 1000 persists", function()
        local prev = ""
        for i = 1, 1000 do
          local id = assert(store:persist_generation(valid_row()))
          if id <= prev then error(("id %d (%s) is not above the previous one (%s)"):format(i, id, prev)) end
          prev = id
        end
        assert.equal(1000, count_rows(store))
      end)
    end)

    describe("metric documents", function()
      local store
      before_each(function() store = fresh() end)
      after_each(function() store:close() end)

      local function persist_with(over)
        return fetch(store, assert(store:persist_generation(valid_row(over))))
      end

      local function scalar(sql, id)
        local rows = assert(store:query(sql, { id }))
        return rows[1].v
      end

      it("writes token_metrics with the spec's keys first, in the spec's order", function()
        local row = persist_with({ token_usage = { prompt_tokens = 120, completion_tokens = 80,
                                                   estimated_cost = 0.000123456789012 } })
        assert.equal('{"prompt_tokens":120,"completion_tokens":80,"total_tokens":200,'
          .. '"estimated_cost":0.000123456789012}', row.token_metrics)
      end)

      it("keeps at least 10 significant digits of a small cost", function()
        local cost = 0.000123456789012
        local id = store:persist_generation(valid_row({ token_usage = { prompt_tokens = 1, completion_tokens = 1,
                                                                        estimated_cost = cost } }))
        assert.truthy(fetch(store, id).token_metrics:find('"estimated_cost":0.000123456789012', 1, true))
        local v = scalar("SELECT " .. B.sql.json_number("token_metrics", "estimated_cost")
          .. " AS v FROM generation_snapshots WHERE id = ?", id)
        assert.is_true(math.abs(v - cost) / cost < 1e-10)
      end)

      it("round-trips a full-precision double cost exactly through the JSON text", function()
        local cost = 1 / 3 * 0.01
        local row = persist_with({ token_usage = { prompt_tokens = 1, completion_tokens = 1, estimated_cost = cost } })
        local text = row.token_metrics:match('"estimated_cost":([^,}]+)')
        assert.equal(cost, tonumber(text))
        assert.equal(cost, row.estimated_cost)
      end)

      it("defaults total_tokens to prompt_tokens + completion_tokens", function()
        local row = persist_with({ token_usage = { prompt_tokens = 1000, completion_tokens = 234 } })
        assert.equal(1234, row.total_tokens)
      end)

      it("keeps an explicit total_tokens", function()
        local row = persist_with({ token_usage = { prompt_tokens = 10, completion_tokens = 5, total_tokens = 20 } })
        assert.equal('{"prompt_tokens":10,"completion_tokens":5,"total_tokens":20,"estimated_cost":null}',
          row.token_metrics)
      end)

      it("writes a missing estimated_cost as JSON null, not 0", function()
        local id = store:persist_generation(valid_row({ token_usage = { prompt_tokens = 3, completion_tokens = 4 } }))
        assert.equal("null", scalar("SELECT " .. B.sql.json_type("token_metrics", "estimated_cost")
          .. " AS v FROM generation_snapshots WHERE id = ?", id))
        assert.is_nil(fetch(store, id).estimated_cost)
      end)

      it("writes performance_metrics with the spec's keys in order", function()
        local row = persist_with({ performance = { total_latency_ms = 1234.5, provider_latency_ms = 987.25,
                                                   model_identifier = "anthropic/claude-3.5-sonnet:beta" } })
        assert.equal('{"total_latency_ms":1234.5,"provider_latency_ms":987.25,'
          .. '"model_identifier":"anthropic/claude-3.5-sonnet:beta"}', row.performance_metrics)
      end)

      it("writes a missing model_identifier as JSON null", function()
        local row = persist_with({ performance = { total_latency_ms = 2.5, provider_latency_ms = 1.5 } })
        assert.equal('{"total_latency_ms":2.5,"provider_latency_ms":1.5,"model_identifier":null}',
          row.performance_metrics)
      end)

      it("defaults repair_metrics to no repairs, [] types, null score and [] log", function()
        local row = persist_with({ repair_info = {} })
        assert.equal('{"repair_count":0,"repair_types":[],"initial_validation_score":null,"repair_log":[]}',
          row.repair_metrics)
      end)

      it("writes repair_types and a text repair_log", function()
        local row = persist_with({ repair_info = { repair_count = 2, repair_types = { "length_exceeded",
          "missing_json_key" }, initial_validation_score = 0.625, repair_log = "too long;\n\"shorten\"" } })
        assert.equal('{"repair_count":2,"repair_types":["length_exceeded","missing_json_key"],'
          .. '"initial_validation_score":0.625,"repair_log":"too long;\\n\\"shorten\\""}', row.repair_metrics)
      end)

      it("writes a table repair_log as JSON", function()
        local row = persist_with({ repair_info = { repair_count = 1, repair_log = {
          { attempt = 1, issues = { "length_exceeded" }, feedback = "Keep it under 80 words." } } } })
        assert.equal('{"repair_count":1,"repair_types":[],"initial_validation_score":null,"repair_log":'
          .. '[{"attempt":1,"feedback":"Keep it under 80 words.","issues":["length_exceeded"]}]}', row.repair_metrics)
      end)

      it("keeps extra token_usage keys after the spec's keys, sorted", function()
        local row = persist_with({ token_usage = { prompt_tokens = 120, completion_tokens = 80, estimated_cost = 0.375,
                                                   cost_source = "pricing_table", cached_prompt_tokens = 40 } })
        assert.equal('{"prompt_tokens":120,"completion_tokens":80,"total_tokens":200,"estimated_cost":0.375,'
          .. '"cached_prompt_tokens":40,"cost_source":"pricing_table"}', row.token_metrics)
      end)

      it("keeps an extra calls array in performance_metrics", function()
        local row = persist_with({ performance = { total_latency_ms = 1500.5, provider_latency_ms = 1200.75,
          model_identifier = "m", calls = { { attempt = 1, provider_latency_ms = 700.25 },
                                            { attempt = 2, provider_latency_ms = 500.5 } } } })
        assert.equal('{"total_latency_ms":1500.5,"provider_latency_ms":1200.75,"model_identifier":"m",'
          .. '"calls":[{"attempt":1,"provider_latency_ms":700.25},{"attempt":2,"provider_latency_ms":500.5}]}',
          row.performance_metrics)
      end)

      it("exposes the metrics through the generated columns", function()
        local id = store:persist_generation(valid_row({
          token_usage = { prompt_tokens = 120, completion_tokens = 80, estimated_cost = 0.375 },
          performance = { total_latency_ms = 1500.5, provider_latency_ms = 1200.25, model_identifier = "m-1" },
          repair_info = { repair_count = 2, initial_validation_score = 0.625 },
        }))
        assert.same({ {
          estimated_cost = 0.375, total_tokens = 200, total_latency_ms = 1500.5, provider_latency_ms = 1200.25,
          model_identifier = "m-1", repair_count = 2, initial_validation_score = 0.625,
        } }, store:query("SELECT estimated_cost, total_tokens, total_latency_ms, provider_latency_ms,"
          .. " model_identifier, repair_count, initial_validation_score FROM generation_snapshots WHERE id = ?",
          { id }))
      end)

      it54("types the generated columns: counts as integers, the rest as floats #lua54", function()
        local id = store:persist_generation(valid_row({ repair_info = { repair_count = 2,
                                                                        initial_validation_score = 70 } }))
        local r = fetch(store, id)
        assert.same({ "integer", "integer", "float", "float", "float", "float" },
          { math_type(r.total_tokens), math_type(r.repair_count), math_type(r.estimated_cost),
            math_type(r.total_latency_ms), math_type(r.provider_latency_ms), math_type(r.initial_validation_score) })
      end)
    end)

    describe("persist_generation() validation", function()
      local store
      before_each(function() store = fresh() end)
      after_each(function() store:close() end)

      -- Each case: a name, a function that breaks a valid row, the exact message.
      local cases = {
        { "org_id is missing", function(r) r.org_id = nil end, "org_id is required" },
        { "org_id is genaudit.null", function(r) r.org_id = genaudit.null end, "org_id is required" },
        { "user_id is missing", function(r) r.user_id = nil end, "user_id is required" },
        { "platform is missing", function(r) r.platform = nil end, "platform is required" },
        { "template_id is missing", function(r) r.template_id = nil end, "template_id is required" },
        { "final_system_prompt is missing", function(r) r.final_system_prompt = nil end,
          "final_system_prompt is required" },
        { "final_user_prompt is missing", function(r) r.final_user_prompt = nil end, "final_user_prompt is required" },
        { "token_usage is missing", function(r) r.token_usage = nil end, "token_usage must be a table (got nil)" },
        { "performance is missing", function(r) r.performance = nil end, "performance must be a table (got nil)" },
        { "repair_info is missing", function(r) r.repair_info = nil end, "repair_info must be a table (got nil)" },
        { "token_usage.prompt_tokens is missing", function(r) r.token_usage.prompt_tokens = nil end,
          "token_usage.prompt_tokens is required" },
        { "token_usage.completion_tokens is missing", function(r) r.token_usage.completion_tokens = nil end,
          "token_usage.completion_tokens is required" },
        { "performance.total_latency_ms is missing", function(r) r.performance.total_latency_ms = nil end,
          "performance.total_latency_ms is required" },
        { "performance.provider_latency_ms is missing", function(r) r.performance.provider_latency_ms = nil end,
          "performance.provider_latency_ms is required" },
        { "org_id is a table", function(r) r.org_id = {} end, "org_id must be a string or an integer (got table)" },
        { "org_id is a fractional number", function(r) r.org_id = 1.5 end,
          "org_id must be a string or an integer (got number)" },
        { "org_id is empty", function(r) r.org_id = "" end, "org_id must not be empty" },
        { "platform is a number", function(r) r.platform = 5 end, "platform must be a string (got number)" },
        { "template_id is empty", function(r) r.template_id = "" end, "template_id must not be empty" },
        { "final_user_prompt is a table", function(r) r.final_user_prompt = {} end,
          "final_user_prompt must be a string (got table)" },
        { "token_usage is a string", function(r) r.token_usage = "120/80" end,
          "token_usage must be a table (got string)" },
        { "token_usage.prompt_tokens is -1", function(r) r.token_usage.prompt_tokens = -1 end,
          "token_usage.prompt_tokens must be a non-negative integer" },
        { "token_usage.prompt_tokens is 1.5", function(r) r.token_usage.prompt_tokens = 1.5 end,
          "token_usage.prompt_tokens must be a non-negative integer" },
        { "token_usage.prompt_tokens is the string '12'", function(r) r.token_usage.prompt_tokens = "12" end,
          "token_usage.prompt_tokens must be a non-negative integer" },
        { "token_usage.total_tokens is negative", function(r) r.token_usage.total_tokens = -5 end,
          "token_usage.total_tokens must be a non-negative integer" },
        { "token_usage.estimated_cost is NaN", function(r) r.token_usage.estimated_cost = 0 / 0 end,
          "token_usage.estimated_cost must be a finite number >= 0" },
        { "token_usage.estimated_cost is infinite", function(r) r.token_usage.estimated_cost = math.huge end,
          "token_usage.estimated_cost must be a finite number >= 0" },
        { "token_usage.estimated_cost is -1", function(r) r.token_usage.estimated_cost = -1 end,
          "token_usage.estimated_cost must be a finite number >= 0" },
        { "token_usage.estimated_cost is a string", function(r) r.token_usage.estimated_cost = "0.01" end,
          "token_usage.estimated_cost must be a number" },
        { "token_usage has a non-string key", function(r) r.token_usage[1] = "x" end,
          "token_usage: an object has a key that is not a string" },
        { "performance.total_latency_ms is negative", function(r) r.performance.total_latency_ms = -0.5 end,
          "performance.total_latency_ms must be a finite number >= 0" },
        { "performance.model_identifier is a number", function(r) r.performance.model_identifier = 5 end,
          "performance.model_identifier must be a string" },
        { "repair_info.repair_count is negative", function(r) r.repair_info.repair_count = -1 end,
          "repair_info.repair_count must be a non-negative integer" },
        { "repair_info.repair_types holds numbers", function(r) r.repair_info.repair_types = { 1, 2 } end,
          "repair_info.repair_types must be an array of strings" },
        { "repair_info.repair_types is an object", function(r) r.repair_info.repair_types = { a = "x" } end,
          "repair_info.repair_types must be an array of strings" },
        { "repair_info.repair_log is a number", function(r) r.repair_info.repair_log = 5 end,
          "repair_info.repair_log must be a string or a table" },
        { "status is 'weird'", function(r) r.status = "weird" end, "status must be 'completed' or 'failed'" },
        { "status is 'failed' without an error", function(r) r.status = "failed" end,
          "error is required when status is 'failed'" },
        { "request_params is a string", function(r) r.request_params = "temperature=0.7" end,
          "request_params must be a table" },
        { "request_params holds a function", function(r) r.request_params = { f = print } end,
          "request_params: cannot encode a function as JSON" },
        { "created_at is not a date", function(r) r.created_at = "yesterday" end,
          "created_at must be 'YYYY-MM-DD HH:MM:SS[.fff]' (UTC)" },
        { "created_at is February 30th", function(r) r.created_at = "2024-02-30 10:00:00.000" end,
          "created_at must be 'YYYY-MM-DD HH:MM:SS[.fff]' (UTC)" },
        { "created_at has hour 24", function(r) r.created_at = "2024-02-28 24:00:00" end,
          "created_at must be 'YYYY-MM-DD HH:MM:SS[.fff]' (UTC)" },
        { "id is too short", function(r) r.id = "01HZX3M4A5" end,
          "id must be a ULID: 26 characters of Crockford base32 (upper case)" },
        { "id holds a letter Crockford leaves out", function(r) r.id = "01HZX3M4A5B6C7D8E9F0GHJKMU" end,
          "id must be a ULID: 26 characters of Crockford base32 (upper case)" },
        { "id is lower case", function(r) r.id = "01hzx3m4a5b6c7d8e9f0ghjkmn" end,
          "id must be a ULID: 26 characters of Crockford base32 (upper case)" },
        { "id is past the largest ULID", function(r) r.id = "81HZX3M4A5B6C7D8E9F0GHJKMN" end,
          "id must be a ULID: 26 characters of Crockford base32 (upper case)" },
        { "id is a number", function(r) r.id = 5 end, "id must be a string (got number)" },
      }

      for _, case in ipairs(cases) do
        local name, breakit, message = case[1], case[2], case[3]
        it("returns nil, 'INVALID: ...', 'INVALID' and writes nothing when " .. name, function()
          local row = valid_row()
          breakit(row)
          local id, err, code = store:persist_generation(row)
          assert.same({ nil, "INVALID: " .. message, "INVALID" }, { id, err, code })
          assert.equal(0, count_rows(store))
        end)
      end

      it("raises when the row is not a table", function()
        assert.has_error(function() store:persist_generation("x") end,
          "bad argument #1 to 'persist_generation' (table expected, got string)")
      end)
    end)

    describe("immutability", function()
      local store, t
      before_each(function()
        t = B.target()
        store = assert(B.open(t))
      end)
      after_each(function() store:close() end)

      it("refuses an UPDATE from another client", function()
        assert(store:persist_generation(valid_row()))
        local out = B.external(t, "UPDATE generation_snapshots SET content = 'x'")
        assert.truthy(out:find("generation_snapshots rows are immutable", 1, true), out)
      end)

      it("leaves the row unchanged after a refused UPDATE", function()
        local id = assert(store:persist_generation(valid_row()))
        local before = fetch(store, id)
        B.external(t, "UPDATE generation_snapshots SET content = 'x', final_user_prompt = 'y'")
        assert.same(before, fetch(store, id))
      end)

      it("refuses DELETE (a purge is the retention path)", function()
        assert(store:persist_generation(valid_row()))
        local out = B.external(t, "DELETE FROM generation_snapshots")
        assert.truthy(out:find("generation_snapshots rows are not deleted", 1, true), out)
        assert.equal(1, count_rows(store))
      end)

      it("returns nil, 'READONLY: ...', 'READONLY' for an UPDATE through query()", function()
        local id = assert(store:persist_generation(valid_row()))
        local rows, err, code = store:query("UPDATE generation_snapshots SET content = 'x' WHERE id = ?", { id })
        assert.same({ nil, "READONLY: query() runs one read-only statement", "READONLY" }, { rows, err, code })
        assert.equal("We shipped it!", fetch(store, id).content)
      end)

      -- Inserts a row through another client with `text` in column `col`; returns its output.
      -- Since migration 0008 an unsealed row is refused, so the row carries
      -- seal columns (made up: the database checks their presence, verify()
      -- their truth) and what is tested is the column's JSON check.
      local function external_insert(col, text)
        return B.external(t, "INSERT INTO generation_snapshots (id, org_id, user_id, platform, template_id, "
          .. "chain_id, chain_seq, prev_hash, record_hash, " .. col
          .. ") VALUES ('01ARZ3NDEKTSV4RRFFQ69G5FAV', 'o', 'u', 'p', 't', '01ARZ3NDEKTSV4RRFFQ69G5FAW', 1, '"
          .. ("0"):rep(64) .. "', '" .. ("0"):rep(64) .. "', '" .. text .. "')")
      end

      it("refuses an unsealed row from another client", function()
        local out = B.external(t, "INSERT INTO generation_snapshots (id, org_id, user_id, platform, template_id)"
          .. " VALUES ('01ARZ3NDEKTSV4RRFFQ69G5FAV', 'o', 'u', 'p', 't')")
        assert.truthy(out:find("generation_snapshots rows must be sealed", 1, true), out)
        assert.equal(0, count_rows(store))
      end)

      for _, col in ipairs({ "token_metrics", "performance_metrics", "repair_metrics", "request_params" }) do
        it("rejects invalid JSON in " .. col .. " written by another client", function()
          local out = external_insert(col, "{bad")
          assert.truthy(out:find(B.errors.invalid_json(col), 1, true), out)
          assert.equal(0, count_rows(store))
        end)
      end

      it("accepts valid JSON written by another client", function()
        external_insert("token_metrics", '{"prompt_tokens":1}')
        assert.equal(1, count_rows(store))
      end)
    end)

    describe("query()", function()
      local store
      before_each(function() store = fresh() end)
      after_each(function() store:close() end)

      it("binds positional ? parameters", function()
        assert.same({ { a = 1, b = "x" } }, store:query("SELECT ? AS a, ? AS b", { 1, "x" }))
      end)

      it("binds numbered ?1 parameters, reused", function()
        assert.same({ { a = 7, b = 7, c = "z" } }, store:query("SELECT ?1 AS a, ?1 AS b, ?2 AS c", { 7, "z" }))
      end)

      it("binds :name parameters from a table keyed by name", function()
        store:persist_generation(valid_row({ template_id = "t1" }))
        store:persist_generation(valid_row({ template_id = "t1" }))
        store:persist_generation(valid_row({ template_id = "t2" }))
        assert.same({ { n = 2 } }, store:query(
          "SELECT count(*) AS n FROM generation_snapshots WHERE template_id = :template", { template = "t1" }))
      end)

      it("binds @name and $name parameters", function()
        assert.same({ { a = "at", b = "dollar" } },
          store:query("SELECT @x AS a, $y AS b", { x = "at", y = "dollar" }))
      end)

      it("leaves placeholders inside string literals, quoted names and comments alone", function()
        assert.same({ { a = "?", ["b?"] = ":x", c = 5 } },
          store:query("SELECT '?' AS a, ':x' AS \"b?\", /* ? :y */ ? AS c -- ?\n", { 5 }))
      end)

      it("binds a fractional number as a float", function()
        assert.same({ { v = 0.5 } }, store:query("SELECT ? AS v", { 0.5 }))
      end)

      it("binds genaudit.null as NULL", function()
        assert.same({ {} }, store:query("SELECT ? AS v", { genaudit.null }))
      end)

      it("leaves NULL columns out of the row table", function()
        assert.same({ { a = 1 } }, store:query("SELECT 1 AS a, NULL AS b"))
      end)

      it("returns an empty array when no row matches", function()
        assert.same({}, store:query("SELECT id FROM generation_snapshots"))
      end)

      it54("returns integer columns as Lua integers and real ones as floats #lua54", function()
        local row = store:query("SELECT 42 AS i, 9007199254740993 AS big, 2.0 AS r")[1]
        assert.same({ "integer", "integer", "float" }, { math_type(row.i), math_type(row.big), math_type(row.r) })
        assert.equal(9007199254740993, row.big)
      end)

      itjit("returns integer and real columns as numbers #luajit", function()
        local row = store:query("SELECT 42 AS i, 2.5 AS r")[1]
        assert.same({ "number", "number" }, { type(row.i), type(row.r) })
        assert.same({ 42, 2.5 }, { row.i, row.r })
      end)

      it54("returns count(*) and sums of integers as Lua integers #lua54", function()
        store:persist_generation(valid_row())
        local row = store:query("SELECT count(*) AS n, sum(total_tokens) AS s FROM generation_snapshots")[1]
        assert.same({ "integer", "integer", 1, 200 }, { math_type(row.n), math_type(row.s), row.n, row.s })
      end)

      it("returns nil, 'BIND: ...', 'BIND' for a function parameter", function()
        assert.same({ nil, "BIND: parameter 1: cannot bind a function", "BIND" },
          { store:query("SELECT ?", { print }) })
      end)

      it("returns nil, 'BIND: ...', 'BIND' for a table parameter", function()
        assert.same({ nil, "BIND: parameter 2: cannot bind a table", "BIND" },
          { store:query("SELECT ?, ?", { 1, {} }) })
      end)

      it("returns nil, 'BIND: ...', 'BIND' for a missing positional parameter", function()
        assert.same({ nil, "BIND: parameter #1 has no value", "BIND" }, { store:query("SELECT ?", {}) })
      end)

      it("returns nil, 'BIND: ...', 'BIND' for a missing named parameter", function()
        assert.same({ nil, "BIND: parameter :template has no value", "BIND" },
          { store:query("SELECT :template", { other = 1 }) })
      end)

      it("returns nil, 'BIND: ...', 'BIND' when parameters are needed but none are given", function()
        assert.same({ nil, "BIND: no parameters given", "BIND" }, { store:query("SELECT ?") })
      end)

      it("runs a statement again after a bind failure", function()
        assert.is_nil(store:query("SELECT ? AS v", { print }))
        assert.same({ { v = 3 } }, store:query("SELECT ? AS v", { 3 }))
      end)

      it("returns nil, err, code for a syntax error", function()
        assert.same({ nil, B.errors.syntax, B.errors.code }, { store:query("SELEC 1") })
      end)

      it("returns nil, err, code for an unknown table", function()
        assert.same({ nil, B.errors.unknown_table, B.errors.code }, { store:query("SELECT * FROM nope") })
      end)

      it("stays usable after a failed query", function()
        assert.is_nil(store:query("SELECT * FROM nope"))
        assert.same({ { v = 1 } }, store:query("SELECT 1 AS v"))
      end)

      it("returns nil, 'READONLY: ...', 'READONLY' for two statements in one string", function()
        assert.same({ nil, "READONLY: query() runs one read-only statement", "READONLY" },
          { store:query("SELECT 1; SELECT 2") })
      end)

      it("refuses two statements in one string on every call, not just the first", function()
        store:query("SELECT 1; DELETE FROM generation_snapshots")
        assert.same({ nil, "READONLY: query() runs one read-only statement", "READONLY" },
          { store:query("SELECT 1; DELETE FROM generation_snapshots") })
      end)

      it("refuses a write statement on every call", function()
        store:persist_generation(valid_row())
        store:query("DELETE FROM generation_snapshots")
        assert.same({ nil, "READONLY: query() runs one read-only statement", "READONLY" },
          { store:query("DELETE FROM generation_snapshots") })
        assert.equal(1, count_rows(store))
      end)

      it("refuses a write hidden in a WITH clause", function()
        store:persist_generation(valid_row())
        local rows, err, code = store:query("WITH d AS (DELETE FROM generation_snapshots RETURNING id)"
          .. " SELECT count(*) AS n FROM d")
        assert.is_nil(rows)
        assert.truthy(code == "READONLY" or code == B.errors.code, err)
        assert.equal(1, count_rows(store))
      end)

      it("returns nil, 'READONLY: ...', 'READONLY' for an empty statement", function()
        assert.same({ nil, "READONLY: query() runs one read-only statement", "READONLY" }, { store:query("  ") })
      end)

      it("accepts a trailing semicolon", function()
        assert.same({ { v = 1 } }, store:query("SELECT 1 AS v;\n"))
      end)

      it("runs the same SQL 100 times (statement cache)", function()
        for i = 1, 100 do
          local rows = assert(store:query("SELECT ? * 2 AS v", { i }))
          assert.equal(i * 2, rows[1].v)
        end
      end)

      it("runs more distinct SQL strings than the cache holds, then the first again", function()
        for i = 1, 40 do
          assert.same({ { v = i } }, store:query("SELECT " .. i .. " AS v"))
        end
        assert.same({ { v = 1 } }, store:query("SELECT 1 AS v"))
        assert.same({ { v = 40 } }, store:query("SELECT 40 AS v"))
      end)

      it("raises when sql is not a string", function()
        assert.has_error(function() store:query(nil) end, "bad argument #1 to 'query' (string expected, got nil)")
      end)

      it("raises when params is not a table", function()
        assert.has_error(function() store:query("SELECT ?", 1) end,
          "bad argument #2 to 'query' (table expected, got number)")
      end)
    end)

    describe("query() and each() cannot change the connection", function()
      local READONLY = { nil, "READONLY: query() runs one read-only statement", "READONLY" }
      local TX = { "BEGIN", "BEGIN TRANSACTION", "COMMIT", "END", "ROLLBACK", "SAVEPOINT ga_hostile",
                   "RELEASE ga_hostile", "RELEASE SAVEPOINT ga_hostile", "ROLLBACK TO ga_hostile",
                   "  begin  ;", "/* c */ COMMIT" }
      local hostile = {}
      for _, q in ipairs(TX) do hostile[#hostile + 1] = q end
      for _, q in ipairs(B.hostile) do hostile[#hostile + 1] = q end

      local function state(store)
        local out = {}
        for i, q in ipairs(B.state) do out[i] = assert(store:query(q)) end
        return out
      end

      for _, q in ipairs(hostile) do
        it("refuses " .. q:gsub("%s+", " ") .. " in query() and each(), on every call", function()
          local store = fresh()
          local before = state(store)
          assert.same(READONLY, { store:query(q) })
          assert.same(READONLY, { store:query(q) }) -- a second time: no cache lets it through
          local seen = 0
          assert.same(READONLY, { store:each(q, nil, function() seen = seen + 1 end) })
          assert.equal(0, seen)
          assert.same(before, state(store))
          store:close()
        end)
      end

      it("leaves every later persist_generation durable after each refused statement", function()
        local t = B.target()
        local store = assert(B.open(t))
        local ids = {}
        for i, q in ipairs(hostile) do
          store:query(q)
          store:each(q, nil, function() end)
          ids[i] = assert(store:persist_generation(valid_row({ user_id = i })))
        end
        assert.is_true(store:close())
        store = assert(B.open(t))
        for i, id in ipairs(ids) do assert.equal(tostring(i), fetch(store, id).user_id, hostile[i]) end
        assert.equal(#hostile, count_rows(store))
        store:close()
      end)

      it("still runs plain reads (SELECT, WITH, VALUES)", function()
        local store = fresh()
        assert.same({ { v = 1 } }, store:query("SELECT 1 AS v"))
        assert.same({ { v = 2 } }, store:query("WITH x(v) AS (SELECT 2) SELECT v FROM x"))
        assert.equal(1, #assert(store:query("VALUES (1)")))
        store:close()
      end)
    end)

    describe("async mode: rows the database would refuse", function()
      local store
      after_each(function() if store then store:close() end store = nil end)

      it("refuses a row whose explicit id is stored already, before acknowledging it", function()
        local t = B.target()
        store = assert(B.open(t))
        local id = assert(store:persist_generation(valid_row()))
        assert(store:start_async())
        local ok, err, code = store:persist_generation(valid_row({ id = id }))
        assert.same({ nil, "CONSTRAINT: a snapshot with id " .. id .. " is stored already", "CONSTRAINT" },
          { ok, err, code })
        assert.is_true(store:flush())
        assert.equal(0, store:stats().failed)
        assert.equal(1, count_rows(store))
      end)

      it("refuses a second row with the same explicit id while the first is queued or written", function()
        local t = B.target()
        store = assert(B.open(t, { async = true }))
        local id = "01J0000000000000000000ABCD"
        assert.equal(id, store:persist_generation(valid_row({ id = id })))
        local ok, err, code = store:persist_generation(valid_row({ id = id, user_id = "other" }))
        assert.is_nil(ok)
        assert.equal("CONSTRAINT", code)
        assert.truthy(err == "CONSTRAINT: a snapshot with id " .. id .. " is queued already"
          or err == "CONSTRAINT: a snapshot with id " .. id .. " is stored already", err)
        assert.is_true(store:flush())
        assert.equal(0, store:stats().failed)
        assert.same({ 1, "user-1" }, { count_rows(store), fetch(store, id).user_id })
      end)

      it("refuses every second row with an explicit id while the first is being committed", function()
        -- the id enters the writer's id set before the database is asked: a
        -- first row committed between the two checks is still seen by one
        local t = B.target()
        store = assert(B.open(t, { async = true }))
        local refused = 0
        for i = 1, 200 do
          local id = string.format("01J00000000000000000%06d", i)
          assert.equal(id, store:persist_generation(valid_row({ id = id })))
          local ok, _, code = store:persist_generation(valid_row({ id = id, user_id = "other" }))
          assert.is_nil(ok)
          assert.equal("CONSTRAINT", code)
          refused = refused + 1
        end
        assert.is_true(store:flush())
        assert.same({ 200, 0, 200 }, { refused, store:stats().failed, count_rows(store) })
        assert.same({}, store:query("SELECT id FROM generation_snapshots WHERE user_id = 'other'"))
      end)

      it("accepts an explicit id again after the row that had it was refused", function()
        local t = B.target()
        store = assert(B.open(t, { async = true }))
        B.external(t, B.poison)
        local id = "01J0000000000000000000ABCE"
        assert(store:persist_generation(valid_row({ id = id, template_id = "poison" })))
        assert.is_nil(store:flush())
        assert.equal(id, store:persist_generation(valid_row({ id = id })))
        assert.is_true(store:flush())
        assert.equal("tpl-launch", fetch(store, id).template_id)
      end)

      it("reports a refused row in one flush(); later flushes of good rows return true", function()
        local t = B.target()
        store = assert(B.open(t, { async = true }))
        B.external(t, B.poison)
        assert(store:persist_generation(valid_row()))
        assert(store:persist_generation(valid_row({ template_id = "poison" })))
        local ok, err, code = store:flush()
        assert.same({ nil, "WRITE_FAILED" }, { ok, code })
        assert.matches("^WRITE_FAILED: 1 row%(s%) could not be written; last error: row refused: ", err)
        local id = assert(store:persist_generation(valid_row({ user_id = "later" })))
        assert.is_true(store:flush())
        assert.is_true(store:flush())
        assert.equal("later", fetch(store, id).user_id)
        local st = store:stats()
        assert.same({ 2, 1 }, { st.written, st.failed }) -- stats() keeps counting
        assert(store:persist_generation(valid_row({ template_id = "poison" })))
        local ok2, _, code2 = store:flush()
        assert.same({ nil, "WRITE_FAILED" }, { ok2, code2 })
        assert.is_true(store:flush())
      end)
    end)

    describe("each()", function()
      local store

      before_each(function()
        store = fresh()
        local p = genaudit.persister(store)
        for i = 1, 5 do
          assert(p:persist_generation{
            org_id = i, user_id = 1, platform = "x", template_id = "t" .. i,
            final_system_prompt = "s", final_user_prompt = "u",
            token_usage = { prompt_tokens = i, completion_tokens = 0 },
            performance = { total_latency_ms = 1, provider_latency_ms = 1 }, repair_info = {},
          })
        end
      end)
      after_each(function() store:close() end)

      it("passes every row to the function and returns the count", function()
        local seen = {}
        local n = assert(store:each("SELECT template_id, total_tokens FROM generation_snapshots ORDER BY id", {},
          function(row) seen[#seen + 1] = row.template_id .. "=" .. row.total_tokens end))
        assert.equal(5, n)
        assert.same({ "t1=1", "t2=2", "t3=3", "t4=4", "t5=5" }, seen)
      end)

      it("binds parameters", function()
        local seen = {}
        assert.equal(2, assert(store:each("SELECT template_id FROM generation_snapshots WHERE total_tokens > ?"
          .. " AND template_id <> :skip ORDER BY id", { 2, skip = "t4" },
          function(row) seen[#seen + 1] = row.template_id end)))
        assert.same({ "t3", "t5" }, seen)
      end)

      it("streams more rows than one fetch holds", function()
        for i = 1, 600 do assert(store:persist_generation(valid_row({ user_id = i }))) end
        local n = 0
        assert.equal(605, assert(store:each("SELECT id FROM generation_snapshots", {}, function() n = n + 1 end)))
        assert.equal(605, n)
      end)

      it("stops when the function returns false", function()
        local n = assert(store:each("SELECT id FROM generation_snapshots WHERE total_tokens > ?", { 1 },
          function() return false end))
        assert.equal(1, n)
      end)

      it("lets the function query the same store", function()
        local sql = "SELECT count(*) AS n FROM generation_snapshots"
        local counts = {}
        assert(store:each(sql, {}, function() counts[#counts + 1] = store:query(sql)[1].n end))
        assert.same({ 5 }, counts)
      end)

      it("keeps streaming after a query in the function fails", function()
        for i = 1, 600 do assert(store:persist_generation(valid_row({ user_id = i }))) end
        local failed = 0
        local n = assert(store:each("SELECT id FROM generation_snapshots", {}, function()
          if failed < 3 or failed % 100 == 0 then assert.is_nil(store:query("SELECT * FROM nope")) end
          assert.is_nil(store:query("SELECT 1 +"))
          failed = failed + 1
        end))
        assert.same({ 605, 605 }, { n, failed })
      end)

      it("lets the function run each() on the same store", function()
        local pairs_seen = 0
        assert(store:each("SELECT id FROM generation_snapshots", {}, function()
          assert(store:each("SELECT id FROM generation_snapshots WHERE total_tokens > ?", { 3 }, function()
            pairs_seen = pairs_seen + 1
          end))
        end))
        assert.equal(10, pairs_seen)
      end)

      it("re-raises an error from the function and leaves the store usable", function()
        assert.has_error(function()
          store:each("SELECT id FROM generation_snapshots", {}, function() error("stop here", 0) end)
        end, "stop here")
        assert.equal(5, store:query("SELECT count(*) AS n FROM generation_snapshots")[1].n)
        assert(store:persist_generation(valid_row()))
      end)

      it("refuses a statement that writes", function()
        assert.same({ nil, "READONLY: query() runs one read-only statement", "READONLY" },
          { store:each("DELETE FROM generation_snapshots", {}, function() end) })
        assert.equal(5, count_rows(store))
      end)

      it("raises when the function closes the store", function()
        assert.has_error(function()
          store:each("SELECT id FROM generation_snapshots", {}, function() store:close() end)
        end, "store closed during each()")
      end)

      it("raises when fn is not a function", function()
        assert.has_error(function() store:each("SELECT 1", {}, nil) end,
          "bad argument #3 to 'each' (function expected, got nil)")
      end)
    end)

    describe("lifecycle", function()
      it("close() returns true", function()
        local store = fresh()
        assert.is_true(store:close())
      end)

      it("close() twice returns true", function()
        local store = fresh()
        store:close()
        assert.is_true(store:close())
      end)

      for _, call in ipairs({
        { "query", function(s) return s:query("SELECT 1") end },
        { "each", function(s) return s:each("SELECT 1", {}, function() end) end },
        { "persist_generation", function(s) return s:persist_generation(valid_row()) end },
        { "schema_version", function(s) return s:schema_version() end },
        { "migrate", function(s) return s:migrate() end },
        { "start_async", function(s) return s:start_async() end },
        { "flush", function(s) return s:flush() end },
        { "stats", function(s) return s:stats() end },
      }) do
        it(call[1] .. "() raises after close", function()
          local store = fresh()
          store:close()
          assert.has_error(function() call[2](store) end, "attempt to use a closed store")
        end)
      end

      it("tostring names the database while open", function()
        local t = B.target()
        local store = assert(B.open(t))
        assert.equal("genaudit.store " .. B.class .. " (" .. B.detail(t) .. ")", tostring(store))
        store:close()
      end)

      it("tostring shows (closed) after close", function()
        local store = fresh()
        store:close()
        assert.equal("genaudit.store " .. B.class .. " (closed)", tostring(store))
      end)

      it54("closes a store held in a <close> variable #lua54", function()
        -- compiled at run time so LuaJIT, which has no <close>, still parses this file
        local chunk = assert(load([[
          local open = ...
          local held
          do
            local store <close> = open()
            held = store
          end
          return held
        ]]))
        local store = chunk(fresh)
        assert.equal("genaudit.store " .. B.class .. " (closed)", tostring(store))
      end)

      it("stats() counts rows persisted in synchronous mode", function()
        local store = fresh()
        assert(store:persist_generation(valid_row()))
        assert(store:persist_generation(valid_row()))
        local st = store:stats()
        assert.same({ "sync", 2, 2, 0 }, { st.mode, st.queued, st.written, st.failed })
        assert.is_true(store:flush())
        store:close()
      end)
    end)

    describe("async mode", function()
      local store
      after_each(function() if store then store:close() end store = nil end)

      local function async_target()
        local t = B.target()
        return t, assert(B.open(t, { async = { queue = 1000, batch = 50 } }))
      end

      it("returns ids at once and commits every row by flush()", function()
        local _
        _, store = async_target()
        local ids = {}
        for i = 1, 120 do ids[i] = assert(store:persist_generation(valid_row({ user_id = i }))) end
        assert.is_true(store:flush())
        assert.equal(120, count_rows(store))
        local st = store:stats()
        assert.same({ "async", 120, 120, 0, 0 }, { st.mode, st.queued, st.written, st.failed, st.pending })
        assert.equal("120", fetch(store, ids[120]).user_id)
      end)

      it("writes prompts byte-exact", function()
        local _
        _, store = async_target()
        local user = "tab\there, newline\nthere, backslash \\ and \\N, CR\r, UTF-8 \226\130\172"
        local id = assert(store:persist_generation(valid_row({ final_user_prompt = user, content = genaudit.null,
                                                               created_at = "2026-01-02 03:04:05.678" })))
        assert.is_true(store:flush())
        local row = fetch(store, id)
        assert.same({ user, "2026-01-02 03:04:05.678" }, { row.final_user_prompt, row.created_at })
        assert.is_nil(row.content)
      end)

      it("checks rows before queueing them: a bad row returns INVALID and is not queued", function()
        local _
        _, store = async_target()
        assert.same({ nil, "INVALID: org_id is required", "INVALID" },
          { store:persist_generation(valid_row({ org_id = genaudit.null })) })
        assert.equal(0, store:stats().queued)
      end)

      it("drains the queue on close()", function()
        local t
        t, store = async_target()
        for i = 1, 300 do assert(store:persist_generation(valid_row({ user_id = i }))) end
        assert.is_true(store:close())
        store = assert(B.open(t))
        assert.equal(300, count_rows(store))
      end)

      it("refuses to start async mode twice", function()
        local _
        _, store = async_target()
        assert.same({ nil, "ASYNC: the store is already in async mode", "ASYNC" }, { store:start_async() })
      end)
    end)

    describe("genaudit.persister()", function()
      it("persist_generation() raises when the row is not a table", function()
        local store = fresh()
        local persister = genaudit.persister(store)
        assert.has_error(function() persister:persist_generation("x") end,
          "bad argument #1 to 'persist_generation' (table expected, got string)")
        store:close()
      end)

      it("persist_generation() writes through to the store and returns the id", function()
        local store = fresh()
        local id = assert(genaudit.persister(store):persist_generation(valid_row()))
        assert.equal("tpl-launch", fetch(store, id).template_id)
        store:close()
      end)

      it("persist_generation() passes validation failures through", function()
        local store = fresh()
        local row = valid_row()
        row.org_id = nil
        assert.same({ nil, "INVALID: org_id is required", "INVALID" },
          { genaudit.persister(store):persist_generation(row) })
        store:close()
      end)
    end)

    -- Implausible values (issue 11, class 10): refused, nothing written, in
    -- sync and async mode alike (the row is checked before it is queued).
    describe("persist_generation() plausibility", function()
      local store
      before_each(function() store = fresh() end)
      after_each(function() store:close() end)

      local function utc(offset_s) return os.date("!%Y-%m-%d %H:%M:%S", os.time() + offset_s) end
      local AHEAD = utc(600) -- one text for the row and the expected message

      local cases = {
        { "total_tokens is less than prompt + completion",
          function(r) r.token_usage.total_tokens = 199 end,
          "token_usage.total_tokens: 199 is less than prompt_tokens + completion_tokens (200)" },
        { "initial_validation_score is 250", function(r) r.repair_info.initial_validation_score = 250 end,
          "repair_info.initial_validation_score: 250 is outside 0..100" },
        { "initial_validation_score is 100.5", function(r) r.repair_info.initial_validation_score = 100.5 end,
          "repair_info.initial_validation_score: 100.5 is outside 0..100" },
        { "final_validation_score is 101", function(r) r.repair_info.final_validation_score = 101 end,
          "repair_info.final_validation_score: must be a number in 0..100" },
        { "final_validation_score is -1", function(r) r.repair_info.final_validation_score = -1 end,
          "repair_info.final_validation_score: must be a number in 0..100" },
        { "final_validation_score is NaN", function(r) r.repair_info.final_validation_score = 0 / 0 end,
          "repair_info.final_validation_score: must be a number in 0..100" },
        { "final_validation_score is a string", function(r) r.repair_info.final_validation_score = "90" end,
          "repair_info.final_validation_score: must be a number in 0..100" },
        { "created_at is in 2999", function(r) r.created_at = "2999-01-01 00:00:00.000" end,
          "created_at: 2999-01-01 00:00:00.000 is in the future" },
        { "created_at is 10 minutes ahead", function(r) r.created_at = AHEAD end,
          "created_at: " .. AHEAD .. " is in the future" },
        { "created_at is in 1999", function(r) r.created_at = "1999-12-31 23:59:59.999" end,
          "created_at: 1999-12-31 23:59:59.999 is before 2000" },
        { "status is 'completed' with an error", function(r) r.status = "completed" r.error = "boom" end,
          "error: must be absent when status is 'completed'" },
        { "status defaults to 'completed' and an error is given", function(r) r.error = "" end,
          "error: must be absent when status is 'completed'" },
        { "provider_latency_ms is more than total_latency_ms",
          function(r) r.performance.provider_latency_ms = 1500.75 end,
          "performance.provider_latency_ms: 1500.75 is more than total_latency_ms (1500.5)" },
        { "provider_latency_ms is negative", function(r) r.performance.provider_latency_ms = -1 end,
          "performance.provider_latency_ms must be a finite number >= 0" },
        { "total_latency_ms is NaN", function(r) r.performance.total_latency_ms = 0 / 0 end,
          "performance.total_latency_ms must be a finite number >= 0" },
        { "status is 'failed' with an empty error", function(r) r.status = "failed" r.error = "" end,
          "error is required when status is 'failed'" },
        { "cached_prompt_tokens is negative", function(r) r.token_usage.cached_prompt_tokens = -5 end,
          "token_usage.cached_prompt_tokens must be a non-negative integer" },
        { "cache_write_tokens is more than prompt_tokens", function(r) r.token_usage.cache_write_tokens = 121 end,
          "token_usage.cache_write_tokens: 121 is more than prompt_tokens (120)" },
        { "reasoning_tokens is more than completion_tokens", function(r) r.token_usage.reasoning_tokens = 81 end,
          "token_usage.reasoning_tokens: 81 is more than completion_tokens (80)" },
        { "estimated_cost is 1e308 USD", function(r) r.token_usage.estimated_cost = 1e308 end,
          "token_usage.estimated_cost: 1e+308 USD for one generation is not plausible" },
        { "total_latency_ms is 1e308", function(r) r.performance.total_latency_ms = 1e308 end,
          "performance.total_latency_ms: 1e+308 ms (over a week) is not plausible" },
        { "repair_count is 1e9", function(r) r.repair_info.repair_count = 1000000000 end,
          "repair_info.repair_count: 1000000000 repairs of one draft are not plausible (at most 1000)" },
      }

      for _, case in ipairs(cases) do
        local name, breakit, message = case[1], case[2], case[3]
        it("returns nil, 'INVALID: ...', 'INVALID' and writes nothing when " .. name, function()
          local row = valid_row()
          breakit(row)
          assert.same({ nil, "INVALID: " .. message, "INVALID" }, { store:persist_generation(row) })
          assert.equal(0, count_rows(store))
        end)
      end

      it("accepts the edges: scores 0 and 100, total = prompt + completion, 2000-01-01, a minute ahead,"
        .. " equal latencies, cached = prompt, a week, 1000 repairs, 1e6 USD", function()
        local rows = {
          valid_row({ token_usage = { prompt_tokens = 120, completion_tokens = 80, total_tokens = 200 },
                      repair_info = { initial_validation_score = 0, final_validation_score = 100 } }),
          valid_row({ repair_info = { initial_validation_score = 100, final_validation_score = 0 },
                      created_at = "2000-01-01 00:00:00.000" }),
          valid_row({ created_at = utc(60), performance = { total_latency_ms = 7.25, provider_latency_ms = 7.25 } }),
          valid_row({ status = "failed", error = "PROVIDER_ERROR: boom" }),
          valid_row({ token_usage = { prompt_tokens = 120, completion_tokens = 80, cached_prompt_tokens = 120,
                                      reasoning_tokens = 80, estimated_cost = 1e6 },
                      repair_info = { repair_count = 1000 },
                      performance = { total_latency_ms = 604800000, provider_latency_ms = 1 } }),
        }
        for _, r in ipairs(rows) do assert(store:persist_generation(r)) end
        assert.equal(#rows, count_rows(store))
      end)

      it("refuses an implausible row in async mode before queueing it", function()
        local t = B.target()
        local s = assert(B.open(t, { async = {} }))
        assert.same({ nil, "INVALID: created_at: 2999-01-01 00:00:00.000 is in the future", "INVALID" },
          { s:persist_generation(valid_row({ created_at = "2999-01-01 00:00:00.000" })) })
        assert.same({ nil, "INVALID: error: must be absent when status is 'completed'", "INVALID" },
          { s:persist_generation(valid_row({ error = "boom" })) })
        assert.is_true(s:flush())
        assert.equal(0, s:stats().failed)
        assert.equal(0, count_rows(s))
        s:close()
      end)
    end)
  end)
end
