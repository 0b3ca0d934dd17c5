-- The async writer: persist() queues, a C thread commits in batches,
-- flush()/close() drain, nothing acknowledged is dropped silently.
local genaudit = require("genaudit")
local tmp = require("spec.support.tmp")

local function row(i, over)
  local r = {
    org_id = 1, user_id = 2, platform = "x", template_id = "t" .. (i % 3),
    final_system_prompt = "system " .. i, final_user_prompt = "user\0" .. i,
    token_usage = { prompt_tokens = i, completion_tokens = 1, estimated_cost = i / 1e6 },
    performance = { total_latency_ms = 1.5, provider_latency_ms = 1 }, repair_info = { repair_count = i % 2 },
    content = "content " .. i,
  }
  for k, v in pairs(over or {}) do r[k] = v end
  return r
end

-- Holds SQLite's write lock on `db` for `ms` from a separate sqlite3 process.
local function hold_write_lock(db, ms)
  local ready = db .. ".locked"
  os.remove(ready)
  os.execute(("(echo 'BEGIN IMMEDIATE;'; echo '.shell touch %s'; sleep %.3f; echo 'COMMIT;') | sqlite3 %s &")
    :format(ready, ms / 1000, db))
  for _ = 1, 500 do
    local f = io.open(ready)
    if f then f:close() return end
    os.execute("sleep 0.01")
  end
  error("sqlite3 did not take the lock")
end

local function count(store)
  return store:query("SELECT count(*) AS n FROM generation_snapshots")[1].n
end

