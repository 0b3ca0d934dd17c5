-- spec/verify_split_spec.lua
-- verify() on SQLite over two threads (csrc/ga_verify.c, the split in
-- lua/genaudit/audit.lua): each long chain cut into segments, the worker's
-- read on a second connection at the same snapshot. The split is tuned down
-- here (a few hundred rows per pair) so small stores use it. What must hold:
-- the report of a split verify is exactly the one-thread report, for an
-- untouched store and for tampers in the first segment, in a worker's
-- segment and at the very split point (either side of it); a writer
-- appending and a purge running while verify reads never produce a false
-- problem (one snapshot for every read); an error of the worker's query
-- comes back as nil, "CODE: message", "CODE", as the main thread's does.
local genaudit = require("genaudit")
local audit = require("genaudit.audit")
local pg = require("spec.support.pg")
local tmp = require("spec.support.tmp")
local util = require("spec.support.util")
local q = util.q

local ENV = "LUA_PATH='./lua/?.lua;./lua/?/init.lua;;' LUA_CPATH='./build/lua54/?.so;;' "

local function sh(cmd) return pg.sh(cmd) end
local function sqlite3(path, sql) return sh("env -u LD_PRELOAD sqlite3 -bail " .. q(path) .. " " .. q(sql)) end

-- sql run with every trigger of the two tables dropped, then created again (one transaction)
local function unguarded(path, sql)
  local defs, ok = sqlite3(path, "SELECT sql || ';' FROM sqlite_master WHERE type = 'trigger'"
    .. " AND tbl_name IN ('generation_snapshots', 'chains') ORDER BY name")
  assert(ok, defs)
  local drops = {}
  for name in sqlite3(path, "SELECT name FROM sqlite_master WHERE type = 'trigger'"
    .. " AND tbl_name IN ('generation_snapshots', 'chains')"):gmatch("[^\n]+") do
    drops[#drops + 1] = "DROP TRIGGER " .. name .. ";"
  end
  local o, okk = sqlite3(path, "BEGIN;\n" .. table.concat(drops, "\n") .. "\n" .. sql .. ";\n" .. defs .. "\nCOMMIT;")
  assert(okk, o)
end

local function row(tag, i, over)
  local r = {
    org_id = "org-" .. tag, user_id = "user-" .. i, platform = "linkedin", template_id = "launch",
    final_system_prompt = "You are a careful writer (" .. tag .. ").",
    final_user_prompt = "Write post " .. i .. " for " .. tag .. ", caf\195\169.",
    content = "Post " .. i .. " of " .. tag .. ".",
    drafts = i % 3 == 0 and { "draft " .. i } or nil,
    token_usage = { prompt_tokens = 100 + i, completion_tokens = 20 + i, estimated_cost = 0.0015 },
    performance = { total_latency_ms = 1500.5, provider_latency_ms = 1200.25, model_identifier = "m" },
    repair_info = { repair_count = 0 },
  }
  for k, v in pairs(over or {}) do r[k] = v end
  return r
end

local SAVED = {}
local function tune() -- pairs of 200 positions, 80 of them the main thread's
  for _, k in ipairs({ "SPLIT_MIN", "PAIR_ROWS", "MAIN_SHARE" }) do SAVED[k] = audit[k] end
  audit.SPLIT_MIN, audit.PAIR_ROWS, audit.MAIN_SHARE = 50, 200, 0.4
end
local function untune() for k, v in pairs(SAVED) do audit[k] = v end end

-- Both verifies of one store: one thread, then split. Returns the one-thread
-- report (or its error triple), the split one, and the split's plan.
local function both(store, opts)
  local o1, o2 = {}, {}
  for k, v in pairs(opts or {}) do o1[k], o2[k] = v, v end
  o1.parallel = false
  local plan = {}
  o2.on_plan = function(plans, started) plan.plans, plan.started = plans, started end
  local r1 = { audit.verify(store, o1) }
  local r2 = { audit.verify(store, o2) }
  return r1, r2, plan
end

describe("verify() split over two threads (SQLite)", function()
  local dir, base, ids, sync_ids, async_cid
  local n_db = 0
  local open_stores = {}

  setup(function()
    tune()
    dir = tmp.dir()
    base = dir .. "/base.db"
    -- chain 1: an async writer's 600 rows; chain 2: a sync store's 120 rows
    local a = assert(genaudit.open("sqlite:" .. base, { async = { batch = 100 } }))
    ids = {}
    for i = 1, 600 do ids[i] = assert(a:persist_generation(row("async", i))) end
    assert(a:flush())
    a:close()
    local s = assert(genaudit.open("sqlite:" .. base))
    sync_ids = {}
    for i = 1, 120 do sync_ids[i] = assert(s:persist_generation(row("sync", i))) end
    async_cid = assert(s:query("SELECT chain_id FROM generation_snapshots WHERE id = ?", { ids[1] }))[1].chain_id
    s:close()
  end)
  teardown(function()
    untune()
    tmp.rm(dir)
  end)
  after_each(function()
    for _, st in ipairs(open_stores) do st:close() end
    open_stores = {}
  end)

  local function copy()
    n_db = n_db + 1
    local p = dir .. "/c" .. n_db .. ".db"
    local out, ok = sh("cp " .. q(base) .. " " .. q(p))
    assert(ok, out)
    return p
  end
  local function open(p, opts)
    local st = assert(genaudit.open("sqlite:" .. p, opts))
    open_stores[#open_stores + 1] = st
    return st
  end

  -- the async chain's first split point: the first position the worker reads
  local function split_point(plan)
    for _, sg in ipairs(plan.plans[async_cid]) do
      if sg.worker then return sg.lo end
    end
  end

  it("plans worker segments on both chains and gives the one-thread report on an untouched store", function()
    local st = open(copy())
    local r1, r2, plan = both(st)
    assert.is_true(r1[1].ok, r1[2])
    assert.same(r1, r2)
    assert.is_true(plan.started)
    assert.equal(720, r2[1].rows)
    local workers, chains = 0, 0
    for _, segs in pairs(plan.plans) do
      chains = chains + 1
      local prev
      for _, sg in ipairs(segs) do
        if sg.worker then workers = workers + 1 end
        if prev and prev.hi and sg.lo then assert.equal(prev.hi, sg.lo) end -- contiguous
        prev = sg
      end
      assert.is_nil(segs[#segs].hi) -- the last segment is unbounded
    end
    assert.equal(2, chains)
    assert.is_true(workers >= 4)
    assert.equal(81, split_point(plan)) -- 1 + 0.4 * 200
  end)

  it("the split's positions reach both threads: the walk sees every row once, in order", function()
    local st = open(copy())
    local seen = {}
    local r = assert(audit.verify(st, { on_plan = function(_, started) assert.is_true(started) end,
      progress = function(n) seen[#seen + 1] = n end }))
    assert.is_true(r.ok)
    assert.equal(720, r.rows)
    assert.equal(600, r.heads[async_cid].seq)
  end)

  -- tampers: name, the positions of the async chain to hit, the SQL (for id),
  -- the problem the first bad row must carry
  local EDIT = "final_user_prompt = 'X' || substr(final_user_prompt, 2)"
  local cases = {
    { "one byte of a prompt edited", "UPDATE generation_snapshots SET " .. EDIT .. " WHERE id = %s", 0,
      "final_user_prompt does not match its digest %(edited%)" },
    { "a cost changed", "UPDATE generation_snapshots SET token_metrics = json_set(token_metrics,"
      .. " '$.estimated_cost', 9.99) WHERE id = %s", 0, "record hash does not match the row" },
    { "a row deleted", "DELETE FROM generation_snapshots WHERE id = %s", 1, "rows missing before this one" },
    { "a prev_hash rewritten", "UPDATE generation_snapshots SET prev_hash = '" .. ("0"):rep(64)
      .. "' WHERE id = %s", 0, "prev_hash does not link" },
    { "a position set to NULL", "UPDATE generation_snapshots SET chain_seq = NULL WHERE id = %s", 0,
      "is not a chain position" },
    { "a position stored as text", "UPDATE generation_snapshots SET chain_seq = 'two' WHERE id = %s", 0,
      "is not a chain position" },
    { "a fractional position", "UPDATE generation_snapshots SET chain_seq = chain_seq + 0.5 WHERE id = %s", 0,
      "is not a chain position" },
  }
  -- where: in the first segment, in a worker's, either side of the split point, the last row
  local where = { { "the first segment", 10 }, { "a worker's segment", 150 }, { "the last row before the split", 80 },
    { "exactly at the split point", 81 }, { "the last row (the worker's last segment)", 600 },
    { "a main segment after a worker's", 230 } }
  for _, c in ipairs(cases) do
    for _, w in ipairs(where) do
      it(c[1] .. " in " .. w[1] .. " (position " .. w[2] .. "): the row named, the one-thread report", function()
        local p = copy()
        local seq = w[2]
        if c[3] == 1 and seq == 600 then seq = 599 end -- a deleted last row is a truncation: take the one before
        unguarded(p, c[2]:format("'" .. ids[seq] .. "'"))
        local st = open(p)
        local r1, r2, plan = both(st)
        assert.is_true(plan.started)
        assert.equal(81, split_point(plan))
        assert.same(r1, r2)
        local rep = r2[1]
        assert.is_false(rep.ok)
        local named = ids[seq + c[3]]
        local hit
        for _, pr in ipairs(rep.problems) do
          if pr.id == named and pr.what:find(c[4]) then hit = pr end
        end
        assert.is_truthy(hit, "no problem names " .. named .. " with '" .. c[4] .. "'")
        if c[1] ~= "a position set to NULL" and c[1] ~= "a position stored as text" then
          assert.equal(named, rep.problems[1].id) -- the first bad row, in position order
        end
      end)
    end
  end

  it("two rows swapped across the split point: named as in one thread", function()
    local p = copy()
    unguarded(p, ("UPDATE generation_snapshots SET chain_seq = -chain_seq WHERE id IN ('%s', '%s');"
      .. " UPDATE generation_snapshots SET chain_seq = 161 - (-chain_seq) WHERE id IN ('%s', '%s')")
      :format(ids[80], ids[81], ids[80], ids[81]))
    local st = open(p)
    local r1, r2, plan = both(st)
    assert.is_true(plan.started)
    assert.same(r1, r2)
    assert.is_false(r2[1].ok)
    assert.equal(ids[81], r2[1].problems[1].id) -- now at position 80
  end)

  it("a position far beyond the chain (2^50): that chain walked in one piece, the one-thread report", function()
    local p = copy()
    unguarded(p, "UPDATE generation_snapshots SET chain_seq = 1125899906842624 WHERE id = '" .. ids[300] .. "'")
    local st = open(p)
    local r1, r2, plan = both(st)
    assert.same(r1, r2)
    assert.is_nil(plan.plans[async_cid])
    assert.is_false(r2[1].ok)
    assert.equal(ids[301], r2[1].problems[1].id)
  end)

  it("since a checkpoint: the rows after its heads split the same way", function()
    local p = copy()
    unguarded(p, "UPDATE generation_snapshots SET " .. EDIT .. " WHERE id = '" .. ids[520] .. "'")
    local st = open(p)
    local heads = {}
    for _, r in ipairs(assert(st:query("SELECT chain_id, chain_seq, record_hash FROM generation_snapshots"
      .. " WHERE id IN (?, ?)", { ids[100], sync_ids[1] }))) do
      heads[#heads + 1] = { chain_id = r.chain_id, seq = r.chain_seq, head = r.record_hash }
    end
    local since = { format = audit.CHECKPOINT_FORMAT, created_at = "2026-01-01T00:00:00Z", chains = heads }
    local r1, r2, plan = both(st, { since = since })
    assert.is_true(plan.started)
    assert.equal(166, split_point(plan)) -- positions 100..600: 3 pairs of 167, 66 of each the main thread's
    local in_worker
    for _, sg in ipairs(plan.plans[async_cid]) do
      if sg.worker and sg.lo <= 520 and (not sg.hi or sg.hi > 520) then in_worker = true end
    end
    assert.is_true(in_worker)
    assert.same(r1, r2)
    assert.is_false(r2[1].ok)
    assert.equal(ids[520], r2[1].problems[1].id)
    assert.equal(501 + 120, r2[1].rows)
  end)

  it("a store in memory verifies on one thread", function()
    local st = open(":memory:")
    for i = 1, 100 do assert(st:persist_generation(row("mem", i))) end
    local started
    local r = assert(audit.verify(st, { on_plan = function(_, s) started = s end }))
    assert.is_true(r.ok)
    assert.is_false(started)
  end)

  it("an error of the worker's query comes back as nil, 'CODE: message', 'CODE', as the main thread's", function()
    local p = dir .. "/big.db"
    local a = assert(genaudit.open("sqlite:" .. p, { async = { batch = 100 } }))
    for i = 1, 300 do
      assert(a:persist_generation(row("big", i, i == 150 and { final_user_prompt = ("y"):rep(200000) } or nil)))
    end
    assert(a:flush())
    a:close()
    local st = open(p, { length_limit = 100000 }) -- reading the 200 KB prompt is refused
    local r1, r2, plan = both(st)
    assert.is_true(plan.started)
    local seg
    for _, sg in ipairs(plan.plans[next(plan.plans)]) do
      if sg.lo and sg.lo <= 150 and (not sg.hi or sg.hi > 150) then seg = sg end
    end
    assert.is_true(seg.worker) -- the worker read row 150
    assert.is_nil(r2[1])
    assert.equal("SQLITE", r2[3])
    assert.matches("^SQLITE: query failed: string or blob too big", r2[2])
    assert.same(r1, r2)
    -- and the store is still usable: the reader's transaction ended
    st:close()
    st = open(p)
    local r = assert(audit.verify(st))
    assert.is_true(r.ok)
  end)

  it("an error raised while the worker runs joins it and ends the read transaction", function()
    local p = copy()
    local st = open(p)
    audit.PAIR_ROWS = 40 -- many worker jobs, none taken when the error strikes
    local okp, err = pcall(audit.verify, st, { on_plan = function(_, started)
      assert.is_true(started)
      error("stop here")
    end })
    audit.PAIR_ROWS = 200
    assert.is_false(okp)
    assert.matches("stop here", err)
    -- no read transaction left open on the store's connection: it sees a row committed since
    local w = assert(genaudit.open("sqlite:" .. p))
    assert(w:persist_generation(row("after", 1)))
    w:close()
    assert.equal(721, assert(st:query("SELECT count(*) AS n FROM generation_snapshots"))[1].n)
    local r = assert(audit.verify(st))
    assert.is_true(r.ok)
    assert.equal(721, r.rows)
  end)

  it("the snapshot reader: misuse raises, close is idempotent, in-order jobs", function()
    local st = open(copy())
    local rd = assert(st._conn:snapshot_reader{ worker = true })
    assert.is_true(rd:parallel())
    assert.has_error(function() rd:each(1, function() end) end, "reader:each: the worker was not started")
    assert.is_true(rd:start({
      { "SELECT id FROM generation_snapshots WHERE chain_id = ? ORDER BY chain_seq", { async_cid } },
      { "SELECT count(*) AS n FROM generation_snapshots", {} } }))
    assert.has_error(function() rd:start({ { "SELECT 1", {} } }) end, "reader:start: started already")
    assert.has_error(function() rd:each(2, function() end) end)
    local got = {}
    assert.equal(600, rd:each(1, function(r) got[#got + 1] = r.id end))
    assert.same(ids, got)
    local n
    assert.equal(1, rd:each(2, function(r) n = r.n end))
    assert.equal(720, n)
    assert.is_true(rd:close())
    assert.is_true(rd:close())
    assert.has_error(function() rd:parallel() end, "attempt to use a closed snapshot reader")
    -- a statement that writes is refused by the worker
    rd = assert(st._conn:snapshot_reader{ worker = true })
    assert(rd:start({ { "DELETE FROM generation_snapshots", {} } }))
    local _, err, code = rd:each(1, function() end)
    assert.equal("READONLY", code)
    assert.matches("^READONLY: ", err)
    rd:close()
    assert.equal(720, #assert(st:query("SELECT id FROM generation_snapshots")))
  end)

  it("the snapshot reader: close or each from inside each raises (no freed rows read); only queries run", function()
    local st = open(copy())
    local sel = "SELECT id FROM generation_snapshots ORDER BY id"
    local rd = assert(st._conn:snapshot_reader{ worker = true })
    assert(rd:start({ { sel, {} }, { sel, {} }, { sel, {} } }))
    local seen = 0
    local ok, err = pcall(rd.each, rd, 1, function()
      seen = seen + 1
      if seen == 2 then rd:close() end
    end)
    assert.is_false(ok)
    assert.matches("reader:close: called from inside reader:each", err, 1, true)
    assert.equal(2, seen)
    seen = 0
    ok, err = pcall(rd.each, rd, 2, function()
      seen = seen + 1
      rd:each(2, function() end)
    end)
    assert.is_false(ok)
    assert.matches("reader:each: called from inside reader:each", err, 1, true)
    assert.equal(1, seen)
    -- the reader goes on: job 3 whole, then close
    assert.equal(720, rd:each(3, function() end))
    assert.is_true(rd:close())
    -- statements that would move the worker off its snapshot are refused; a bad query keeps SQLite's message
    for _, sql in ipairs({ "COMMIT", "BEGIN", "ROLLBACK", "SAVEPOINT x", "ATTACH ':memory:' AS other",
                           "PRAGMA data_version" }) do
      rd = assert(st._conn:snapshot_reader{ worker = true })
      assert(rd:start({ { sql, {} } }))
      local _, e, code = rd:each(1, function() end)
      assert.equal("READONLY", code, sql)
      assert.matches("one read-only statement", e, 1, true)
      rd:close()
    end
    rd = assert(st._conn:snapshot_reader{ worker = true })
    assert(rd:start({ { "SELECT count(*) FROM no_such_table", {} } }))
    local _, e, code = rd:each(1, function() end)
    assert.equal("SQLITE", code)
    assert.matches("no such table: no_such_table", e, 1, true)
    rd:close()
    rd = assert(st._conn:snapshot_reader{ worker = true })
    assert(rd:start({ { "  with x AS (SELECT 1 AS n) SELECT n FROM x", {} } }))
    local n
    assert.equal(1, rd:each(1, function(r) n = r.n end)) -- a WITH query (lower case, leading blanks) runs
    assert.equal(1, n)
    rd:close()
  end)

  it("one snapshot: rows committed after the reader began are seen by neither thread", function()
    local p = copy()
    local st = open(p)
    local rd = assert(st._conn:snapshot_reader{ worker = true })
    assert.is_true(rd:parallel())
    local w = assert(genaudit.open("sqlite:" .. p, { busy_timeout = 2000 }))
    for i = 1, 5 do assert(w:persist_generation(row("late", i))) end
    w:close()
    assert(rd:start({ { "SELECT count(*) AS n FROM generation_snapshots", {} } }))
    local wn
    rd:each(1, function(r) wn = r.n end)
    local mn = assert(st:query("SELECT count(*) AS n FROM generation_snapshots"))[1].n
    assert.equal(720, wn)
    assert.equal(720, mn)
    rd:close()
    assert.equal(725, assert(st:query("SELECT count(*) AS n FROM generation_snapshots"))[1].n)
  end)

  -- Runs `lua5.4 -e CODE` in the background (arguments after it); returns the marker file written at its end.
  local function background(code, ...)
    n_db = n_db + 1
    local script, marker = dir .. "/bg" .. n_db .. ".lua", dir .. "/bg" .. n_db .. ".done"
    tmp.write(script, code .. "\nlocal f = assert(io.open(" .. string.format("%q", marker) .. ", 'w'))"
      .. " f:write('ok') f:close()\n")
    local args = {}
    for i, v in ipairs({ ... }) do args[i] = q(v) end
    os.execute(ENV .. "lua5.4 " .. q(script) .. " " .. table.concat(args, " ") .. " >" .. q(marker .. ".log")
      .. " 2>&1 &")
    return marker
  end
  local function exists(path)
    local f = io.open(path, "rb")
    if f then f:close() end
    return f ~= nil
  end
  -- verify() in a loop until the marker appears; returns the reports and how many ran split
  local function verify_until(st, marker)
    local reports, split, t0 = {}, 0, os.time()
    repeat
      local r = assert(audit.verify(st, { on_plan = function(_, s) if s then split = split + 1 end end }))
      reports[#reports + 1] = r
    until exists(marker) or os.time() - t0 > 60
    assert.is_true(exists(marker), "the background process did not finish")
    return reports, split
  end

  it("a store an async writer appends to while verify reads verifies ok every time #timing", function()
    local p = copy()
    local st = open(p)
    local marker = background([[
local g = require("genaudit")
local core = require("genaudit.core")
local s = assert(g.open("sqlite:" .. arg[1], { async = { batch = 5 } }))
local t0 = core.monotonic_us()
local i = 0
while core.monotonic_us() - t0 < 2500000 do
  i = i + 1
  assert(s:persist_generation{ org_id = "w", user_id = "u" .. i, platform = "x", template_id = "t",
    final_system_prompt = "system", final_user_prompt = "user " .. i, content = "c" .. i,
    token_usage = { prompt_tokens = 1, completion_tokens = 1 }, performance = { total_latency_ms = 1,
    provider_latency_ms = 1 }, repair_info = {} })
  if i % 5 == 0 then assert(s:flush()) end
end
assert(s:flush())
s:close()
]], p)
    local reports, split = verify_until(st, marker)
    assert.equal("ok", tmp.read(marker), tmp.read(marker .. ".log"))
    local grew = 0
    for i, r in ipairs(reports) do
      assert.is_true(r.ok, r.problems[1] and ((r.problems[1].id or "") .. ": " .. r.problems[1].what))
      if i > 1 and r.rows > reports[i - 1].rows then grew = grew + 1 end
    end
    assert.is_true(#reports >= 3, "only " .. #reports .. " verifies ran")
    assert.is_true(grew >= 1, "the writer appended nothing between two verifies")
    assert.is_true(split >= 1, "no verify ran split")
    local last = assert(audit.verify(st))
    assert.is_true(last.ok)
  end)

  it("purges running while verify reads never produce a false problem #timing", function()
    local p = copy()
    local st = open(p)
    -- every row older than the current second purged, again and again, while more are written
    local marker = background([[
local g = require("genaudit")
local audit = require("genaudit.audit")
local core = require("genaudit.core")
local s = assert(g.open("sqlite:" .. arg[1], { busy_timeout = 5000 }))
local t0 = core.monotonic_us()
local i, purged = 0, 0
while core.monotonic_us() - t0 < 3000000 do
  for _ = 1, 3 do
    i = i + 1
    assert(s:persist_generation{ org_id = "p", user_id = "u" .. i, platform = "x", template_id = "t",
      final_system_prompt = "system", final_user_prompt = "user " .. i, content = "c" .. i,
      token_usage = { prompt_tokens = 1, completion_tokens = 1 }, performance = { total_latency_ms = 1,
      provider_latency_ms = 1 }, repair_info = {} })
  end
  purged = purged + assert(audit.purge(s, { older_than = os.date("!%Y-%m-%d %H:%M:%S") }))
end
assert(purged > 0, "nothing purged")
s:close()
]], p)
    local reports, split = verify_until(st, marker)
    assert.equal("ok", tmp.read(marker), tmp.read(marker .. ".log"))
    local saw_purge = 0
    for _, r in ipairs(reports) do
      assert.is_true(r.ok, r.problems[1] and ((r.problems[1].id or "") .. ": " .. r.problems[1].what))
      if r.purged > 0 then saw_purge = saw_purge + 1 end
    end
    assert.is_true(#reports >= 3, "only " .. #reports .. " verifies ran")
    assert.is_true(saw_purge >= 1, "no verify saw a purged row")
    assert.is_true(split >= 1, "no verify ran split")
    local n = assert(st:query("SELECT count(*) AS n, sum(rows) AS r FROM purges"))[1]
    assert.is_true(n.n >= 2 and n.r >= 720, "purges: " .. n.n .. " rows " .. tostring(n.r))
    assert.is_true(assert(audit.verify(st)).ok)
  end)
end)
