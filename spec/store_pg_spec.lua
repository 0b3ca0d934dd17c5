-- spec/store_pg_spec.lua
-- Owns: the PostgreSQL store (csrc/ga_pg*.c, migrations/postgresql/) against a
-- real server (GENAUDIT_PG_URL; `make test` starts one with
-- tools/pg-test-server.sh). The backend-neutral specs come from
-- spec/support/store_suite.lua, as for SQLite; here what only PostgreSQL has:
-- connection failures and passwords, text without NUL bytes, PostgreSQL's
-- types, schemas, read-only stores, several hosts migrating at once, and a
-- server restart in the middle of a run (sync and async: nothing
-- acknowledged is lost). Every test works in a schema of its own.

local genaudit = require("genaudit")
local report = require("genaudit.report")
local pg = require("spec.support.pg")
local store_suite = require("spec.support.store_suite")

local IS_54 = _VERSION == "Lua 5.4" and rawget(_G, "jit") == nil
local it54 = IS_54 and it or pending
local math_type = rawget(math, "type")

local function valid_row(over)
  local row = {
    org_id = "org-1", user_id = "user-1", platform = "linkedin", template_id = "tpl-launch",
    final_system_prompt = "You are a concise copywriter.", final_user_prompt = "Write a launch post.",
    content = "We shipped it!",
    token_usage = { prompt_tokens = 120, completion_tokens = 80, estimated_cost = 0.0015 },
    performance = { total_latency_ms = 1500.5, provider_latency_ms = 1200.25, model_identifier = "m-1" },
    repair_info = { repair_count = 1, repair_types = { "length_exceeded" }, initial_validation_score = 0.5 },
  }
  for k, v in pairs(over or {}) do row[k] = v end
  return row
end

local function count_rows(store)
  return assert(store:query("SELECT count(*) AS n FROM generation_snapshots"))[1].n
end