describe("genaudit.store async mode", function()
  local dir, db, store

  before_each(function()
    dir = tmp.dir()
    db = dir .. "/a.db"
  end)
  after_each(function()
    if store then store:close() end
    store = nil
    os.execute("sleep 0.05") -- let a background sqlite3 finish before removing its files
    tmp.rm(dir)
  end)

  it("returns ids at once and commits every row by flush()", function()
    store = assert(genaudit.open("sqlite:" .. db, { async = true }))
    local ids = {}
    for i = 1, 200 do ids[i] = assert(store:persist_generation(row(i))) end
    assert.is_true(store:flush())
    assert.equal(200, count(store))
    local r = store:query("SELECT * FROM generation_snapshots WHERE id = ?", { ids[7] })[1]
    assert.same({ "user\0" .. 7, "content 7", 7 / 1e6 }, { r.final_user_prompt, r.content, r.estimated_cost })
  end)

  it("reports queued, written and failed rows and the largest queue depth", function()
    store = assert(genaudit.open("sqlite:" .. db, { async = { queue = 50 } }))
    for i = 1, 20 do assert(store:persist_generation(row(i))) end
    assert(store:flush())
    local st = store:stats()
    assert.same({ "async", 20, 20, 0, 0 }, { st.mode, st.queued, st.written, st.failed, st.pending })
    assert.is_true(st.max_depth >= 1 and st.max_depth <= 20)
  end)

  it("writes queued rows in batched transactions", function()
    store = assert(genaudit.open("sqlite:" .. db, { async = { queue = 1000, batch = 100 } }))
    hold_write_lock(db, 300)
    for i = 1, 300 do assert(store:persist_generation(row(i))) end
    assert(store:flush())
    local st = store:stats()
    assert.equal(300, st.written)
    assert.is_true(st.batches <= 4, "batches: " .. st.batches)
  end)

  it("returns FULL instead of dropping a row when the queue is full and on_full = 'error'", function()
    store = assert(genaudit.open("sqlite:" .. db, { async = { queue = 5, on_full = "error" } }))
    hold_write_lock(db, 400)
    local accepted, full_err = 0, nil
    for i = 1, 20 do
      local id, err, code = store:persist_generation(row(i))
      if id then accepted = accepted + 1 else full_err = { err, code } end
    end
    assert.same({ "FULL: queue full (5 rows pending)", "FULL" }, full_err)
    assert(store:flush())
    assert.equal(accepted, count(store))
    assert.is_true(accepted >= 5)
  end)

  it("blocks the caller while the queue is full (on_full = 'block') and loses nothing", function()
    store = assert(genaudit.open("sqlite:" .. db, { async = { queue = 2, batch = 1 } }))
    hold_write_lock(db, 200)
    for i = 1, 10 do assert(store:persist_generation(row(i))) end
    assert(store:flush())
    assert.equal(10, count(store))
  end)

  it("drains the queue on close()", function()
    store = assert(genaudit.open("sqlite:" .. db, { async = true }))
    for i = 1, 1000 do assert(store:persist_generation(row(i))) end
    assert.is_true(store:close())
    store = assert(genaudit.open("sqlite:" .. db))
    assert.equal(1000, count(store))
  end)

  it("counts a row SQLite refuses as failed, reports it, and writes the others", function()
    store = assert(genaudit.open("sqlite:" .. db, { async = true }))
    assert(os.execute(("sqlite3 %s \"CREATE TRIGGER poison BEFORE INSERT ON generation_snapshots " ..
      "WHEN NEW.template_id = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END;\""):format(db)))
    assert(store:persist_generation(row(1)))
    assert(store:persist_generation(row(2, { template_id = "poison" })))
    assert(store:persist_generation(row(3)))
    assert.same({ nil, "WRITE_FAILED: 1 row(s) could not be written; last error: row refused: poisoned row",
      "WRITE_FAILED" }, { store:flush() })
    local st = store:stats()
    assert.same({ 2, 1 }, { st.written, st.failed })
    assert.equal(2, count(store))
  end)

  it("checks rows before queueing them: a bad row returns INVALID and is not queued", function()
    store = assert(genaudit.open("sqlite:" .. db, { async = true }))
    assert.same({ nil, "INVALID: created_at must be 'YYYY-MM-DD HH:MM:SS[.fff]' (UTC)", "INVALID" },
      { store:persist_generation(row(1, { created_at = "yesterday" })) })
    assert.same({ nil, "INVALID: org_id must be a string or an integer (got boolean)", "INVALID" },
      { store:persist_generation(row(1, { org_id = false })) })
    assert.equal(0, store:stats().queued)
  end)

  it("keeps an explicit created_at in async mode", function()
    store = assert(genaudit.open("sqlite:" .. db, { async = true }))
    local id = assert(store:persist_generation(row(1, { created_at = "2026-01-02 03:04:05.678" })))
    assert(store:flush())
    assert.equal("2026-01-02 03:04:05.678",
      store:query("SELECT created_at FROM generation_snapshots WHERE id = ?", { id })[1].created_at)
  end)

  it("refuses async mode for an in-memory store", function()
    store = assert(genaudit.open("sqlite::memory:"))
    assert.same({ nil, "ASYNC: async mode needs a database file (not :memory:)", "ASYNC" },
      { store:start_async() })
  end)

  it("refuses to start async mode twice", function()
    store = assert(genaudit.open("sqlite:" .. db, { async = true }))
    assert.same({ nil, "ASYNC: the store is already in async mode", "ASYNC" }, { store:start_async() })
  end)

  it("flush() in synchronous mode is a no-op returning true, and stats count persisted rows", function()
    store = assert(genaudit.open("sqlite:" .. db))
    assert(store:persist_generation(row(1)))
    assert.is_true(store:flush())
    local st = store:stats()
    assert.same({ "sync", 1, 0 }, { st.mode, st.written, st.failed })
  end)

  it("raises on bad async options", function()
    store = assert(genaudit.open("sqlite:" .. db))
    assert.has_error(function() store:start_async{ queue = 0 } end)
    assert.has_error(function() store:start_async{ on_full = "drop" } end)
    assert.has_error(function() store:start_async{ linger_ms = -1 } end)
    assert.has_error(function() store:start_async{ linger_ms = 1001 } end)
    assert.has_error(function() store:start_async{ linger_ms = 1.5 } end)
  end)

  -- linger_ms: a short batch waits for more rows (a server's rows come one
  -- per request); the wait is bounded, a full batch, flush() and close() end it.
  describe("linger_ms", function()
    local socket = require("socket")
    -- waits up to `s` seconds for `n` committed rows; the seconds it took | nil
    local function committed_within(n, s)
      local t0 = socket.gettime()
      repeat
        if count(store) >= n then return socket.gettime() - t0 end
        socket.sleep(0.005)
      until socket.gettime() - t0 > s
    end

    it("commits rows that arrive one by one in one transaction", function()
      store = assert(genaudit.open("sqlite:" .. db, { async = { batch = 100, linger_ms = 1000 } }))
      for i = 1, 40 do
        assert(store:persist_generation(row(i)))
        socket.sleep(0.002)
      end
      assert(store:flush())
      local st = store:stats()
      assert.same({ 40, 0 }, { st.written, st.failed })
      assert.equal(40, count(store))
      -- the first row may be taken alone before the next one arrives; the rest wait together
      assert.is_true(st.batches <= 2, "batches: " .. st.batches)
    end)

    it("commits a lone row once linger_ms has passed, without a flush", function()
      store = assert(genaudit.open("sqlite:" .. db, { async = { batch = 100, linger_ms = 50 } }))
      assert(store:persist_generation(row(1)))
      assert.is_truthy(committed_within(1, 5))
      assert.equal(1, store:stats().batches)
    end)

    it("does not wait once the batch is full", function()
      store = assert(genaudit.open("sqlite:" .. db, { async = { batch = 10, linger_ms = 1000 } }))
      for i = 1, 10 do assert(store:persist_generation(row(i))) end
      local took = committed_within(10, 5)
      assert.is_truthy(took)
      assert.is_true(took < 0.9, "a full batch waited " .. took .. " s") -- the linger would be 1 s
      assert.equal(1, store:stats().batches)
    end)

    it("ends the wait on flush() and on close()", function()
      store = assert(genaudit.open("sqlite:" .. db, { async = { batch = 100, linger_ms = 1000 } }))
      for i = 1, 3 do assert(store:persist_generation(row(i))) end
      local t0 = socket.gettime()
      assert.is_true(store:flush())
      local took = socket.gettime() - t0
      assert.is_true(took < 0.9, "flush waited " .. took .. " s") -- the linger would be 1 s
      assert.equal(3, count(store))
      for i = 4, 6 do assert(store:persist_generation(row(i))) end
      t0 = socket.gettime()
      store:close()
      store = nil
      took = socket.gettime() - t0
      assert.is_true(took < 0.9, "close waited " .. took .. " s")
      local ro = assert(genaudit.open("sqlite:" .. db, { readonly = true }))
      assert.equal(6, ro:query("SELECT count(*) AS n FROM generation_snapshots")[1].n)
      ro:close()
    end)
  end)
end)

