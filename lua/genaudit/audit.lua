-- genaudit.audit — tamper evidence over a store (README, "Tamper evidence"):
-- verify() recomputes every row's record hash and walks every chain;
-- checkpoint() signs the heads of all chains (Ed25519) for publishing outside
-- the database; purge() removes old payloads through the one change the
-- database allows. The hashing and the signatures are genaudit.core's
-- (csrc/ga_chain.c, csrc/ga_digest.c: OpenSSL's libcrypto).
local core = require("genaudit.core")
local json = require("genaudit.json")

local M = {}

M.CHECKPOINT_FORMAT = "genaudit-checkpoint/1"

-- audit.keygen() -> private_pem, public_pem: a fresh Ed25519 key pair
-- (PKCS#8 and SubjectPublicKeyInfo PEM, the formats `openssl pkey` reads).
M.keygen = core.ed25519_keygen
local ZERO = ("0"):rep(64)
local PAYLOADS = { "final_system_prompt", "final_user_prompt", "content", "drafts" }
local FIELDS = {} -- the record's non-payload fields, as columns
for _, f in ipairs(core.record_fields()) do
  if not f.payload then FIELDS[#FIELDS + 1] = f.name end
end

local function fail(code, msg) return nil, code .. ": " .. msg, code end

local function columns()
  local cols = {}
  for _, c in ipairs(FIELDS) do cols[#cols + 1] = c end
  for _, p in ipairs(PAYLOADS) do cols[#cols + 1] = p; cols[#cols + 1] = p .. "_sha256" end
  cols[#cols + 1] = "record_hash"
  cols[#cols + 1] = "purged_at"
  cols[#cols + 1] = "purged_by"
  return table.concat(cols, ", ")
end
local COLUMNS = columns()

-- The chained rows' columns for verify(). A payload never reaches Lua: the
-- database compares its digest with the stored one and answers with a
-- status (p__st, below): SQLite through genaudit's own SQL function
-- (csrc/ga_store.c), PostgreSQL through its built-in sha256() over the
-- text's UTF-8 bytes. On SQLite the record hash itself is computed in the
-- query too (genaudit_record_hash over the fields in core.record_fields()
-- order, each payload as its stored digest: what core.record_hash computes
-- from them), so only the columns the walk compares reach Lua. What verify
-- hashes is the same either way.
--   p__st: 0 no payload, no digest; 1 payload matching its digest;
--          2 payload without a digest; 3 payload not matching its digest;
--          4 no payload, a digest (purged); 5 no payload, a digest column
--          that is not 64 lower-case hex digits
local WALKED = { id = true, chain_id = true, chain_seq = true, prev_hash = true, created_at = true }
local function payload_status(backend, p)
  local d = p .. "_sha256"
  local calc, isdigest
  if backend == "postgresql" then
    calc = "encode(sha256(convert_to(" .. p .. "::text, 'UTF8')), 'hex')"
    isdigest = d .. " ~ '^[0-9a-f]{64}$'"
  else
    calc = "genaudit_sha256(" .. p .. ")"
    isdigest = "typeof(" .. d .. ") = 'text' AND length(" .. d .. ") = 64 AND " .. d .. " NOT GLOB '*[^0-9a-f]*'"
  end
  return ("CASE WHEN %s IS NULL THEN (CASE WHEN %s IS NULL THEN 0 WHEN %s THEN 4 ELSE 5 END)"
    .. " WHEN %s IS NULL THEN 2 WHEN %s = %s THEN 1 ELSE 3 END AS %s__st"):format(p, d, isdigest, d, calc, d, p)
end
local function chained_columns(backend)
  local cols = {}
  if backend == "postgresql" then
    for _, c in ipairs(FIELDS) do cols[#cols + 1] = c end
    for _, p in ipairs(PAYLOADS) do cols[#cols + 1] = p .. "_sha256" end
  else
    local args = {}
    for _, f in ipairs(core.record_fields()) do
      args[#args + 1] = f.payload and (f.name .. "_sha256") or f.name
      if WALKED[f.name] then cols[#cols + 1] = f.name end
    end
    cols[#cols + 1] = "genaudit_record_hash(" .. table.concat(args, ", ") .. ") AS record__calc"
  end
  for _, p in ipairs(PAYLOADS) do cols[#cols + 1] = payload_status(backend, p) end
  cols[#cols + 1] = "record_hash"
  cols[#cols + 1] = "purged_at"
  cols[#cols + 1] = "purged_by"
  return table.concat(cols, ", ")
end
local CHAINED = { sqlite = chained_columns("sqlite"), postgresql = chained_columns("postgresql") }

-- SQLite keeps a value's type beside its bytes: the same bytes stored as a
-- BLOB hash alike but compare unlike (a report's WHERE org_id = '42' skips
-- them). So on SQLite verify also reads whether every hashed column holds
-- text (or NULL) and chain_seq an integer.
local function sqlite_types()
  local conds = { "typeof(chain_seq) NOT IN ('integer', 'null')" }
  for _, c in ipairs(FIELDS) do
    if c ~= "chain_seq" then conds[#conds + 1] = "typeof(" .. c .. ") NOT IN ('text', 'null')" end
  end
  for _, p in ipairs(PAYLOADS) do
    conds[#conds + 1] = "typeof(" .. p .. ") NOT IN ('text', 'null')"
    conds[#conds + 1] = "typeof(" .. p .. "_sha256) NOT IN ('text', 'null')"
  end
  conds[#conds + 1] = "typeof(record_hash) NOT IN ('text', 'null')"
  return ", CASE WHEN " .. table.concat(conds, " OR ") .. " THEN 1 ELSE 0 END AS bad_types"
end
local SQLITE_TYPES = sqlite_types()

local BAD_TYPES = "a column holds a value that is not text (its type was changed)"

-- Whether a chained row's payload p is there (its p__st).
local function present(r, p)
  local st = tonumber(r[p .. "__st"])
  return st == 1 or st == 2 or st == 3
end

-- What is wrong with one chained row's payloads and hash (nil: nothing),
-- and its hash. On PostgreSQL fills `fields` (reused across rows) with what
-- core.record_hash reads; on SQLite (in_sql) the query hashed the row.
local function check_chained(r, fields, in_sql)
  if tonumber(r.bad_types) == 1 then return BAD_TYPES end
  if not in_sql then
    for _, c in ipairs(FIELDS) do
      local v = r[c]
      if v ~= nil and type(v) ~= "string" then v = c == "chain_seq" and v or tostring(v) end
      fields[c] = v
    end
  end
  for _, p in ipairs(PAYLOADS) do
    local st, d = tonumber(r[p .. "__st"]), p .. "_sha256"
    fields[d] = nil
    if st == 1 or st == 2 or st == 3 then
      if r.purged_at ~= nil then return p .. " is present on a purged row" end
      if st == 2 then return p .. " has no digest" end
      if st == 3 then return p .. " does not match its digest (edited)" end
      fields[d] = r[d]
    elseif st == 4 or st == 5 then
      if r.purged_at == nil then return p .. " is missing without a purge" end
      if st == 5 then return d .. " is not a digest" end
      fields[d] = r[d]
    end
  end
  local ok, h
  if in_sql then
    ok, h = r.record__calc ~= nil, r.record__calc or "a payload digest or chain_seq is not as written"
  else
    ok, h = pcall(core.record_hash, fields)
  end
  if not ok then return "cannot be hashed (" .. tostring(h):gsub("^record_hash: ", "") .. ")" end
  if h ~= r.record_hash then return "record hash does not match the row (a field was edited)" end
  return nil, h
end

-- A row written before the chain (legacy): what is wrong with it (nil:
-- nothing) and its record hash, from its bytes.
local function check_legacy(r, fields)
  if tonumber(r.bad_types) == 1 then return BAD_TYPES end
  for _, c in ipairs(FIELDS) do
    local v = r[c]
    if v ~= nil and type(v) ~= "string" then v = c == "chain_seq" and v or tostring(v) end
    fields[c] = v
  end
  for _, p in ipairs(PAYLOADS) do fields[p], fields[p .. "_sha256"] = r[p], nil end
  local ok, h = pcall(core.record_hash, fields)
  if not ok then return "cannot be hashed: " .. tostring(h) end
  return nil, h
end

-- The database's chains: registered ones and any a row names.
local function chain_ids(store)
  local rows, err, code = store:query("SELECT chain_id FROM chains UNION SELECT chain_id FROM generation_snapshots"
    .. " WHERE chain_id IS NOT NULL ORDER BY 1")
  if not rows then return nil, err, code end
  local reg
  reg, err, code = store:query("SELECT chain_id FROM chains")
  if not reg then return nil, err, code end
  local registered = {}
  for _, r in ipairs(reg) do registered[r.chain_id] = true end
  local ids = {}
  for i, r in ipairs(rows) do ids[i] = r.chain_id end
  return ids, registered
end

-- Reads and checks a checkpoint file's text against a public key (PEM).
-- Returns the checkpoint body (decoded) | nil, err, code.
function M.read_checkpoint(text, pubkey)
  if type(text) ~= "string" then error("bad argument #1 to 'read_checkpoint' (string expected)", 2) end
  if type(pubkey) ~= "string" then error("bad argument #2 to 'read_checkpoint' (string expected)", 2) end
  local body, sig = text:match("^([^\n]+)\ned25519:(%x+)\n?$")
  if not body or #sig ~= 128 then
    return fail("CHECKPOINT", "not a genaudit checkpoint (a body line, then ed25519:<hex>)")
  end
  local raw = sig:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end)
  local ok, err, code = core.ed25519_verify(pubkey, body, raw)
  if ok == nil then return nil, err, code end
  if not ok then return fail("CHECKPOINT", "the signature does not verify with this public key") end
  local okj, doc = pcall(json.decode, body)
  if not okj or type(doc) ~= "table" or doc.format ~= M.CHECKPOINT_FORMAT or type(doc.chains) ~= "table" then
    return fail("CHECKPOINT", "signed, but not a " .. M.CHECKPOINT_FORMAT .. " document")
  end
  return doc
end

-- The purges on record: purge_id -> { older_than, rows, what, seen = 0 }.
local function purges_of(store)
  local rows, err, code = store:query("SELECT purge_id, older_than, what, rows FROM purges ORDER BY purge_id")
  if not rows then return nil, err, code end
  local out, list = {}, {}
  for _, r in ipairs(rows) do
    local id = tonumber(r.purge_id)
    out[id] = { older_than = r.older_than, rows = tonumber(r.rows), what = r.what, seen = 0 }
    list[#list + 1] = { purge_id = id, older_than = r.older_than, rows = tonumber(r.rows) }
  end
  return out, list
end

-- The scripts table: every source must still hash to its digest.
local function check_scripts(store, problem)
  local ok, err, code = store:each("SELECT digest, encoding, source FROM scripts ORDER BY digest", {}, function(r)
    local src = r.source
    if r.encoding == "base64" then src = core.base64_decode(src or "") end
    if type(src) ~= "string" or core.sha256(src) ~= r.digest then
      problem{ what = "script " .. tostring(r.digest) .. " in the scripts table does not match its digest (edited)" }
    end
  end)
  if not ok then return nil, err, code end
  return true
end

-- On SQLite, verify() reads at ONE snapshot of the database
-- (store:snapshot_reader, csrc/ga_verify.c: every query below sees the same
-- committed state, so an append or a purge committed meanwhile is either
-- wholly seen or not at all) and, on a file store, uses both cores: each
-- chain of at least SPLIT_MIN positions is cut into segments of its
-- position range, alternately the main thread's (read here through the
-- store) and the worker's (a second connection at the same snapshot, on a
-- C thread, its small result rows buffered), PAIR_ROWS positions per pair,
-- MAIN_SHARE of each pair the main thread's (it also walks the worker's rows
-- in Lua). The walk takes the segments in position order, so it sees the
-- rows exactly as one ORDER BY chain_seq would: a NULL position first (its
-- own segment), then numbers, then a position stored as text or a blob (the
-- last segment has no upper bound: SQLite orders them after every number).
-- The cuts are integers between the chain's least and greatest numeric
-- positions; gaps only unbalance the halves, never lose a row.
M.SPLIT_MIN = 4096
M.PAIR_ROWS = 40000
M.MAIN_SHARE = 0.35 -- measured on 200,000 rows: the two threads' CPU times balance there
-- PRAGMA mmap_size on verify's connections (the store's own setting restored
-- after): reading pages mapped instead of copied by pread() measured 7% less
-- CPU over 200,000 rows (SQLite caps it at its SQLITE_MAX_MMAP_SIZE, 2 GB in
-- Debian's build); nil keeps the store's setting
M.MMAP_SIZE = 2147418112
local BOUNDS = "SELECT (SELECT min(chain_seq) FROM generation_snapshots WHERE chain_id = ?1 AND chain_seq >= ?2"
  .. " AND chain_seq <= 9007199254740992) AS lo, (SELECT max(chain_seq) FROM generation_snapshots"
  .. " WHERE chain_id = ?1 AND chain_seq >= ?2 AND chain_seq <= 9007199254740992) AS hi"

-- The segments of chain cid ({ sql, params, lo, hi, worker }, in position
-- order; lo/hi nil: unbounded) | nil (walked in one piece) | nil, err, code.
local function split_chain(store, cid, from, sql, params)
  local b, err, code = store:query(BOUNDS, { cid, from and from.seq or 1 })
  if not b then return nil, err, code end
  local lo, hi = b[1] and b[1].lo, b[1] and b[1].hi
  if type(lo) ~= "number" or type(hi) ~= "number" then return nil end
  lo, hi = math.floor(lo), math.floor(hi)
  -- a position far beyond any real chain (a tamper) is walked in one piece
  if hi > 2 ^ 40 then return nil end
  local span = hi - lo + 1
  if span < math.max(M.SPLIT_MIN, 2) then return nil end
  local size = math.max(math.ceil(span / math.min(math.ceil(span / M.PAIR_ROWS), 4096)), 2)
  local cuts = {} -- segment i holds the positions in [cuts[i - 1], cuts[i])
  local a = lo
  while true do
    local m = a + math.min(math.max(math.floor(size * M.MAIN_SHARE), 1), size - 1)
    cuts[#cuts + 1] = m
    a = a + size
    if a > hi then break end
    cuts[#cuts + 1] = a
  end
  local segs = {}
  local function seg(cond, lo_, hi_, worker)
    local p = {}
    for i, v in ipairs(params) do p[i] = v end
    if lo_ then p[#p + 1] = lo_ end
    if hi_ then p[#p + 1] = hi_ end
    segs[#segs + 1] = { sql = sql .. cond .. " ORDER BY chain_seq", params = p, lo = lo_, hi = hi_, worker = worker }
  end
  if not from then seg(" AND chain_seq IS NULL", nil, nil, false) end
  seg(" AND chain_seq < ?", nil, cuts[1], false)
  for i = 2, #cuts do seg(" AND chain_seq >= ? AND chain_seq < ?", cuts[i - 1], cuts[i], i % 2 == 0) end
  seg(" AND chain_seq >= ?", cuts[#cuts], nil, (#cuts + 1) % 2 == 0)
  return segs
end

local function verify_at(store, opts, snap)
  local report = { ok = true, rows = 0, chains = 0, legacy_rows = 0, purged = 0, problems = {} }
  local function problem(p)
    report.ok = false
    if #report.problems < 100 then report.problems[#report.problems + 1] = p end
  end
  local ids, registered, code = chain_ids(store)
  if not ids then return nil, registered, code end
  local purges, plist
  purges, plist, code = purges_of(store)
  if not purges then return nil, plist, code end
  report.purges = plist
  local since = {}
  if opts.since then
    for _, c in ipairs(opts.since.chains) do since[c.chain_id] = c end
  end
  local extra = store.backend == "postgresql" and "" or SQLITE_TYPES
  local in_sql = store.backend ~= "postgresql" -- the record hash computed by the query
  local heads, fields = {}, {}
  local progress = opts.progress
  local function chain_sql(cid, from) -- the chain's rows (from a checkpoint's position on)
    local sql = "SELECT " .. (CHAINED[store.backend] or CHAINED.sqlite) .. extra
      .. " FROM generation_snapshots WHERE chain_id = ?"
    if from then return sql .. " AND chain_seq >= ?", { cid, from.seq } end
    return sql, { cid }
  end
  local plans, started = {}, false
  if snap and snap:parallel() then
    local jobs = {}
    for _, cid in ipairs(ids) do
      local segs, perr, pcode = split_chain(store, cid, since[cid], chain_sql(cid, since[cid]))
      if perr then return nil, perr, pcode end
      if segs then
        for _, sg in ipairs(segs) do
          if sg.worker then jobs[#jobs + 1] = { sg.sql, sg.params }; sg.job = #jobs end
        end
        plans[cid] = segs
      end
    end
    if #jobs > 0 then
      started = snap:start(jobs) == true
      if not started then -- no worker thread: the main thread reads every segment (same snapshot)
        for _, segs in pairs(plans) do for _, sg in ipairs(segs) do sg.job = nil end end
      end
    end
  end
  if opts.on_plan then opts.on_plan(plans, started) end
  for _, cid in ipairs(ids) do
    report.chains = report.chains + 1
    if not registered[cid] then
      problem{ chain_id = cid, what = "chain " .. cid .. " is not registered (rows inserted around genaudit?)" }
    end
    local from = since[cid]
    local expect_seq, expect_prev = 1, ZERO
    local sql, params = chain_sql(cid, from)
    if from then expect_seq, expect_prev = from.seq, nil end
    local last
    local function walk(r)
      report.rows = report.rows + 1
      local seq = r.chain_seq
      if type(seq) ~= "number" or seq < 1 or seq > 2 ^ 53 or seq % 1 ~= 0 then
        problem{ id = r.id, chain_id = cid, what = "chain_seq " .. tostring(seq) .. " is not a chain position" }
        return
      end
      local where = { id = r.id, chain_id = cid, seq = seq }
      if seq ~= expect_seq then
        where.what = seq > expect_seq and ("rows missing before this one (positions " .. expect_seq .. " to "
          .. (seq - 1) .. " of chain " .. cid .. ")") or ("position " .. seq .. " of chain " .. cid .. " repeated")
        problem(where)
        expect_seq = seq
      end
      if from and seq == from.seq then
        if r.record_hash ~= from.head then
          problem{ id = r.id, chain_id = cid, seq = seq, what = "differs from the checkpoint's head" }
        end
      elseif expect_prev and r.prev_hash ~= expect_prev then
        problem{ id = r.id, chain_id = cid, seq = seq, what = "prev_hash does not link to the row before it" }
      end
      if r.purged_at ~= nil or r.purged_by ~= nil then
        report.purged = report.purged + 1
        local p = purges[tonumber(r.purged_by)]
        if r.purged_at == nil or not p then
          problem{ id = r.id, chain_id = cid, seq = seq, what = "purged outside a recorded purge" }
        elseif p.older_than <= r.created_at then
          problem{ id = r.id, chain_id = cid, seq = seq, what = "purged by purge " .. r.purged_by
            .. ", whose cutoff " .. p.older_than .. " is not after the row's created_at" }
        else
          p.seen = p.seen + 1
        end
        for _, name in ipairs(PAYLOADS) do
          if present(r, name) then
            problem{ id = r.id, chain_id = cid, seq = seq, what = "purged, but " .. name .. " is still there" }
          end
        end
      end
      local bad = check_chained(r, fields, in_sql)
      if bad then problem{ id = r.id, chain_id = cid, seq = seq, what = bad } end
      expect_seq, expect_prev = seq + 1, r.record_hash
      last = r
      if progress and report.rows % 10000 == 0 then progress(report.rows) end
    end
    local ok, err, ecode
    local segs = plans[cid]
    if not segs then
      ok, err, ecode = store:each(sql .. " ORDER BY chain_seq", params, walk)
    else -- the segments in position order: the main thread's read here, the worker's taken from its buffer
      for _, sg in ipairs(segs) do
        if sg.job then ok, err, ecode = snap:each(sg.job, walk)
        else ok, err, ecode = store:each(sg.sql, sg.params, walk) end
        if not ok then break end
      end
    end
    if not ok then return nil, err, ecode end
    local last_seq = last and tonumber(last.chain_seq)
    if from and (not last_seq or last_seq < from.seq) then
      problem{ chain_id = cid, what = "chain " .. cid .. " ends before the checkpoint's position " .. from.seq
        .. " (rows deleted)" }
    elseif not last and registered[cid] then
      problem{ chain_id = cid, what = "chain " .. cid .. " has no rows (rows deleted)" }
    end
    heads[cid] = last_seq and { seq = last_seq, head = last.record_hash } or nil
  end
  if not opts.since then -- a partial walk cannot count a whole purge's rows
    for id, p in pairs(purges) do
      if p.seen ~= p.rows then
        problem{ what = ("purge %d records %d rows, but %d rows name it"):format(id, p.rows, p.seen) }
      end
    end
  end
  -- rows older than the chain: their count is fixed by migration 0008
  local lrows, lerr, lcode = store:query("SELECT legacy_rows FROM chain_genesis")
  if not lrows then return nil, lerr, lcode end
  if #lrows ~= 1 then
    problem{ what = "chain_genesis holds " .. #lrows .. " rows, not the one migration 0008 wrote" }
  end
  local legacy_expected = lrows[1] and tonumber(lrows[1].legacy_rows) or 0
  local lhash = { "genaudit-legacy/1\n" }
  local ok, err, ecode = store:each("SELECT " .. COLUMNS .. extra .. " FROM generation_snapshots"
    .. " WHERE chain_id IS NULL ORDER BY id", {}, function(r)
    report.legacy_rows = report.legacy_rows + 1
    report.rows = report.rows + 1
    local bad, h = check_legacy(r, fields)
    if bad then
      problem{ id = r.id, what = bad }
      h = ZERO
    end
    lhash[#lhash + 1] = h .. "\n"
  end)
  if not ok then return nil, err, ecode end
  report.legacy_hash = core.sha256(table.concat(lhash))
  if report.legacy_rows ~= legacy_expected then
    problem{ what = ("%d rows without a seal, where %d were there when the chain began (rows inserted or deleted"
      .. " around genaudit)"):format(report.legacy_rows, legacy_expected) }
  end
  local sok, serr, scode = check_scripts(store, problem)
  if not sok then return nil, serr, scode end
  local all = {}
  for _, cp in ipairs(opts.checkpoints or {}) do all[#all + 1] = cp end
  if opts.since then all[#all + 1] = opts.since end
  for _, cp in ipairs(all) do
    local when = tostring(cp.created_at)
    for _, c in ipairs(cp.chains) do
      local h = heads[c.chain_id]
      if not h then
        problem{ chain_id = c.chain_id, what = "chain " .. tostring(c.chain_id) .. " of the checkpoint of " .. when
          .. " is gone" }
      elseif h.seq < c.seq then
        problem{ chain_id = c.chain_id, what = ("chain %s ends at position %d, before the checkpoint's %d (rows"
          .. " deleted)"):format(c.chain_id, h.seq, c.seq) }
      else
        -- the row at the checkpoint's position must carry its head hash
        local rows, qerr, qcode = store:query("SELECT id, record_hash FROM generation_snapshots WHERE chain_id = ?"
          .. " AND chain_seq = ?", { c.chain_id, c.seq })
        if not rows then return nil, qerr, qcode end
        if not rows[1] or rows[1].record_hash ~= c.head then
          problem{ id = rows[1] and rows[1].id, chain_id = c.chain_id, seq = c.seq,
                   what = "differs from the checkpoint of " .. when .. " (the chain was rewritten)" }
        end
      end
    end
    if cp.legacy and (cp.legacy.rows ~= report.legacy_rows or cp.legacy.hash ~= report.legacy_hash) then
      problem{ what = "the rows older than the chain differ from the checkpoint of " .. when }
    end
    for _, p in ipairs(type(cp.purges) == "table" and cp.purges or {}) do
      local now = purges[p.purge_id]
      if not now or now.older_than ~= p.older_than or now.rows ~= p.rows then
        problem{ what = "purge " .. tostring(p.purge_id) .. " of the checkpoint of " .. when
          .. " was changed or removed" }
      end
    end
  end
  report.heads = heads
  return report
end

-- audit.verify(store, { checkpoints = { body, ... }, since = body,
--   progress = fn(rows_done) }) -> report | nil, err, code
-- report = { ok = boolean, rows, chains, legacy_rows, purged, problems =
--   { { id, chain_id, seq, what }, ... } (the first ones, in table order),
--   heads, legacy_hash, purges }
-- checkpoints: every signed head must still be there, unchanged; since: a
-- checkpoint verified before: only the rows after it are walked (each
-- chain from its signed head), but every chain it signed must still exist.
-- SQLite only: parallel = false reads on one thread (the report is the same
-- either way); stats = a table filled with how the work was shared
-- (parallel, jobs, worker_cpu_us, wait_us); on_plan = fn(plans, started),
-- called before the walk with each split chain's segments ({ lo, hi,
-- worker, ... }) and whether the worker thread runs (for tests).
function M.verify(store, opts)
  if type(store) ~= "table" or type(store.each) ~= "function" then
    error("bad argument #1 to 'verify' (store expected, got " .. type(store) .. ")", 2)
  end
  opts = opts or {}
  local snap
  if store.backend == "sqlite" and type(rawget(store, "_conn")) == "userdata" then
    local err, code
    snap, err, code = store._conn:snapshot_reader{ worker = opts.parallel ~= false, mmap_size = M.MMAP_SIZE }
    if not snap then return nil, err, code end
  end
  local ok, a, b, c = pcall(verify_at, store, opts, snap)
  if snap and ok and type(opts.stats) == "table" then -- how the work was shared (bench/async.lua prints it)
    for k, v in pairs(snap:stats()) do opts.stats[k] = v end
    opts.stats.parallel = snap:parallel()
  end
  if snap then snap:close() end -- the worker joined, the read transaction ended, on every path
  if not ok then error(a, 0) end
  return a, b, c
end

-- audit.checkpoint(store, private_pem) -> text, body | nil, err, code
-- Verifies the store first (a tampered store is not signed), then signs the
-- heads of every chain, the legacy seal and the time: the text is one JSON
-- line (the exact bytes signed), then "ed25519:" and the signature in hex.
function M.checkpoint(store, key, opts)
  if type(key) ~= "string" then error("bad argument #2 to 'checkpoint' (string expected)", 2) end
  local pub, perr, pcode = core.ed25519_public(key)
  if not pub then return nil, perr, pcode end
  local report, err, code = M.verify(store, opts)
  if not report then return nil, err, code end
  if not report.ok then
    local p = report.problems[1]
    return fail("TAMPERED", "not signing a store that does not verify: " .. (p.id and (p.id .. ": ") or "") .. p.what)
  end
  local chains = {}
  for cid, h in pairs(report.heads) do chains[#chains + 1] = { chain_id = cid, seq = h.seq, head = h.head } end
  table.sort(chains, function(a, b) return a.chain_id < b.chain_id end)
  local body = {
    format = M.CHECKPOINT_FORMAT,
    created_at = os.date("!%Y-%m-%dT%H:%M:%SZ"),
    key_id = core.sha256(pub):sub(1, 16),
    rows = report.rows,
    chains = chains,
    legacy = { rows = report.legacy_rows, hash = report.legacy_hash },
    purges = report.purges,
  }
  local line = json.encode(body)
  local sig = assert(core.ed25519_sign(key, line))
  return line .. "\ned25519:" .. sig:gsub(".", function(c) return ("%02x"):format(c:byte()) end) .. "\n", body
end

-- audit.purge(store, { older_than = "YYYY-MM-DD HH:MM:SS", what = "payloads" })
-- -> rows purged | nil, err, code. Sets the prompts, content and drafts of
-- sealed rows created before older_than to NULL (their digests, metrics and
-- chain stay), and records the purge; one transaction.
function M.purge(store, opts)
  if type(opts) ~= "table" or type(opts.older_than) ~= "string" then
    error("bad argument #2 to 'purge' (table with older_than expected)", 2)
  end
  local what = opts.what or "payloads"
  if what ~= "payloads" then return fail("PURGE", "what must be 'payloads', got '" .. tostring(what) .. "'") end
  return store:purge(opts.older_than, what)
end

return M