local function ids_present(store, ids)
  local present = {}
  for _, r in ipairs(assert(store:query("SELECT id FROM generation_snapshots"))) do present[r.id] = true end
  local missing = {}
  for _, id in ipairs(ids) do
    if not present[id] then missing[#missing + 1] = id end
  end
  return missing
end

pg.describe("genaudit.store (postgresql) #postgresql", function()
  teardown(pg.drop_schemas)

  store_suite("the shared store specs", {
    name = "postgresql",
    class = "genaudit.pg_store",
    migrations_dir = "migrations/postgresql",
    nul_ok = false,
    target = pg.schema,
    open = function(schema, opts)
      if opts ~= nil and type(opts) ~= "table" then return genaudit.open(pg.url, opts) end
      return pg.open(schema, opts)
    end,
    detail = function() return pg.url end,
    table_exists = function(store, name)
      return assert(store:query("SELECT to_regclass(?) IS NOT NULL AS e", { name }))[1].e
    end,
    external = function(schema, sql) return (pg.psql(sql, schema)) end,
    sql = {
      epoch = "SELECT CAST(extract(epoch FROM created_at) AS bigint) AS t FROM generation_snapshots WHERE id = ?",
      json_number = function(col, key) return "CAST(" .. col .. " ->> '" .. key .. "' AS double precision)" end,
      json_type = function(col, key) return "json_typeof(" .. col .. " -> '" .. key .. "')" end,
    },
    hostile = {
      "START TRANSACTION", "BEGIN ISOLATION LEVEL SERIALIZABLE", "ABORT", "SET TRANSACTION READ WRITE",
      "SET statement_timeout = 1", "SET LOCAL statement_timeout = 1", "SET SESSION search_path TO public",
      "RESET ALL", "RESET statement_timeout", "SET SESSION AUTHORIZATION DEFAULT", "SET ROLE NONE",
      "PREPARE ga_hostile AS SELECT 1", "DEALLOCATE ALL", "DECLARE ga_c CURSOR WITH HOLD FOR SELECT 1",
      "CLOSE ALL", "LISTEN ga_hostile", "UNLISTEN *", "NOTIFY ga_hostile", "DISCARD ALL",
      "LOCK TABLE generation_snapshots", "PREPARE TRANSACTION 'ga_hostile'", "COMMIT PREPARED 'ga_hostile'",
      "CHECKPOINT", "VACUUM", "ANALYZE", "COPY generation_snapshots TO STDOUT", "DO $$ BEGIN END $$",
      "CREATE TEMP TABLE t (x int)", "DELETE FROM generation_snapshots", "LOAD 'plpgsql'",
    },
    state = {
      "SHOW statement_timeout", "SHOW lock_timeout", "SHOW search_path", "SHOW default_transaction_read_only",
      "SHOW TimeZone", "SELECT current_user AS u, session_user AS s",
      "SELECT count(*) AS n FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory'",
      "SELECT count(*) AS n FROM pg_prepared_statements WHERE name NOT LIKE 'ga\\_%'",
      "SELECT count(*) AS n FROM pg_cursors", "SELECT count(*) AS n FROM pg_listening_channels()",
    },
    poison = "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
      .. " IF NEW.template_id = 'poison' THEN RAISE EXCEPTION 'poisoned row'; END IF; RETURN NEW; END $$;"
      .. " CREATE TRIGGER poison BEFORE INSERT ON generation_snapshots FOR EACH ROW EXECUTE FUNCTION poison()",
    errors = {
      broken_migration = 'MIGRATION: migration 0099_broken failed: syntax error at or near ";"'
        .. " (database left at version 8)",
      syntax = 'SQL: cannot prepare query: syntax error at or near "SELEC"',
      unknown_table = 'SQL: cannot prepare query: relation "nope" does not exist',
      code = "SQL",
      invalid_json = function() return "invalid input syntax for type json" end,
    },
  })

  describe("open()", function()
    it("returns nil, 'CONNECT: ...', 'CONNECT' when nothing listens on the port", function()
      local store, err, code = genaudit.open("postgresql://postgres@127.0.0.1:1/genaudit_test")
      assert.is_nil(store)
      assert.equal("CONNECT", code)
      assert.matches("^CONNECT: cannot connect to postgresql://postgres@127%.0%.0%.1:1/genaudit_test: .*"
        .. "Connection refused", err)
      assert.falsy(err:find("\n", 1, true))
    end)

    it("never puts the URL's password into an error", function()
      for _, url in ipairs({ "postgresql://postgres:s3cr3t-Pw@127.0.0.1:1/genaudit_test",
                             "postgres://postgres@127.0.0.1:1/genaudit_test?password=s3cr3t-Pw",
                             pg.url:gsub("^(postgres%a*://)([^@/:]+)@", "%1%2:s3cr3t-Pw@") .. "_nosuchdb" }) do
        local store, err, code = genaudit.open(url)
        assert.is_nil(store)
        assert.equal("CONNECT", code)
        assert.falsy(err:find("s3cr3t", 1, true), err)
      end
    end)

    it("shows the URL without its password in tostring and store.url", function()
      local url = pg.url:gsub("^(postgres%a*://)([^@/:]+)@", "%1%2:s3cr3t-Pw@")
      local store = assert(genaudit.open(url, { schema = pg.schema() }))
      assert.equal(pg.url, store.url)
      assert.equal("genaudit.store genaudit.pg_store (" .. pg.url .. ")", tostring(store))
      store:close()
    end)

    it("accepts the postgres:// form", function()
      local store = assert(genaudit.open((pg.url:gsub("^postgresql://", "postgres://")), { schema = pg.schema() }))
      assert.equal("postgresql", store.backend)
      assert.equal(8, store:schema_version())
      store:close()
    end)

    it("returns nil, 'OPEN: ...', 'OPEN' for a URL libpq cannot read", function()
      local store, err, code = genaudit.open("postgresql://127.0.0.1:54329/db?nonsense=1")
      assert.is_nil(store)
      assert.same({ "OPEN", 'OPEN: invalid PostgreSQL URL postgresql://127.0.0.1:54329/db?nonsense=1: invalid URI query'
        .. ' parameter: "nonsense"' }, { code, err })
    end)

    it("creates the schema it is given and keeps schemas apart", function()
      local a, b = pg.schema(), pg.schema()
      local sa, sb = assert(pg.open(a)), assert(pg.open(b))
      assert(sa:persist_generation(valid_row()))
      assert.same({ 1, 0 }, { count_rows(sa), count_rows(sb) })
      sa:close()
      sb:close()
    end)

    it("raises on a bad schema option", function()
      assert.has_error(function() genaudit.open(pg.url, { schema = "" }) end)
      assert.has_error(function() genaudit.open(pg.url, { reconnect_timeout = -1 }) end)
    end)

    it("migrates one new schema from several processes at once", function()
      local schema = pg.schema()
      local cmd = {}
      local outs = {}
      for i = 1, 5 do
        outs[i] = os.tmpname()
        cmd[#cmd + 1] = ("LUA_PATH='./lua/?.lua;./lua/?/init.lua;;' LUA_CPATH='./build/lua54/?.so;;' lua5.4 -e "
          .. "'local s, e = require(\"genaudit\").open(%q, { schema = %q }); io.write(s and s:schema_version() or e)'"
          .. " > %s 2>&1 &"):format(pg.url, schema, outs[i])
      end
      cmd[#cmd + 1] = "wait"
      assert(os.execute(table.concat(cmd, "\n")))
      local got = {}
      for i = 1, 5 do
        local f = assert(io.open(outs[i]))
        got[i] = f:read("*a")
        f:close()
        os.remove(outs[i])
      end
      assert.same({ "8", "8", "8", "8", "8" }, got)
    end)
  end)

  describe("text PostgreSQL cannot hold", function()
    local store
    before_each(function() store = assert(pg.open(pg.schema())) end)
    after_each(function() store:close() end)

    local cases = {
      { "a prompt holds a NUL byte", { final_user_prompt = "a\0b" },
        "final_user_prompt: PostgreSQL text cannot contain NUL bytes" },
      { "the content holds a NUL byte", { content = "\0" }, "content: PostgreSQL text cannot contain NUL bytes" },
      { "a repair log holds a NUL byte", { repair_info = { repair_log = "x\0y" } },
        "repair_metrics: PostgreSQL text cannot contain NUL bytes" },
      { "a prompt is not UTF-8", { final_system_prompt = "caf\233" },
        "final_system_prompt: PostgreSQL text must be valid UTF-8" },
      { "a prompt holds a UTF-16 surrogate", { final_system_prompt = "\237\160\128" },
        "final_system_prompt: PostgreSQL text must be valid UTF-8" },
      { "request_params hold a NUL byte", { request_params = { stop = "\0" } },
        "request_params: PostgreSQL text cannot contain NUL bytes" },
    }
    for _, case in ipairs(cases) do
      it("returns nil, 'INVALID: ...', 'INVALID' and writes nothing when " .. case[1], function()
        assert.same({ nil, "INVALID: " .. case[3], "INVALID" }, { store:persist_generation(valid_row(case[2])) })
        assert.equal(0, count_rows(store))
      end)
    end

    it("refuses such a row before queueing it in async mode", function()
      assert(store:start_async())
      assert.same({ nil, "INVALID: final_user_prompt: PostgreSQL text cannot contain NUL bytes", "INVALID" },
        { store:persist_generation(valid_row({ final_user_prompt = "\0" })) })
      assert.equal(0, store:stats().queued)
    end)

    it("returns nil, 'BIND: ...', 'BIND' for a parameter with a NUL byte", function()
      assert.same({ nil, "BIND: parameter 1: cannot bind a PostgreSQL text cannot contain NUL bytes", "BIND" },
        { store:query("SELECT ? AS s", { "a\0b" }) })
    end)
  end)

  describe("query() types", function()
    local store
    before_each(function() store = assert(pg.open(pg.schema())) end)
    after_each(function() store:close() end)

    it("returns booleans as booleans", function()
      assert.same({ { t = true, f = false, n = true } },
        store:query("SELECT ? AS t, 1 = 2 AS f, ?1 IS NULL AS n", { true }) and
        store:query("SELECT true AS t, 1 = 2 AS f, CAST(? AS text) IS NULL AS n", { genaudit.null }))
    end)

    it("returns bytea as bytes", function()
      assert.same({ { b = "\0\255a" } }, store:query("SELECT CAST('\\x00ff61' AS bytea) AS b"))
    end)

    it("returns timestamps as UTC text to the millisecond", function()
      local row = store:query("SELECT CAST('2024-02-29 23:59:58.12+02' AS timestamptz) AS a,"
        .. " CAST('2024-01-01 00:00:00' AS timestamp) AS b, now() AS c")[1]
      assert.same({ "2024-02-29 21:59:58.120", "2024-01-01 00:00:00.000" }, { row.a, row.b })
      assert.matches("^%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d%.%d%d%d$", row.c)
    end)

    it54("returns numeric as an integer when it has no fraction, else as a float #lua54", function()
      local row = store:query("SELECT CAST(12345678901234 AS numeric) AS i, CAST(1.25 AS numeric) AS f,"
        .. " sum(x) AS s, avg(x) AS a FROM (VALUES (1), (2)) v(x)")[1]
      assert.same({ 12345678901234, "integer", 1.25, "float", 3, "integer", 1.5, "float" },
        { row.i, math_type(row.i), row.f, math_type(row.f), row.s, math_type(row.s), row.a, math_type(row.a) })
    end)

    it("returns json columns and other types as text", function()
      assert.same({ { j = '{"a": [1, 2]}', d = "2024-05-06", u = "{1,2}" } },
        store:query("SELECT CAST('{\"a\": [1, 2]}' AS json) AS j, DATE '2024-05-06' AS d, ARRAY[1, 2] AS u"))
    end)

    it("binds strings where PostgreSQL must guess their type, as text", function()
      assert.same({ { n = false, s = "x" } }, store:query("SELECT ?1 IS NULL AS n, ?1 AS s", { "x" }))
    end)

    it("takes PostgreSQL's own $1 placeholders and :: casts", function()
      assert.same({ { a = 6, b = "7" } }, store:query("SELECT $1 * 2 AS a, $2::text AS b", { 3, 7 }))
    end)

    it("leaves dollar-quoted text and E'' escapes alone", function()
      assert.same({ { a = "? :x $1", b = "it's ?" } },
        store:query("SELECT $q$? :x $1$q$ AS a, E'it\\'s ?' AS b"))
    end)

    it("runs report.explain() against PostgreSQL's EXPLAIN", function()
      local plan = assert(report.explain(store, "cost", { by = "template", template = "t" }))
      assert.truthy(plan:find("generation_snapshots", 1, true), plan)
    end)
  end)

  describe("another client", function()
    it("may neither TRUNCATE nor DELETE (a purge is the retention path), nor UPDATE", function()
      local schema = pg.schema()
      local store = assert(pg.open(schema))
      assert(store:persist_generation(valid_row()))
      local out, ok = pg.psql("UPDATE generation_snapshots SET content = 'x'", schema)
      assert.is_false(not not ok)
      assert.truthy(out:find("generation_snapshots rows are immutable", 1, true), out)
      out, ok = pg.psql("TRUNCATE generation_snapshots", schema)
      assert.is_false(not not ok)
      assert.truthy(out:find("generation_snapshots rows are not deleted", 1, true), out)
      out, ok = pg.psql("DELETE FROM generation_snapshots", schema)
      assert.is_false(not not ok)
      assert.truthy(out:find("generation_snapshots rows are not deleted", 1, true), out)
      assert.equal(1, count_rows(store))
      store:close()
    end)
  end)

  describe("a read-only store", function()
    it("queries but does not persist or migrate", function()
      local schema = pg.schema()
      assert(pg.open(schema)):close()
      local store = assert(pg.open(schema, { readonly = true }))
      assert.same({ nil, "READONLY: store was opened read-only", "READONLY" },
        { store:persist_generation(valid_row()) })
      assert.equal(0, count_rows(store))
      store:close()
    end)
  end)

  describe("each()", function()
    it("returns BUSY for a persist to the same store from the function", function()
      local store = assert(pg.open(pg.schema()))
      assert(store:persist_generation(valid_row()))
      local got
      assert(store:each("SELECT id FROM generation_snapshots", {}, function()
        got = { store:persist_generation(valid_row()) }
      end))
      assert.same({ nil, "BUSY: cannot persist while each() reads from this store (use another store object)",
        "BUSY" }, got)
      assert(store:persist_generation(valid_row()))
      store:close()
    end)
  end)

  describe("a server restart in the middle of a run", function()
    local restartable = pg.url and not pg.skip and pg.restartable()
    local it_restart = restartable and it or pending

    it_restart("loses no acknowledged snapshot in sync mode, and reconnects", function()
      local store = assert(pg.open(pg.schema(), { reconnect_timeout = 10000 }))
      local ids = {}
      for i = 1, 20 do ids[#ids + 1] = assert(store:persist_generation(valid_row({ user_id = i }))) end
      pg.restart()
      for i = 21, 40 do
        local id, err, code = store:persist_generation(valid_row({ user_id = i }))
        if id then ids[#ids + 1] = id else assert.equal("CONNECT", code, err) end
      end
      assert.is_true(#ids >= 39, #ids .. " of 40 persisted")
      assert.same({}, ids_present(store, ids))
      assert.equal(#ids, count_rows(store))
      assert.is_true(store:stats().reconnects >= 1)
      store:close()
    end)

    it_restart("returns no id for a row it could not commit while the server restarts under load", function()
      local store = assert(pg.open(pg.schema(), { reconnect_timeout = 200 }))
      local ids, failures = {}, 0
      os.execute("(sleep 0.2; sh tools/pg-test-server.sh restart) >/dev/null 2>&1 &")
      local deadline = os.time() + 3
      local i = 0
      while os.time() < deadline do
        i = i + 1
        local id, err, code = store:persist_generation(valid_row({ user_id = i }))
        if id then ids[#ids + 1] = id else
          failures = failures + 1
          assert.equal("CONNECT", code, err)
        end
      end
      os.execute("sleep 1")
      local check = assert(pg.open(store._opts.schema))
      assert.same({}, ids_present(check, ids))
      -- a row whose commit was sent but never confirmed may be there without an id returned
      local n = count_rows(check)
      assert.is_true(n >= #ids and n <= #ids + failures, n .. " rows, " .. #ids .. " ids, " .. failures .. " failures")
      check:close()
      store:close()
    end)

    it_restart("reconnects for a query after the restart", function()
      local store = assert(pg.open(pg.schema(), { reconnect_timeout = 10000 }))
      assert(store:persist_generation(valid_row()))
      pg.restart()
      assert.equal(1, count_rows(store))
      store:close()
    end)

    it_restart("async: flush() after the restart returns true and every row is there", function()
      local store = assert(pg.open(pg.schema(), { async = { queue = 10000, batch = 50 } }))
      local ids = {}
      for i = 1, 200 do ids[#ids + 1] = assert(store:persist_generation(valid_row({ user_id = i }))) end
      assert.is_true(store:flush())
      pg.restart()
      for i = 201, 400 do ids[#ids + 1] = assert(store:persist_generation(valid_row({ user_id = i }))) end
      assert.is_true(store:flush(30000))
      local st = store:stats()
      assert.same({ 400, 400, 0 }, { st.queued, st.written, st.failed })
      assert.same({}, ids_present(store, ids))
      assert.equal(400, count_rows(store))
      store:close()
    end)

    it_restart("async: rows queued while the server restarts are all written", function()
      local store = assert(pg.open(pg.schema(), { async = { queue = 100000, batch = 20 } }))
      local ids = {}
      os.execute("(sleep 0.1; sh tools/pg-test-server.sh restart) >/dev/null 2>&1 &")
      local deadline = os.time() + 2
      local i = 0
      while os.time() < deadline do
        i = i + 1
        ids[#ids + 1] = assert(store:persist_generation(valid_row({ user_id = i })))
        if i % 50 == 0 then os.execute("sleep 0.01") end
      end
      assert.is_true(store:flush(30000))
      assert.equal(#ids, store:stats().written)
      assert.same({}, ids_present(store, ids))
      assert.equal(#ids, count_rows(store))
      store:close()
    end)
  end)

  describe("query() and each() leave nothing behind", function()
    local MIGRATION_LOCK = "7450482329108636020" -- ga_pg_migrate.c: the one migration lock

    local function advisory_locks(store)
      local pid = assert(store:query("SELECT pg_backend_pid() AS p"))[1].p
      local out = assert(pg.psql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = " .. pid))
      return tonumber((out:gsub("%s+", "")))
    end

    it("releases a session advisory lock a query took: another open() does not wait for it", function()
      local schema = pg.schema()
      local store = assert(pg.open(schema))
      assert.same({ { pg_advisory_lock = "" } }, store:query("SELECT pg_advisory_lock(" .. MIGRATION_LOCK .. ")"))
      assert.equal(0, advisory_locks(store)) -- checked first: open() below would wait forever
      local other = assert(pg.open(schema))
      assert.equal(8, other:schema_version())
      other:close()
      store:close()
    end)

    it("releases a session advisory lock taken inside each(), and inside a query within each()", function()
      local store = assert(pg.open(pg.schema()))
      local inner
      assert.equal(1, store:each("SELECT pg_advisory_lock(" .. MIGRATION_LOCK .. ") AS l", nil, function()
        inner = store:query("SELECT pg_advisory_lock(42) AS l")
      end))
      assert.equal(1, #inner)
      assert.equal(0, advisory_locks(store))
      store:close()
    end)

    it("undoes set_config() of a query: statement_timeout and search_path stay as they were", function()
      local store = assert(pg.open(pg.schema()))
      local before = { store:query("SHOW statement_timeout")[1], store:query("SHOW search_path")[1] }
      assert(store:query("SELECT set_config('statement_timeout', '1', false) AS a,"
        .. " set_config('search_path', 'pg_catalog', false) AS b"))
      assert.same(before, { store:query("SHOW statement_timeout")[1], store:query("SHOW search_path")[1] })
      assert(store:persist_generation(valid_row()))
      store:close()
    end)
  end)

  describe("rows the server would refuse, refused before an id is returned", function()
    local big = string.rep("x", 1999) .. "\226\130\172" -- 2002 bytes: over what an indexed column holds
    local cases = {
      { "an org_id over 2000 bytes (btree index entry)", { org_id = big },
        "INVALID: org_id: 2002 bytes are over the 2000 an indexed column holds" },
      { "a template_id over 2000 bytes (btree index entry)", { template_id = big },
        "INVALID: template_id: 2002 bytes are over the 2000 an indexed column holds" },
      { "a repair_count over the integer column's range (now first refused as implausible, on both stores)",
        { repair_info = { repair_count = 2147483648, repair_types = {} } },
        "INVALID: repair_info.repair_count: 2147483648 repairs of one draft are not plausible (at most 1000)" },
    }
    for _, mode in ipairs({ "sync", "async" }) do
      for _, c in ipairs(cases) do
        it(mode .. ": " .. c[1], function()
          local store = assert(pg.open(pg.schema(), { async = mode == "async" }))
          assert.same({ nil, c[3], "INVALID" }, { store:persist_generation(valid_row(c[2])) })
          local id = assert(store:persist_generation(valid_row()))
          assert.is_true(store:flush())
          assert.equal(0, store:stats().failed)
          assert.same({ 1, id }, { count_rows(store), store:query("SELECT id FROM generation_snapshots")[1].id })
          store:close()
        end)
      end
    end

    it("still stores the largest plausible repair_count and a long text in a column without index", function()
      local store = assert(pg.open(pg.schema(), { async = true }))
      local long = string.rep("y", 100000)
      local id = assert(store:persist_generation(valid_row({ platform = long,
        repair_info = { repair_count = 1000, repair_types = {} } })))
      assert.is_true(store:flush())
      local row = store:query("SELECT platform, repair_count FROM generation_snapshots WHERE id = ?", { id })[1]
      assert.same({ long, 1000 }, { row.platform, row.repair_count })
      store:close()
    end)
  end)

  describe("async mode", function()
    it("counts a row the server refuses as failed, reports it, and writes the others", function()
      local schema = pg.schema()
      local store = assert(pg.open(schema, { async = true }))
      local out, ok = pg.psql("CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        .. " IF NEW.template_id = 'poison' THEN RAISE EXCEPTION 'poisoned row'; END IF; RETURN NEW; END $$;"
        .. " CREATE TRIGGER poison BEFORE INSERT ON generation_snapshots FOR EACH ROW EXECUTE FUNCTION poison()",
        schema)
      assert.truthy(ok, out)
      assert(store:persist_generation(valid_row()))
      assert(store:persist_generation(valid_row({ template_id = "poison" })))
      assert(store:persist_generation(valid_row()))
      assert.same({ nil, "WRITE_FAILED: 1 row(s) could not be written; last error: row refused: poisoned row",
        "WRITE_FAILED" }, { store:flush() })
      local st = store:stats()
      assert.same({ 2, 1 }, { st.written, st.failed })
      assert.equal(2, count_rows(store))
      store:close()
    end)

    it("writes a batch in one COPY", function()
      local store = assert(pg.open(pg.schema(), { async = { queue = 1000, batch = 1000 } }))
      for i = 1, 500 do assert(store:persist_generation(valid_row({ user_id = i }))) end
      assert.is_true(store:flush())
      local st = store:stats()
      assert.equal(500, st.written)
      assert.is_true(st.batches <= 500 and st.batches >= 1)
      store:close()
    end)

    it("returns ASYNC when the writer cannot find the table", function()
      local store = assert(pg.open(pg.schema(), { migrate = false }))
      local ok, err, code = store:start_async()
      assert.is_nil(ok)
      assert.equal("ASYNC", code)
      assert.matches("^ASYNC: writer cannot prepare insert %(is the store migrated%?%): relation", err)
      store:close()
    end)
  end)
end)