-- The writer thread opens its own connection: it takes the store's journal
-- mode, never WAL behind the user's back (a rollback-journal file stays one).
describe("genaudit.store async mode keeps the store's journal_mode", function()
  local dir, db, stores

  local function cli(sql)
    local p = assert(io.popen(("sqlite3 '%s' '%s'"):format(db, sql)))
    local out = p:read("a")
    p:close()
    return (out:gsub("%s+$", ""))
  end

  local function exists(path)
    local f = io.open(path)
    if f then f:close() end
    return f ~= nil
  end

  before_each(function()
    dir = tmp.dir()
    db = dir .. "/j.db"
    stores = {}
  end)
  after_each(function()
    for _, s in ipairs(stores) do s:close() end
    tmp.rm(dir)
  end)

  it("a journal_mode = 'delete' store stays in rollback-journal mode after start_async", function()
    local store = assert(genaudit.open("sqlite:" .. db, { journal_mode = "delete", async = { batch = 10 } }))
    stores[1] = store
    for i = 1, 100 do assert(store:persist_generation(row(i))) end
    assert.is_true(store:flush())
    assert.is_false(exists(db .. "-wal"))
    assert.equal(100, count(store))
    assert.is_true(store:close())
    assert.equal("delete", cli("PRAGMA journal_mode"))
    assert.equal("100", cli("SELECT count(*) FROM generation_snapshots"))
  end)

  it("in rollback-journal mode the writer, the store's reads and another store's writes all get through", function()
    local a = assert(genaudit.open("sqlite:" .. db, { journal_mode = "delete", async = { batch = 5 } }))
    local b = assert(genaudit.open("sqlite:" .. db, { journal_mode = "delete" }))
    stores[1], stores[2] = a, b
    local seen = 0
    for i = 1, 200 do
      assert(a:persist_generation(row(i)))
      if i % 4 == 0 then assert(b:persist_generation(row(i, { platform = "sync" }))) end
      if i % 10 == 0 then
        local n = count(a) -- reads while the writer commits: waits for the lock, never fails
        assert.is_true(n >= seen)
        seen = n
      end
    end
    assert.is_true(a:flush())
    assert.equal(250, count(a))
    assert.equal(50, b:query("SELECT count(*) AS n FROM generation_snapshots WHERE platform = 'sync'")[1].n)
    assert.same({ "async", 200, 0 }, { a:stats().mode, a:stats().written, a:stats().failed })
    assert.is_false(exists(db .. "-wal"))
  end)

  it("a journal_mode = 'wal' store (the default) is still in WAL mode", function()
    local store = assert(genaudit.open("sqlite:" .. db, { async = true }))
    stores[1] = store
    assert(store:persist_generation(row(1)))
    assert.is_true(store:flush())
    assert.is_true(store:close())
    assert.equal("wal", cli("PRAGMA journal_mode"))
  end)
end)
