-- spec/tamper_spec.lua
-- Issue 14's tamper suite, on both stores: rows written through the real
-- store API (a sync store, an async writer and two other processes, each its
-- own chain), then changed the way an attacker with SQL access would change
-- them -- with the sqlite3 command-line tool or psql, triggers dropped and put
-- back (or, on PostgreSQL, switched off with session_replication_role) -- and
-- genaudit.audit's verify() must catch every change and name the row
-- (where a row can be named) and what is wrong. On SQLite the independent
-- verifier tools/verify_chain.py (Python's hashlib, no genaudit code) must
-- name the same row. Also: an untouched and a purged store verify clean;
-- the triggers refuse every change but a purge; checkpoints are signed and
-- a checkpoint signed with another key is refused; verification since a
-- checkpoint reads only the newer rows and still catches an edit among them;
-- and `genaudit keygen / checkpoint / verify / purge` (pending until the CLI
-- has them).
local genaudit = require("genaudit")
local audit = require("genaudit.audit")
local core = require("genaudit.core")
local pg = require("spec.support.pg")
local tmp = require("spec.support.tmp")
local util = require("spec.support.util")
local q, cli = util.q, util.cli

local ZERO = ("0"):rep(64)
local FORGED_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
-- one byte of a prompt edited (the row's id follows)
local EDIT_BYTE = "UPDATE generation_snapshots SET final_user_prompt = 'X' || substr(final_user_prompt, 2) WHERE id = "

-- The stored (not generated) columns of generation_snapshots at schema 8.
local STORED = { "id", "org_id", "user_id", "platform", "template_id", "template_version", "status", "content",
  "error", "created_at", "final_system_prompt", "final_user_prompt", "token_metrics", "performance_metrics",
  "repair_metrics", "request_params", "replay_of", "drafts", "final_system_prompt_sha256",
  "final_user_prompt_sha256", "content_sha256", "drafts_sha256", "chain_id", "chain_seq", "prev_hash",
  "record_hash", "purged_at" }

-- Runs a shell command; returns its output (stdout and stderr) and whether it exited 0.
local function sh(cmd) return pg.sh(cmd) end

-- A SQL literal (text), or NULL.
local function lit(v)
  if v == nil then return "NULL" end
  return "'" .. tostring(v):gsub("'", "''") .. "'"
end

-- Does bin/genaudit have the tamper-evidence commands yet?
local HAS_CLI = (function()
  local _, _, rc = cli("verify --help")
  return rc == 0
end)()

local function row(tag, i, over)
  local r = {
    org_id = "org-" .. tag, user_id = "user-" .. i, platform = "linkedin", template_id = "launch",
    template_version = "3",
    final_system_prompt = "You are a careful writer (" .. tag .. " " .. i .. ").",
    final_user_prompt = "Write post " .. i .. " for " .. tag .. ", caf\195\169.",
    content = "Post " .. i .. " of " .. tag .. ".",
    drafts = { "draft one of " .. tag .. " " .. i, "draft two" },
    token_usage = { prompt_tokens = 100 + i, completion_tokens = 20 + i, estimated_cost = 0.0015 },
    performance = { total_latency_ms = 1500.5, provider_latency_ms = 1200.25, model_identifier = "m" },
    repair_info = { repair_count = 0 },
  }
  for k, v in pairs(over or {}) do r[k] = v end
  return r
end

-- Another process writing n rows with its own store (sync or async) on url;
-- prints nothing but failures.
local CHILD = [[
local g = require("genaudit")
local url, mode, tag, n = ...
local s = assert(g.open(url, { async = mode == "async" and { batch = 2 } or nil }))
for i = 1, tonumber(n) do
  assert(s:persist_generation{ org_id = tag, user_id = "u" .. i, platform = "x", template_id = "launch",
    final_system_prompt = "system " .. tag, final_user_prompt = "user " .. tag .. " " .. i, content = "c" .. i,
    token_usage = { prompt_tokens = 1, completion_tokens = i, estimated_cost = 0.000001 * i },
    performance = { total_latency_ms = 1, provider_latency_ms = 1 }, repair_info = {} })
end
assert(s:flush())
s:close()
]]

-- suite(name, B, describe_fn): B = { name, target(dir) -> t, open(t, opts),
-- url(t) (genaudit.open and --db), sql(t, sql) -> output, ok (another
-- client), unguarded(t, sql) -> output, ok (sql with the snapshot and chain
-- triggers out of the way, then back), trigger_sql(t, name) (its definition),
-- redo_trigger(t, name, sql_between) -> output, ok (DROP, sql_between, CREATE
-- again from the saved definition) }.
local function suite(name, B, describe_fn)
  describe_fn(name, function()
    local dir, child
    local n_files = 0
    local open_stores = {}

    setup(function()
      dir = tmp.dir()
      child = dir .. "/child.lua"
      tmp.write(child, CHILD)
    end)
    teardown(function()
      tmp.rm(dir)
      pg.drop_schemas()
    end)
    after_each(function()
      for _, s in ipairs(open_stores) do s:close() end
      open_stores = {}
    end)

    local function open(t, opts)
      local s = assert(B.open(t, opts))
      open_stores[#open_stores + 1] = s
      return s
    end

    -- A fresh store with 4 chains: the sync store's (4 rows, it stays open
    -- as ctx.store), an async writer's (4 rows), and two other processes'
    -- (sync 3 rows, async 3 rows). ctx.chains[cid] = ids in chain order;
    -- ctx.sync, ctx.async: those chains' ids.
    local function populate()
      local t = B.target(dir)
      local first = {}
      -- the async store first, closed before the sync one opens: opening a
      -- second SQLite store on a file this process holds open drops the
      -- process's locks on it (ga_store.c creates the file with open() and
      -- close(): see the pending spec in spec/concurrency_spec.lua)
      local a = assert(B.open(t, { async = { batch = 2 } }))
      for i = 1, 4 do
        local id = assert(a:persist_generation(row("async", i)))
        first.async = first.async or id
      end
      assert(a:flush())
      a:close()
      local store = open(t)
      for i = 1, 4 do
        local id = assert(store:persist_generation(row("sync", i)))
        first.sync = first.sync or id
      end
      local env = "LUA_PATH='./lua/?.lua;./lua/?/init.lua;;' LUA_CPATH='./build/lua54/?.so;;' "
      local out, ok = sh(env .. "lua5.4 " .. q(child) .. " " .. q(B.url(t)) .. " sync p1 3 & "
        .. env .. "lua5.4 " .. q(child) .. " " .. q(B.url(t)) .. " async p2 3 & wait")
      assert(ok and out == "", out)
      local ctx = { t = t, store = store, chains = {}, cids = {} }
      for _, r in ipairs(assert(store:query("SELECT id, chain_id, chain_seq FROM generation_snapshots"
        .. " ORDER BY chain_id, chain_seq"))) do
        if not ctx.chains[r.chain_id] then
          ctx.chains[r.chain_id] = {}
          ctx.cids[#ctx.cids + 1] = r.chain_id
        end
        local c = ctx.chains[r.chain_id]
        c[#c + 1] = r.id
        assert.equal(#c, tonumber(r.chain_seq))
        if r.id == first.sync then ctx.sync_cid = r.chain_id end
        if r.id == first.async then ctx.async_cid = r.chain_id end
      end
      assert.equal(4, #ctx.cids)
      ctx.sync, ctx.async = ctx.chains[ctx.sync_cid], ctx.chains[ctx.async_cid]
      return ctx
    end

    local function get(ctx, id)
      return assert(ctx.store:query("SELECT * FROM generation_snapshots WHERE id = ?", { id }))[1]
    end

    local function must(out, ok) assert(ok, out) return out end

    -- The first problem verify() finds (and the report), asserting there is one.
    local function first_problem(ctx, opts)
      local r = assert(ctx.store:verify(opts))
      assert.is_false(r.ok, "verify passed")
      return r.problems[1], r
    end

    -- tools/verify_chain.py's verdict on an SQLite store: "ok N" or the id it names ("-": none).
    local function python(ctx)
      local out = sh("env -u LD_PRELOAD python3 tools/verify_chain.py " .. q(ctx.t))
      return out:match("^ok (%d+)\n$") and "ok" or out:match("^bad (%S+): ") or out
    end

    -- Both verifiers name the row (nil: none can be named) and verify()'s
    -- first problem matches `what` (a Lua pattern).
    -- `genaudit verify` (with the checkpoint files checkpoint() wrote, as
    -- opts says): stdout, stderr, exit code.
    local function cli_verify(ctx, opts)
      local args = "verify"
      if opts and opts.checkpoints then args = args .. " --checkpoint " .. q(ctx.cp_file) end
      if opts and opts.since then args = args .. " --since-checkpoint " .. q(ctx.cp_file) end
      if opts then args = args .. " --pubkey " .. q(ctx.pk_file) end
      return cli("--db " .. q(B.url(ctx.t)) .. " " .. args)
    end

    -- Both verifiers (and `genaudit verify`, once the CLI has it) name the
    -- row (nil: none can be named), and verify()'s first problem matches
    -- `what` (a Lua pattern).
    local function caught(ctx, id, what, opts)
      local p, r = first_problem(ctx, opts)
      assert.equal(id, p.id, p.what)
      assert.matches(what, p.what)
      if B.name == "sqlite" and not opts then assert.equal(id or "-", python(ctx)) end
      if HAS_CLI then
        local out, err, rc = cli_verify(ctx, opts)
        assert.same({ 1, "" }, { rc, out })
        local line = "genaudit: TAMPERED: " .. (id and ("row " .. id .. ": ") or "") .. p.what
        assert.equal(line, err:sub(1, #line), err)
        local rest = err:sub(#line + 1)
        assert.truthy(rest == "\n" or (#r.problems > 1 and rest:match("^ %(and %d+ more problems?%)\n$")), err)
      end
      return p, r
    end

    -- Purges every row written so far: a cutoff may not be in the future, so
    -- it waits for the next second and cuts there.
    local function purge_all(ctx)
      os.execute("sleep 1.1")
      return assert(ctx.store:purge(os.date("!%Y-%m-%d %H:%M:%S")))
    end

    local function clean(ctx, opts)
      local r = assert(ctx.store:verify(opts))
      assert.same({}, r.problems)
      assert.is_true(r.ok)
      if B.name == "sqlite" and not opts then assert.equal("ok", python(ctx)) end
      return r
    end

    local function keys()
      local sk, pk = core.ed25519_keygen()
      return sk, pk
    end

    -- A signed checkpoint of the store, read back: its body.
    local function checkpoint(ctx, sk, pk)
      local text = assert(audit.checkpoint(ctx.store, sk))
      n_files = n_files + 1
      ctx.cp_file = dir .. "/" .. B.name .. "-" .. n_files .. ".checkpoint"
      ctx.pk_file = ctx.cp_file .. ".pub"
      tmp.write(ctx.cp_file, text)
      tmp.write(ctx.pk_file, pk)
      return assert(audit.read_checkpoint(text, pk)), text
    end

    -- Recomputes prev_hash and record_hash of chain `cid` from position
    -- `from` on, as an attacker with genaudit's code (not its key) would,
    -- after `edit` (SQL) changed a row; the fields are read back as stored.
    local function rewrite_chain(ctx, cid, from, edit)
      must(B.unguarded(ctx.t, edit))
      local rows = assert(ctx.store:query("SELECT * FROM generation_snapshots WHERE chain_id = ? ORDER BY chain_seq",
        { cid }))
      local prev = from > 1 and rows[from - 1].record_hash or ZERO
      local sql = {}
      for i = from, #rows do
        local r, f = rows[i], {}
        for _, d in ipairs(core.record_fields()) do
          if d.payload then f[d.name .. "_sha256"] = r[d.name .. "_sha256"] else f[d.name] = r[d.name] end
        end
        f.prev_hash = prev
        f.chain_seq = tostring(r.chain_seq)
        local h = core.record_hash(f)
        sql[#sql + 1] = ("UPDATE generation_snapshots SET prev_hash = %s, record_hash = %s WHERE id = %s;")
          :format(lit(prev), lit(h), lit(r.id))
        prev = h
      end
      must(B.unguarded(ctx.t, table.concat(sql, "\n")))
    end

    describe("an untouched store", function()
      it("verifies clean: every row of every chain, all writers' chains registered", function()
        local ctx = populate()
        local r = clean(ctx)
        assert.same({ 14, 4, 0, 0 }, { r.rows, r.chains, r.legacy_rows, r.purged })
        assert.same({ { n = 4 } }, ctx.store:query("SELECT count(*) AS n FROM chains"))
        -- the seal as documented: digests of the payloads, positions, links
        local x = get(ctx, ctx.sync[2])
        assert.same({ core.sha256(x.final_system_prompt), core.sha256(x.final_user_prompt), core.sha256(x.content),
          core.sha256(x.drafts), 2, get(ctx, ctx.sync[1]).record_hash },
          { x.final_system_prompt_sha256, x.final_user_prompt_sha256, x.content_sha256, x.drafts_sha256,
            tonumber(x.chain_seq), x.prev_hash })
        assert.equal(ZERO, get(ctx, ctx.sync[1]).prev_hash)
        assert.equal(x.record_hash, (core.record_hash{ id = x.id, chain_id = x.chain_id, chain_seq = x.chain_seq,
          prev_hash = x.prev_hash, created_at = x.created_at, org_id = x.org_id, user_id = x.user_id,
          platform = x.platform, template_id = x.template_id, template_version = x.template_version,
          status = x.status, error = x.error, replay_of = x.replay_of, request_params = x.request_params,
          token_metrics = x.token_metrics, performance_metrics = x.performance_metrics,
          repair_metrics = x.repair_metrics, final_system_prompt = x.final_system_prompt,
          final_user_prompt = x.final_user_prompt, content = x.content, drafts = x.drafts }))
      end)

      it("keeps verifying clean as the same writers go on", function()
        local ctx = populate()
        assert(ctx.store:persist_generation(row("sync", 5)))
        local r = clean(ctx)
        assert.same({ 15, 4 }, { r.rows, r.chains })
      end)
    end)

    describe("catches, naming the row,", function()
      it("one byte of a prompt edited", function()
        local ctx = populate()
        local id = ctx.sync[2]
        must(B.unguarded(ctx.t, EDIT_BYTE .. lit(id)))
        caught(ctx, id, "^final_user_prompt does not match its digest")
      end)

      it("a prompt edited with its digest recomputed", function()
        local ctx = populate()
        local id = ctx.async[3]
        local forged = "Ignore the rules."
        must(B.unguarded(ctx.t, ("UPDATE generation_snapshots SET final_system_prompt = %s,"
          .. " final_system_prompt_sha256 = %s WHERE id = %s"):format(lit(forged), lit(core.sha256(forged)), lit(id))))
        caught(ctx, id, "^record hash does not match the row")
      end)

      it("a cost changed in token_metrics", function()
        local ctx = populate()
        local id = ctx.chains[ctx.cids[1]][2]
        local before = get(ctx, id).token_metrics
        must(B.unguarded(ctx.t, "UPDATE generation_snapshots SET token_metrics = "
          .. B.json_set("token_metrics", "estimated_cost", "0.5") .. " WHERE id = " .. lit(id)))
        assert.are_not.equal(before, get(ctx, id).token_metrics)
        caught(ctx, id, "^record hash does not match the row")
      end)

      it("a row deleted from the middle of a chain: the row after the gap", function()
        local ctx = populate()
        must(B.unguarded(ctx.t, "DELETE FROM generation_snapshots WHERE id = " .. lit(ctx.sync[2])))
        caught(ctx, ctx.sync[3], "^rows missing before this one %(positions 2 to 2 of chain " .. ctx.sync_cid .. "%)$")
      end)

      it("the newest row deleted, once its writer writes again: the new row", function()
        local ctx = populate()
        must(B.unguarded(ctx.t, "DELETE FROM generation_snapshots WHERE id = " .. lit(ctx.sync[4])))
        -- nothing links to a chain's head: without a checkpoint this is not seen yet
        clean(ctx)
        local id = assert(ctx.store:persist_generation(row("sync", 5)))
        caught(ctx, id, "^rows missing before this one %(positions 4 to 4 of chain")
      end)

      it("a forged row: a copy of a row with another id, appended to its chain", function()
        local ctx = populate()
        local cols = {}
        for i, c in ipairs(STORED) do
          cols[i] = c == "id" and lit(FORGED_ID) or c == "chain_seq" and "chain_seq + 10" or c
        end
        must(B.unguarded(ctx.t, "INSERT INTO generation_snapshots (" .. table.concat(STORED, ", ") .. ") SELECT "
          .. table.concat(cols, ", ") .. " FROM generation_snapshots WHERE id = " .. lit(ctx.sync[4])))
        caught(ctx, FORGED_ID, "^rows missing before this one")
      end)

      it("a forged row: a copy of a row with another id at the same position (unique index dropped)", function()
        local ctx = populate()
        local cols = {}
        for i, c in ipairs(STORED) do cols[i] = c == "id" and lit(FORGED_ID) or c end
        must(B.unguarded(ctx.t, "DROP INDEX snapshots_chain; INSERT INTO generation_snapshots ("
          .. table.concat(STORED, ", ") .. ") SELECT " .. table.concat(cols, ", ")
          .. " FROM generation_snapshots WHERE id = " .. lit(ctx.sync[2])))
        local p = caught(ctx, FORGED_ID, ".")
        assert.truthy(p.what:find("record hash does not match", 1, true) or p.what:find("repeated", 1, true), p.what)
      end)

      it("a forged unsealed row (chain fields NULL) slipped in around the trigger: no row to name", function()
        local ctx = populate()
        local sql = "INSERT INTO generation_snapshots (id, org_id, user_id, platform, template_id, content)"
          .. " VALUES (" .. lit(FORGED_ID) .. ", 'o', 'u', 'p', 't', 'a generation that never happened')"
        local out, ok = B.sql(ctx.t, sql)
        assert.is_false(ok)
        assert.truthy(out:find("generation_snapshots rows must be sealed", 1, true), out)
        must(B.unguarded(ctx.t, sql))
        local _, r = caught(ctx, nil, "^1 rows without a seal, where 0 were there when the chain began")
        assert.equal(1, r.legacy_rows)
      end)

      it("two rows' contents swapped, digests and all: the first of them", function()
        local ctx = populate()
        local a, b = get(ctx, ctx.sync[2]), get(ctx, ctx.sync[3])
        local set = "UPDATE generation_snapshots SET content = %s, content_sha256 = %s WHERE id = %s;"
        must(B.unguarded(ctx.t, set:format(lit(b.content), lit(b.content_sha256), lit(a.id))
          .. set:format(lit(a.content), lit(a.content_sha256), lit(b.id))))
        caught(ctx, a.id, "^record hash does not match the row")
      end)

      it("two rows swapped in their chain: the one moved forward", function()
        local ctx = populate()
        local set = "UPDATE generation_snapshots SET chain_seq = %d WHERE id = %s;"
        must(B.unguarded(ctx.t, set:format(100, lit(ctx.sync[2])) .. set:format(2, lit(ctx.sync[3]))
          .. set:format(3, lit(ctx.sync[2]))))
        caught(ctx, ctx.sync[3], "^prev_hash does not link to the row before it")
      end)

      it("an edit with the trigger dropped and re-created around it", function()
        local ctx = populate()
        local id = ctx.async[2]
        local before = B.trigger_sql(ctx.t, "generation_snapshots_immutable")
        must(B.redo_trigger(ctx.t, "generation_snapshots_immutable",
          "UPDATE generation_snapshots SET user_id = 'someone-else' WHERE id = " .. lit(id)))
        -- the trigger is back as it was, refusing as before
        assert.equal(before, B.trigger_sql(ctx.t, "generation_snapshots_immutable"))
        local out, ok = B.sql(ctx.t, "UPDATE generation_snapshots SET user_id = 'x' WHERE id = " .. lit(id))
        assert.is_false(ok)
        assert.truthy(out:find("immutable", 1, true), out)
        assert.equal("someone-else", get(ctx, id).user_id)
        caught(ctx, id, "^record hash does not match the row")
      end)

      it("a chain's rows deleted, its registration kept: the chain", function()
        local ctx = populate()
        must(B.unguarded(ctx.t, "DELETE FROM generation_snapshots WHERE chain_id = " .. lit(ctx.async_cid)))
        caught(ctx, nil, "^chain " .. ctx.async_cid .. " has no rows %(rows deleted%)$")
      end)

      it("rows inserted as a chain nobody registered: the chain", function()
        local ctx = populate()
        local cols = {}
        for i, c in ipairs(STORED) do
          cols[i] = c == "id" and lit(FORGED_ID) or c == "chain_id" and lit("01ARZ3NDEKTSV4RRFFQ69G5FAW") or c
        end
        must(B.unguarded(ctx.t, "INSERT INTO generation_snapshots (" .. table.concat(STORED, ", ") .. ") SELECT "
          .. table.concat(cols, ", ") .. " FROM generation_snapshots WHERE id = " .. lit(ctx.sync[1])))
        caught(ctx, nil, "^chain 01ARZ3NDEKTSV4RRFFQ69G5FAW is not registered")
      end)

      it("a purged payload put back, different", function()
        local ctx = populate()
        local id = ctx.sync[1]
        purge_all(ctx)
        clean(ctx)
        must(B.unguarded(ctx.t, "UPDATE generation_snapshots SET content = 'a different post' WHERE id = " .. lit(id)))
        caught(ctx, id, "^purged, but content is still there")
      end)

      it("a payload removed without a purge", function()
        local ctx = populate()
        local id = ctx.async[4]
        must(B.unguarded(ctx.t, "UPDATE generation_snapshots SET content = NULL WHERE id = " .. lit(id)))
        caught(ctx, id, "^content is missing without a purge")
      end)
    end)

    -- verify() reports these (it once raised a Lua error on them);
    -- tools/verify_chain.py names the row for each too.
    describe("reports (does not raise on), naming the row,", function()
      for _, c in ipairs({
        { "a position set to NULL", "chain_seq = NULL" },
        { "a position that is not a number", "chain_seq = 'two'", sqlite_only = true }, -- a bigint on PostgreSQL
        { "a position of 0", "chain_seq = 0" },
        { "a fractional position", "chain_seq = 2.5", sqlite_only = true },
        { "a purged row's digest in upper case", "content = NULL, final_user_prompt = NULL, final_system_prompt = NULL,"
          .. " drafts = NULL, purged_at = created_at, content_sha256 = upper(content_sha256)" },
      }) do
        if B.name == "sqlite" or not c.sqlite_only then it(c[1], function()
          local ctx = populate()
          must(B.unguarded(ctx.t, "UPDATE generation_snapshots SET " .. c[2] .. " WHERE id = " .. lit(ctx.sync[2])))
          -- the row itself, or (where the database sorts it away) the row after the gap it leaves
          local p = first_problem(ctx)
          assert.truthy(p.id == ctx.sync[2] or p.id == ctx.sync[3], p.what)
        end) end
      end

      if B.name == "sqlite" then
        it("tools/verify_chain.py names the row for each of those", function()
          -- (SQLite sorts NULL first and text after numbers: 'two' leaves a gap at position 2)
          for _, c in ipairs({ { "chain_seq = NULL", 2 }, { "chain_seq = 'two'", 3 }, { "chain_seq = 0", 2 },
            { "chain_seq = 2.5", 2 }, { "content = NULL, final_user_prompt = NULL, final_system_prompt = NULL,"
              .. " drafts = NULL, purged_at = created_at, content_sha256 = upper(content_sha256)", 2 } }) do
            local ctx = populate()
            must(B.unguarded(ctx.t, "UPDATE generation_snapshots SET " .. c[1] .. " WHERE id = " .. lit(ctx.sync[2])))
            assert.equal(ctx.sync[c[2]], python(ctx), c[1])
          end
        end)
      end
    end)

    describe("with a signed checkpoint, catches", function()
      it("the newest rows truncated after it: the chain", function()
        local ctx = populate()
        local sk, pk = keys()
        local cp = checkpoint(ctx, sk, pk)
        must(B.unguarded(ctx.t, "DELETE FROM generation_snapshots WHERE id IN (" .. lit(ctx.sync[3]) .. ", "
          .. lit(ctx.sync[4]) .. ")"))
        clean(ctx) -- the chain itself still holds together: only the checkpoint shows it
        local p = caught(ctx, nil, "^chain " .. ctx.sync_cid .. " ends at position 2, before the checkpoint's 4 %(rows"
          .. " deleted%)$", { checkpoints = { cp } })
        assert.equal(ctx.sync_cid, p.chain_id)
      end)

      it("the whole table rewritten consistently after it (hashes recomputed): the row at its head", function()
        local ctx = populate()
        local sk, pk = keys()
        local cp = checkpoint(ctx, sk, pk)
        local forged = "A post that says something else."
        rewrite_chain(ctx, ctx.sync_cid, 2, ("UPDATE generation_snapshots SET content = %s, content_sha256 = %s"
          .. " WHERE id = %s"):format(lit(forged), lit(core.sha256(forged)), lit(ctx.sync[2])))
        assert.equal(forged, get(ctx, ctx.sync[2]).content)
        clean(ctx) -- an attacker with the code passes verify without a checkpoint
        local p = caught(ctx, ctx.sync[4], "^differs from the checkpoint of .* %(the chain was rewritten%)$",
          { checkpoints = { cp } })
        assert.equal(4, p.seq)
      end)

      it("a whole chain deleted after it, its registration too: the chain", function()
        local ctx = populate()
        local sk, pk = keys()
        local cp = checkpoint(ctx, sk, pk)
        must(B.unguarded(ctx.t, "DELETE FROM generation_snapshots WHERE chain_id = " .. lit(ctx.async_cid)
          .. "; DELETE FROM chains WHERE chain_id = " .. lit(ctx.async_cid)))
        clean(ctx)
        local _, r = caught(ctx, nil, "^chain " .. ctx.async_cid .. " of the checkpoint of .* is gone$",
          { checkpoints = { cp } })
        assert.equal(3, r.chains)
      end)

      it("both tables emptied after it: every chain", function()
        local ctx = populate()
        local sk, pk = keys()
        local cp = checkpoint(ctx, sk, pk)
        must(B.unguarded(ctx.t, B.empty_all))
        local _, r = first_problem(ctx, { checkpoints = { cp } })
        assert.equal(4, #r.problems)
        for _, p in ipairs(r.problems) do assert.matches(" is gone$", p.what) end
      end)
    end)

    describe("rows older than the chain (written before migration 0008)", function()
      -- A store migrated to 7 with 2 rows written by another client (as an
      -- older release did), then opened by today's genaudit: 0008 counts them.
      local function with_legacy()
        local mdir = dir .. "/m7-" .. B.name
        if not io.open(mdir .. "/0001_create_generation_snapshots.sql") then
          assert(os.execute("mkdir -p " .. q(mdir)))
          for _, f in ipairs(assert(core.listdir("migrations/" .. B.name))) do
            if f:match("^000[1-7]_.*%.sql$") then
              tmp.write(mdir .. "/" .. f, tmp.read("migrations/" .. B.name .. "/" .. f))
            end
          end
        end
        local t = B.target(dir)
        local s7 = assert(B.open(t, { migrations_dir = mdir }))
        assert.equal(7, s7:schema_version())
        s7:close()
        local ids = { "01ARZ3NDEKTSV4RRFFQ69G5FA1", "01ARZ3NDEKTSV4RRFFQ69G5FA2" }
        for i, id in ipairs(ids) do
          must(B.sql(t, "INSERT INTO generation_snapshots (id, org_id, user_id, platform, template_id, content)"
            .. " VALUES (" .. lit(id) .. ", 'o', 'u', 'p', 't', 'legacy " .. i .. "')"))
        end
        local ctx = { t = t, store = open(t), legacy = ids }
        assert(ctx.store:persist_generation(row("sync", 1)))
        return ctx
      end

      it("are counted when the chain begins, verify clean, and a checkpoint seals them", function()
        local ctx = with_legacy()
        local r = clean(ctx)
        assert.same({ 3, 2, 1 }, { r.rows, r.legacy_rows, r.chains })
        local sk, pk = keys()
        local cp = checkpoint(ctx, sk, pk)
        assert.same({ rows = 2, hash = r.legacy_hash }, cp.legacy)
        clean(ctx, { checkpoints = { cp } })
      end)

      it("one deleted: caught by their count", function()
        local ctx = with_legacy()
        must(B.unguarded(ctx.t, "DELETE FROM generation_snapshots WHERE id = " .. lit(ctx.legacy[2])))
        caught(ctx, nil, "^1 rows without a seal, where 2 were there when the chain began")
      end)

      it("one edited after a checkpoint: caught by the checkpoint's seal over them", function()
        local ctx = with_legacy()
        local sk, pk = keys()
        local cp = checkpoint(ctx, sk, pk)
        must(B.unguarded(ctx.t, "UPDATE generation_snapshots SET content = 'rewritten' WHERE id = "
          .. lit(ctx.legacy[1])))
        clean(ctx) -- nothing else holds them
        caught(ctx, nil, "^the rows older than the chain differ from the checkpoint of ", { checkpoints = { cp } })
      end)
    end)

    describe("checkpoints", function()
      it("sign every chain's head, and read back only with the signer's public key", function()
        local ctx = populate()
        local sk, pk = keys()
        local cp, text = checkpoint(ctx, sk, pk)
        assert.matches("^[^\n]+\ned25519:" .. ("%x"):rep(128) .. "\n$", text)
        local heads = {}
        for _, c in ipairs(cp.chains) do heads[c.chain_id] = { c.seq, c.head } end
        for _, cid in ipairs(ctx.cids) do
          local ids = ctx.chains[cid]
          assert.same({ #ids, get(ctx, ids[#ids]).record_hash }, heads[cid])
        end
        assert.same({ audit.CHECKPOINT_FORMAT, 14 }, { cp.format, cp.rows })
        local _, other = keys()
        assert.same({ nil, "CHECKPOINT: the signature does not verify with this public key", "CHECKPOINT" },
          { audit.read_checkpoint(text, other) })
        -- the body edited (a lower position), the signature kept
        local edited = text:gsub('"seq":4', '"seq":2', 1)
        assert.are_not.equal(text, edited)
        assert.same({ nil, "CHECKPOINT: the signature does not verify with this public key", "CHECKPOINT" },
          { audit.read_checkpoint(edited, pk) })
        local r = { audit.read_checkpoint("not a checkpoint", pk) }
        assert.same({ nil, "CHECKPOINT" }, { r[1], r[3] })
        clean(ctx, { checkpoints = { cp } })
      end)

      it("are refused for a store that does not verify", function()
        local ctx = populate()
        must(B.unguarded(ctx.t, "UPDATE generation_snapshots SET status = 'failed', error = 'x' WHERE id = "
          .. lit(ctx.sync[1])))
        local sk = keys()
        local text, err, code = audit.checkpoint(ctx.store, sk)
        assert.same({ nil, "TAMPERED" }, { text, code })
        assert.truthy(err:find(ctx.sync[1], 1, true), err)
      end)
    end)

    describe("since a checkpoint", function()
      it("verifies only the newer rows, and catches an edit among them", function()
        local ctx = populate()
        local sk, pk = keys()
        local cp = checkpoint(ctx, sk, pk)
        local new = { assert(ctx.store:persist_generation(row("sync", 5))),
                      assert(ctx.store:persist_generation(row("sync", 6))) }
        local r = clean(ctx, { since = cp })
        -- each chain from its checkpointed head on: 4 heads and the 2 new rows
        assert.equal(6, r.rows)
        -- an edit before the checkpoint is not read again
        must(B.unguarded(ctx.t, "UPDATE generation_snapshots SET user_id = 'x' WHERE id = " .. lit(ctx.sync[2])))
        clean(ctx, { since = cp })
        assert.equal(ctx.sync[2], first_problem(ctx).id)
        -- an edit after it is
        must(B.unguarded(ctx.t, "UPDATE generation_snapshots SET user_id = 'x' WHERE id = " .. lit(new[2])))
        local p = first_problem(ctx, { since = cp })
        assert.same({ new[2], "record hash does not match the row (a field was edited)" }, { p.id, p.what })
      end)

      it("catches the checkpointed head itself changed", function()
        local ctx = populate()
        local sk, pk = keys()
        local cp = checkpoint(ctx, sk, pk)
        rewrite_chain(ctx, ctx.sync_cid, 4, "UPDATE generation_snapshots SET user_id = 'x' WHERE id = "
          .. lit(ctx.sync[4]))
        local p = first_problem(ctx, { since = cp })
        assert.same({ ctx.sync[4], "differs from the checkpoint's head" }, { p.id, p.what })
      end)

      it("catches the newest rows truncated", function()
        local ctx = populate()
        local sk, pk = keys()
        local cp = checkpoint(ctx, sk, pk)
        must(B.unguarded(ctx.t, "DELETE FROM generation_snapshots WHERE id = " .. lit(ctx.sync[4])))
        local p = first_problem(ctx, { since = cp })
        assert.matches("^chain " .. ctx.sync_cid .. " ends before the checkpoint's position 4", p.what)
      end)

      -- with only `since`, every chain the checkpoint signed must still be there
      it("catches a whole chain deleted (rows and registration) with only since = checkpoint", function()
        local ctx = populate()
        local sk, pk = keys()
        local cp = checkpoint(ctx, sk, pk)
        must(B.unguarded(ctx.t, "DELETE FROM generation_snapshots WHERE chain_id = " .. lit(ctx.async_cid)
          .. "; DELETE FROM chains WHERE chain_id = " .. lit(ctx.async_cid)))
        first_problem(ctx, { since = cp })
      end)
    end)

    describe("a purge", function()
      local OLD_DAY = "2025-01-0%d 10:00:00.000"

      -- populate() plus 3 old rows in the sync store's chain
      local function with_old()
        local ctx = populate()
        ctx.old = {}
        for i = 1, 3 do
          ctx.old[i] = assert(ctx.store:persist_generation(row("old", i, { created_at = OLD_DAY:format(i) })))
        end
        return ctx
      end

      it("removes the old payloads, keeps digests and chain, records itself, and verifies clean", function()
        local ctx = with_old()
        local before = {}
        for i, id in ipairs(ctx.old) do before[i] = get(ctx, id) end
        assert.equal(3, assert(ctx.store:purge("2026-01-01 00:00:00", "payloads")))
        local r = clean(ctx)
        assert.same({ 17, 3 }, { r.rows, r.purged })
        for i, id in ipairs(ctx.old) do
          local x, b = get(ctx, id), before[i]
          assert.same({}, { x.final_system_prompt, x.final_user_prompt, x.content, x.drafts })
          assert.same({ b.final_system_prompt_sha256, b.final_user_prompt_sha256, b.content_sha256, b.drafts_sha256,
            b.record_hash, b.prev_hash, b.token_metrics },
            { x.final_system_prompt_sha256, x.final_user_prompt_sha256, x.content_sha256, x.drafts_sha256,
              x.record_hash, x.prev_hash, x.token_metrics })
          assert.is_string(x.purged_at)
        end
        -- the newer rows keep their payloads
        assert.equal("Post 1 of sync.", get(ctx, ctx.sync[1]).content)
        assert.same({ { older_than = "2026-01-01 00:00:00", what = "payloads", rows = 3 } },
          ctx.store:query("SELECT older_than, what, rows FROM purges"))
        -- a second purge finds nothing to do, and leaves the first one's marks
        local stamp = get(ctx, ctx.old[1]).purged_at
        assert.equal(0, assert(audit.purge(ctx.store, { older_than = "2026-01-01 00:00:00" })))
        assert.equal(stamp, get(ctx, ctx.old[1]).purged_at)
        assert.same({ { rows = 3 }, { rows = 0 } }, ctx.store:query("SELECT rows FROM purges ORDER BY rows DESC"))
        clean(ctx)
      end)

      it("leaves reports and checkpoints working", function()
        local ctx = with_old()
        local sk, pk = keys()
        local cp = checkpoint(ctx, sk, pk)
        assert(ctx.store:purge("2026-01-01 00:00:00"))
        clean(ctx, { checkpoints = { cp } })
        local rep = assert(genaudit.report.cost(ctx.store, { template = "launch" }))
        assert.equal(17, rep.rows[1].posts)
        local cp2 = checkpoint(ctx, sk, pk)
        clean(ctx, { checkpoints = { cp, cp2 } })
      end)

      it("takes only 'payloads'", function()
        local ctx = with_old()
        local n, err, code = audit.purge(ctx.store, { older_than = "2026-01-01 00:00:00", what = "everything" })
        assert.same({ nil, "PURGE" }, { n, code })
        assert.matches("^PURGE: ", err)
        assert.equal("Post 1 of old.", get(ctx, ctx.old[1]).content)
      end)

      -- a purged row must name a recorded purge whose cutoff is after it
      it("catches a row purged around genaudit purge (no purge recorded covers it)", function()
        local ctx = with_old()
        local id = ctx.sync[2]
        -- the trigger refuses it (no recorded purge): done around the trigger
        local _, refused_ok = B.sql(ctx.t, "UPDATE generation_snapshots SET content = NULL, final_user_prompt = NULL,"
          .. " final_system_prompt = NULL, drafts = NULL, purged_at = created_at WHERE id = " .. lit(id))
        assert.is_false(refused_ok)
        must(B.unguarded(ctx.t, "UPDATE generation_snapshots SET content = NULL, final_user_prompt = NULL,"
          .. " final_system_prompt = NULL, drafts = NULL, purged_at = created_at WHERE id = " .. lit(id)))
        caught(ctx, id, "purged outside a recorded purge")
      end)
    end)

    describe("the triggers", function()
      it("refuse an UPDATE of any column but a purge's, a DELETE, and any change to chains or purges", function()
        local ctx = populate()
        local id = lit(ctx.sync[2])
        local refused = {
          "UPDATE generation_snapshots SET user_id = 'x' WHERE id = " .. id,
          "UPDATE generation_snapshots SET content = NULL WHERE id = " .. id, -- not marked purged
          "UPDATE generation_snapshots SET record_hash = " .. lit(ZERO) .. " WHERE id = " .. id,
          -- shaped like a purge, with one more change
          "UPDATE generation_snapshots SET content = NULL, final_user_prompt = NULL, final_system_prompt = NULL,"
            .. " drafts = NULL, purged_at = created_at, template_version = '9' WHERE id = " .. id,
          "UPDATE generation_snapshots SET content = NULL, final_user_prompt = NULL, final_system_prompt = NULL,"
            .. " drafts = NULL, purged_at = created_at, content_sha256 = NULL WHERE id = " .. id,
          "DELETE FROM generation_snapshots WHERE id = " .. id,
          "DELETE FROM generation_snapshots",
          "UPDATE chains SET host = 'elsewhere'",
          "DELETE FROM chains",
        }
        for _, sql in ipairs(refused) do
          local out, ok = B.sql(ctx.t, sql)
          assert.is_false(ok, sql)
          assert.truthy(out:find("immutable", 1, true) or out:find("not deleted", 1, true), sql .. ": " .. out)
        end
        if B.truncate then
          local out, ok = B.sql(ctx.t, "TRUNCATE generation_snapshots")
          assert.is_false(ok)
          assert.truthy(out:find("not deleted", 1, true), out)
        end
        clean(ctx)
        -- a purged row stays purged
        assert.equal(14, purge_all(ctx))
        for _, sql in ipairs({ "UPDATE generation_snapshots SET content = 'back' WHERE id = " .. id,
          "UPDATE generation_snapshots SET purged_at = NULL WHERE id = " .. id,
          "UPDATE purges SET rows = 0", "DELETE FROM purges" }) do
          local out, ok = B.sql(ctx.t, sql)
          assert.is_false(ok, sql)
          assert.truthy(out:find("immutable", 1, true) or out:find("not deleted", 1, true), sql .. ": " .. out)
        end
        clean(ctx)
      end)
    end)

    describe("bin/genaudit", function()
      local it_cli = HAS_CLI and it or function(n) pending(n .. " (needs the CLI from i14)") end

      local function run(ctx, args) return cli("--db " .. q(B.url(ctx.t)) .. " " .. args) end

      it_cli("keygen writes a private key (0600) and a public key, and refuses to overwrite them", function()
        local prefix = dir .. "/k" .. B.name
        local out, err, rc = cli("keygen --out " .. q(prefix))
        assert.same({ 0, "" }, { rc, err }, out)
        assert.matches("^%-%-%-%-%-BEGIN PRIVATE KEY", tmp.read(prefix .. ".key"))
        assert.matches("^%-%-%-%-%-BEGIN PUBLIC KEY", tmp.read(prefix .. ".pub"))
        assert.equal("-rw-------", (sh("stat -c %A " .. q(prefix .. ".key")):gsub("%s+$", "")))
        local key = tmp.read(prefix .. ".key")
        out, err, rc = cli("keygen --out " .. q(prefix))
        assert.same({ 1, "" }, { rc, out })
        assert.matches("^genaudit: [^\n]+\n$", err)
        assert.equal(key, tmp.read(prefix .. ".key"))
      end)

      it_cli("verify: 'intact:' and exit 0; a tampered row named on one stderr line and exit 1", function()
        local ctx = populate()
        local out, err, rc = run(ctx, "verify")
        assert.same({ 0, "" }, { rc, err })
        assert.matches("^intact:[^\n]*\n$", out)
        out, err, rc = run(ctx, "--json verify")
        assert.same({ 0, "" }, { rc, err })
        assert.truthy(out:find('"ok":true', 1, true), out)
        local id = ctx.sync[2]
        must(B.unguarded(ctx.t, EDIT_BYTE .. lit(id)))
        out, err, rc = run(ctx, "verify")
        assert.same({ 1, "" }, { rc, out })
        assert.equal("genaudit: TAMPERED: row " .. id .. ": " .. first_problem(ctx).what .. "\n", err)
      end)

      it_cli("checkpoint, then verify --checkpoint --pubkey catches rows truncated after it", function()
        local ctx = populate()
        local prefix = dir .. "/c" .. B.name
        assert.equal(0, select(3, cli("keygen --out " .. q(prefix))))
        local cpfile = prefix .. ".checkpoint"
        local out, err, rc = run(ctx, "checkpoint --key " .. q(prefix .. ".key") .. " --out " .. q(cpfile))
        assert.same({ 0, "checkpoint written to " .. cpfile .. "\n", "" }, { rc, out, err })
        assert(audit.read_checkpoint(tmp.read(cpfile), tmp.read(prefix .. ".pub")))
        -- without --out, the checkpoint itself on stdout
        out, err, rc = run(ctx, "checkpoint --key " .. q(prefix .. ".key"))
        assert.same({ 0, "" }, { rc, err })
        assert(audit.read_checkpoint(out, tmp.read(prefix .. ".pub")))
        local args = "verify --checkpoint " .. q(cpfile) .. " --pubkey " .. q(prefix .. ".pub")
        out, err, rc = run(ctx, args)
        assert.same({ 0, "" }, { rc, err })
        assert.matches("^intact:", out)
        must(B.unguarded(ctx.t, "DELETE FROM generation_snapshots WHERE id = " .. lit(ctx.sync[4])))
        out, err, rc = run(ctx, args)
        assert.same({ 1, "" }, { rc, out })
        assert.matches("^genaudit: TAMPERED: chain " .. ctx.sync_cid .. " ends at position 3[^\n]*\n$", err)
        -- a store that does not verify is not signed (the truncation above is
        -- seen only against the checkpoint, which checkpoint does not read)
        must(B.unguarded(ctx.t, EDIT_BYTE .. lit(ctx.sync[1])))
        out, err, rc = run(ctx, "checkpoint --key " .. q(prefix .. ".key"))
        assert.same({ 1, "" }, { rc, out })
        assert.matches("^genaudit: TAMPERED: [^\n]*" .. ctx.sync[1] .. "[^\n]*\n$", err)
        -- another key's public key refuses the checkpoint
        assert.equal(0, select(3, cli("keygen --out " .. q(prefix .. "2"))))
        out, err, rc = run(ctx, "verify --checkpoint " .. q(cpfile) .. " --pubkey " .. q(prefix .. "2.pub"))
        assert.same({ 1, "" }, { rc, out })
        assert.matches("^genaudit: [^\n]+\n$", err)
      end)

      it_cli("verify --since-checkpoint reads only the newer rows and catches an edit among them", function()
        local ctx = populate()
        local prefix = dir .. "/s" .. B.name
        assert.equal(0, select(3, cli("keygen --out " .. q(prefix))))
        local cpfile = prefix .. ".checkpoint"
        assert.equal(0, select(3, run(ctx, "checkpoint --key " .. q(prefix .. ".key") .. " --out " .. q(cpfile))))
        local new = assert(ctx.store:persist_generation(row("sync", 5)))
        local args = "verify --since-checkpoint " .. q(cpfile) .. " --pubkey " .. q(prefix .. ".pub")
        local out, err, rc = run(ctx, args)
        assert.same({ 0, "" }, { rc, err })
        assert.matches("^intact:", out)
        must(B.unguarded(ctx.t, "UPDATE generation_snapshots SET user_id = 'x' WHERE id = " .. lit(new)))
        out, err, rc = run(ctx, args)
        assert.same({ 1, "" }, { rc, out })
        assert.equal("genaudit: TAMPERED: row " .. new .. ": record hash does not match the row (a field was edited)\n",
          err)
      end)

      it_cli("purge --older-than prints the rows purged; verify stays intact", function()
        local ctx = populate()
        for i = 1, 2 do
          assert(ctx.store:persist_generation(row("old", i, { created_at = os.date("!%Y-%m-%d %H:%M:%S",
            os.time() - 200 * 86400) })))
        end
        local out, err, rc = run(ctx, "purge --older-than 180d --what payloads")
        assert.same({ 0, "" }, { rc, err })
        assert.matches("^purged: 2 rows[^\n]*\n$", out)
        out, err, rc = run(ctx, "purge --older-than 180d")
        assert.same({ 0, "" }, { rc, err })
        assert.matches("^purged: 0 rows[^\n]*\n$", out)
        out, err, rc = run(ctx, "verify")
        assert.same({ 0, "" }, { rc, err })
        assert.matches("^intact:", out)
      end)
    end)
  end)
end

-- ---- the two stores ----

local sqlite_n = 0

local function sqlite3(path, sql)
  return sh("env -u LD_PRELOAD sqlite3 -bail " .. q(path) .. " " .. q(sql))
end

suite("tamper evidence (SQLite)", {
  name = "sqlite",
  target = function(dir)
    sqlite_n = sqlite_n + 1
    return dir .. "/t" .. sqlite_n .. ".db"
  end,
  open = function(t, opts) return genaudit.open("sqlite:" .. t, opts) end,
  url = function(t) return "sqlite:" .. t end,
  sql = sqlite3,
  json_set = function(col, key, v) return ("json_set(%s, '$.%s', %s)"):format(col, key, v) end,
  empty_all = "DELETE FROM generation_snapshots; DELETE FROM chains;",
  -- every trigger on the two tables dropped, sql run, the triggers created again, one transaction
  unguarded = function(t, sql)
    local out, ok = sqlite3(t, "SELECT sql || ';' FROM sqlite_master WHERE type = 'trigger'"
      .. " AND tbl_name IN ('generation_snapshots', 'chains') ORDER BY name")
    assert(ok, out)
    local drops = {}
    for name in sqlite3(t, "SELECT name FROM sqlite_master WHERE type = 'trigger'"
      .. " AND tbl_name IN ('generation_snapshots', 'chains')"):gmatch("[^\n]+") do
      drops[#drops + 1] = "DROP TRIGGER " .. name .. ";"
    end
    return sqlite3(t, "BEGIN;\n" .. table.concat(drops, "\n") .. "\n" .. sql .. ";\n" .. out .. "\nCOMMIT;")
  end,
  trigger_sql = function(t, name)
    return (sqlite3(t, "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = '" .. name .. "'"))
  end,
  redo_trigger = function(t, name, between)
    local def = (sqlite3(t, "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = '" .. name .. "'"))
    local out, ok = sqlite3(t, "DROP TRIGGER " .. name)
    if not ok then return out, ok end
    out, ok = sqlite3(t, between)
    if not ok then return out, ok end
    return sqlite3(t, def .. ";")
  end,
}, describe)

local function psql(schema, sql)
  local env = "PGOPTIONS=" .. q("-c client_min_messages=warning -c search_path=" .. schema)
  return sh("env -u LD_PRELOAD " .. env .. " psql -X -q -v ON_ERROR_STOP=1 -tA " .. q(pg.url or "") .. " -c "
    .. q(sql))
end

suite("tamper evidence (PostgreSQL) #postgresql", {
  name = "postgresql",
  truncate = true,
  target = function() return pg.schema() end,
  open = function(t, opts) return pg.open(t, opts) end,
  url = function(t) return pg.url_for(t) end,
  sql = psql,
  json_set = function(col, key, v) return ("jsonb_set(%s::jsonb, '{%s}', '%s')::json"):format(col, key, v) end,
  empty_all = "TRUNCATE generation_snapshots, chains",
  -- the triggers off for one transaction (what a superuser can do), sql run
  unguarded = function(t, sql)
    return psql(t, "BEGIN; SET LOCAL session_replication_role = replica; " .. sql .. "; COMMIT;")
  end,
  trigger_sql = function(t, name)
    return (psql(t, "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = '" .. name
      .. "' AND tgrelid = 'generation_snapshots'::regclass"))
  end,
  redo_trigger = function(t, name, between)
    local def = (psql(t, "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = '" .. name
      .. "' AND tgrelid = 'generation_snapshots'::regclass"))
    local out, ok = psql(t, "DROP TRIGGER " .. name .. " ON generation_snapshots")
    if not ok then return out, ok end
    out, ok = psql(t, between)
    if not ok then return out, ok end
    return psql(t, def)
  end,
}, pg.describe)
