-- bench/async.lua — issue 7.2: the asynchronous writer.
--
-- 1. Caller-side cost of persist_generation in async mode: what a request
--    handler pays (row checks, the three JSON documents, a copy into the
--    queue). Calls are timed in batches of BATCH (core.monotonic_us has 1 us
--    resolution) between which the queue is flushed, so every call meets a
--    warm, nearly empty queue as in a server that persists a few rows per
--    second; single calls are timed too (1 us resolution) for the tail.
--    A second run floods the queue without pauses (the writer thread busy on
--    the other core) and is reported as detail.
-- 2. Throughput: N rows pushed as fast as possible (queue 10,000, batch 100,
--    on_full = "block") until flush() returns, against bench/raw_insert.c
--    inserting the same bytes 100 rows per transaction, sealed as the async
--    writer seals them (`ahead` mode: the payloads' digests computed by a
--    second thread ahead of the inserts, as the writer's hasher thread does;
--    the record hash, which needs the previous row's, by the inserting
--    thread); and the chain's own cost: raw_insert.c `plain` (no hashing per
--    row) against `ahead`, back to back (their order alternating):
--    async_chain (common.chain: ratio = median of the rounds' ahead / plain,
--    chain_cost = 1 - ratio; chain_cpu_us counts both threads' CPU).
--    Then `store:verify()` over genaudit's store of the last round: the rows
--    per second of a full verification (every digest and record hash
--    recomputed, every link checked), BENCH verify, against the floor of
--    reading every byte it hashes from the same store (a scan of each
--    payload and document, nothing else, on one thread). verify() splits a
--    long chain over two threads (lua/genaudit/audit.lua, csrc/ga_verify.c);
--    the line says how many ran and each one's CPU time (measured: process
--    CPU minus the worker thread's own), and how long the main thread waited
--    for the worker.
-- 3. Queue full: a 32-row queue with on_full = "error" flooded with rows:
--    every call returns an id or FULL, and exactly the acknowledged rows are in
--    the database after flush(). close() without flush() drains as well.
local root = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
package.path = root .. "/?.lua;" .. root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. (rawget(_G, "jit") and "luajit" or "lua54") .. "/?.so;" .. package.cpath

local common = require("bench.common")
local genaudit = require("genaudit")

local N_CALLER = common.size{ small = 320, full = 20000 }
local N_THROUGHPUT = common.size{ small = 200, full = 20000 }
local N_FLOOD = common.size{ small = 500, full = 5000 }
local ROUNDS = common.size{ small = 1, full = 5 }
local BATCH = 16
local K = 16

local rows = common.rows(K)
local dir = common.tmpdir("async")
local now = common.now_us

local function fresh(name)
  local path = dir .. "/" .. name .. ".db"
  common.rmdb(path)
  return path
end

local function count(store)
  return store:query("SELECT count(*) AS n FROM generation_snapshots", {})[1].n
end

common.title("async writer: caller-side cost, throughput, queue full, drain")

-- ---- 1. caller-side cost ----
local caller
do
  local path = fresh("caller")
  local store = assert(genaudit.open("sqlite:" .. path, { async = { queue = 10000, batch = 100 } }))
  local persister = genaudit.persister(store)
  for i = 1, 64 do assert(persister:persist_generation(rows[(i - 1) % K + 1])) end -- warm-up
  assert(store:flush())
  local per_call, single = {}, {}
  for b = 1, math.floor(N_CALLER / BATCH) do
    local t0 = now()
    for i = 1, BATCH do persister:persist_generation(rows[(b + i) % K + 1]) end
    per_call[b] = (now() - t0) / BATCH
    assert(store:flush())
  end
  for b = 1, math.floor(N_CALLER / BATCH) do
    for i = 1, BATCH do
      local t0 = now()
      persister:persist_generation(rows[(b + i) % K + 1])
      single[#single + 1] = now() - t0
    end
    assert(store:flush())
  end
  local st = store:stats()
  assert(st.written == st.queued and st.failed == 0, "caller run: rows missing")
  store:close()
  common.rm(path)

  -- the flood: no pauses, the queue (sized to hold every row) grows while the writer works
  path = fresh("flood")
  store = assert(genaudit.open("sqlite:" .. path, { async = { queue = N_CALLER + 64, batch = 100,
    max_bytes = 4 * 1024 * 1024 * 1024 } }))
  persister = genaudit.persister(store)
  local flood = {}
  for b = 1, math.floor(N_CALLER / BATCH) do
    local t0 = now()
    for i = 1, BATCH do persister:persist_generation(rows[(b + i) % K + 1]) end
    flood[b] = (now() - t0) / BATCH
  end
  assert(store:flush())
  local fst = store:stats()
  store:close()

  -- printed after the throughput rounds: its baseline is raw C's time per row there (issue 16.2)
  caller = { common.median(per_call), common.percentile(per_call, 99), common.median(single),
             common.percentile(single, 99), common.median(flood) }
  common.say("per call, batches of %d then flush(): median %.2f us, p99 %.2f us, mean %.2f us (%d calls)", BATCH,
    common.median(per_call), common.percentile(per_call, 99), common.mean(per_call), N_CALLER)
  common.say("single calls (1 us clock): median %d us, p99 %d us, p99.9 %d us, max %d us", common.median(single),
    common.percentile(single, 99), common.percentile(single, 99.9), common.percentile(single, 100))
  common.say("flood (no pauses, queue up to %d rows, max_depth %d): median %.2f us, p99 %.2f us per call",
    N_CALLER + 64, fst.max_depth, common.median(flood), common.percentile(flood, 99))
end

-- ---- 2. throughput ----
do
  -- the bytes raw C copies: the K rows as genaudit stores them
  local src = fresh("source")
  local sstore = assert(genaudit.open("sqlite:" .. src))
  for i = 1, K do assert(sstore:persist_generation(rows[i])) end
  sstore:close()
  local ga, raw, plain, cpu_hash, cpu_plain, last, verified = {}, {}, {}, {}, {}, nil, nil
  local function run_genaudit(round)
    local path = fresh("throughput")
    local store = assert(genaudit.open("sqlite:" .. path, { synchronous = "normal",
      async = { queue = 10000, batch = 100, on_full = "block" } }))
    local persister = genaudit.persister(store)
    local t0 = now()
    for i = 1, N_THROUGHPUT do assert(persister:persist_generation(rows[(i - 1) % K + 1])) end
    assert(store:flush())
    local t1 = now()
    ga[round] = N_THROUGHPUT / ((t1 - t0) / 1e6)
    last = store:stats()
    assert(count(store) == N_THROUGHPUT, "flush() returned before every row was written")
    if round == ROUNDS then -- the whole store verified: every row rehashed, every link checked
      local vstats = {}
      local v0, c0 = now(), os.clock()
      local report = assert(store:verify({ stats = vstats }))
      local v1, c1 = now(), os.clock()
      assert(report.ok and report.rows == N_THROUGHPUT, "the async writer's store does not verify")
      -- the floor: the same store reading every byte verify hashes (instr scans each), nothing else
      local cols = {}
      for _, c in ipairs({ "final_system_prompt", "final_user_prompt", "content", "drafts", "token_metrics",
                           "performance_metrics", "repair_metrics", "request_params" }) do
        cols[#cols + 1] = "coalesce(instr(CAST(" .. c .. " AS BLOB), x'00'), 0)" -- scans every byte
      end
      local n, f0 = 0, now()
      assert(store:each("SELECT " .. table.concat(cols, " + ") .. " AS b FROM generation_snapshots", {},
        function() n = n + 1 end))
      verified = { rows = report.rows, chains = report.chains, us = v1 - v0, read_rps = n / ((now() - f0) / 1e6),
                   cpu_s = c1 - c0, worker_cpu_s = (vstats.worker_cpu_us or 0) / 1e6,
                   wait_s = (vstats.wait_us or 0) / 1e6,
                   threads = vstats.parallel and (vstats.jobs or 0) > 0 and 2 or 1 }
    end
    store:close()
    common.rmdb(path)
  end
  local function run_raw(mode, into, cpu, round)
    local rpath = fresh("raw")
    assert(genaudit.open("sqlite:" .. rpath)):close()
    local out = common.run(table.concat({ common.tool("raw_insert"), common.quote(src), common.quote(rpath),
      string.format("%d", N_THROUGHPUT), "100", mode }, " "))
    local kv = common.kv(out)
    into[round], cpu[round] = kv.rows_per_s, kv.cpu_us_per_row
    common.rmdb(rpath)
  end
  for round = 1, ROUNDS do -- rotating which goes first
    local function raw_pair()
      if round % 2 == 1 then
        run_raw("ahead", raw, cpu_hash, round)
        run_raw("plain", plain, cpu_plain, round)
      else
        run_raw("plain", plain, cpu_plain, round)
        run_raw("ahead", raw, cpu_hash, round)
      end
    end
    if round % 2 == 1 then
      run_genaudit(round)
      raw_pair()
    else
      raw_pair()
      run_genaudit(round)
    end
    common.say("round %d: genaudit async %s rows/s (push + flush), raw C 100/txn %s rows/s (plain, no hashing: %s)",
      round, common.num(ga[round]), common.num(raw[round]), common.num(plain[round]))
  end
  common.rmdb(src)
  local g, r = common.median(ga), common.median(raw)
  common.say("spread over the rounds (rows/s): genaudit %s..%s, raw C %s..%s, raw C plain %s..%s",
    common.num(common.percentile(ga, 0)), common.num(common.percentile(ga, 100)),
    common.num(common.percentile(raw, 0)), common.num(common.percentile(raw, 100)),
    common.num(common.percentile(plain, 0)), common.num(common.percentile(plain, 100)))
  common.bench("async_throughput", "rows/s", {
    { "genaudit", g }, { "baseline", "raw_c_batch100:" .. common.num(r) }, { "ratio", string.format("%.3f", g / r) },
    { "target", ">=0.90" },
  })
  common.chain("async_chain", "raw_c_plain_batch100", raw, plain, cpu_hash, cpu_plain)
  -- the caller's cost per row against raw C's whole time per row inserting the same rows 100 per transaction
  local raw_us = 1e6 / r
  common.bench("async_caller", "us", {
    { "genaudit", caller[1] }, { "baseline", "raw_c_batch100_us_per_row:" .. common.num(raw_us) },
    { "ratio", string.format("%.3f", caller[1] / raw_us) }, { "target", "<=0.1" },
    { "p99", caller[2] }, { "p99_ratio", string.format("%.3f", caller[2] / raw_us) }, { "p99_target", "<=0.5" },
    { "single_p50", caller[3] }, { "single_p99", caller[4] }, { "flood_p50", caller[5] },
  })
  common.bench("verify", "rows/s", {
    { "genaudit", verified.rows / (verified.us / 1e6) }, { "rows", verified.rows },
    { "baseline", "read_bytes:" .. common.num(verified.read_rps) },
    { "ratio", string.format("%.3f", verified.rows / (verified.us / 1e6) / verified.read_rps) },
    { "target", ">=50000" }, { "threads", verified.threads },
    { "main_cpu_s", string.format("%.3f", verified.cpu_s - verified.worker_cpu_s) },
    { "worker_cpu_s", string.format("%.3f", verified.worker_cpu_s) },
    { "main_wait_s", string.format("%.3f", verified.wait_s) },
  })
  common.say("store:verify() over the async writer's store: %d rows in %d chain(s), %.1f ms (every payload digest and"
    .. " record hash recomputed) on %d thread(s): CPU %.3f s on the main thread (which waited %.3f s for the worker),"
    .. " %.3f s on the worker", verified.rows, verified.chains, verified.us / 1000, verified.threads,
    verified.cpu_s - verified.worker_cpu_s, verified.wait_s, verified.worker_cpu_s)
  common.bench("async_stats", "rows", {
    { "queued", last.queued }, { "written", last.written }, { "baseline", "queued:" .. last.queued },
    { "ratio", last.written / last.queued }, { "target", "=1" }, { "failed", last.failed },
    { "max_depth", last.max_depth }, { "batches", last.batches }, { "retries", last.retries },
  })
end

-- ---- 3. queue full, flush and close drain ----
do
  local path = fresh("full")
  local store = assert(genaudit.open("sqlite:" .. path, { async = { queue = 32, batch = 8, on_full = "error" } }))
  local persister = genaudit.persister(store)
  local acked, full, other = {}, 0, 0
  for i = 1, N_FLOOD do
    local id, err, code = persister:persist_generation(rows[(i - 1) % K + 1])
    if id then
      acked[#acked + 1] = id
    elseif code == "FULL" then
      full = full + 1
    else
      other = other + 1
      common.say("unexpected error: %s", tostring(err))
    end
  end
  assert(store:flush())
  local written = count(store)
  -- every acknowledged id is there, and nothing else
  local present = 0
  for i = 1, #acked, 97 do
    present = present + #store:query("SELECT id FROM generation_snapshots WHERE id = ?", { acked[i] })
  end
  local st = store:stats()
  store:close()
  common.bench("async_queue_full", "rows", {
    { "offered", N_FLOOD }, { "acked", #acked }, { "full", full }, { "other_errors", other },
    { "written", written }, { "lost", #acked - written }, { "max_depth", st.max_depth },
    { "baseline", "acked:" .. #acked }, { "ratio", written / #acked }, { "target", "=1" },
  })
  common.say("queue of 32, on_full=error: %d offered, %d acknowledged, %d refused with FULL; %d rows in the store "
    .. "after flush() (sampled ids present: %d/%d)", N_FLOOD, #acked, full, written, present, math.ceil(#acked / 97))
  common.rmdb(path)

  -- close() without flush(): the queue is drained before the store closes
  path = fresh("drain")
  store = assert(genaudit.open("sqlite:" .. path, { async = { queue = 100000, batch = 100 } }))
  persister = genaudit.persister(store)
  local n = N_FLOOD
  for i = 1, n do assert(persister:persist_generation(rows[(i - 1) % K + 1])) end
  local pending = store:stats().pending
  local t0 = now()
  store:close()
  local close_ms = (now() - t0) / 1000
  store = assert(genaudit.open("sqlite:" .. path))
  local after = count(store)
  store:close()
  common.bench("async_close_drain", "rows", {
    { "acked", n }, { "pending_at_close", pending }, { "written", after }, { "lost", n - after },
    { "close_ms", close_ms }, { "baseline", "acked:" .. n }, { "ratio", after / n }, { "target", "=1" },
  })
  common.say("close() with %d of %d rows still queued took %.1f ms and left %d rows in the store", pending, n,
    close_ms, after)
  common.rmdb(path)
end
common.rm(dir)
