-- genaudit.copy — copies every snapshot of one store into another (SQLite
-- into PostgreSQL, or any pair), behind `genaudit copy`. Rows stream from the
-- source in id order with store:each (memory bounded by one batch) and are
-- written with persist_generation, keeping their id and created_at; the
-- metric documents are decoded (genaudit.json: integers stay integers,
-- null stays null) and rebuilt by the C row builder, which gives back the
-- same bytes for documents genaudit wrote. Per batch of rows, one query asks
-- the destination which ids it already holds; those are skipped, so a copy
-- can be run again after an interruption. A destination in async mode
-- (genaudit.open(url, { async = ... })) gets the rows through its writer
-- thread, in batched transactions, and is flushed at the end.
local json = require("genaudit.json")
local schema = require("genaudit.schema")

local M = {}

local BATCH = 500

-- M.decode_json(text [, raw_depth]) -> value | nil, err. Objects and arrays
-- become tables, null becomes genaudit.null, integers stay integers; with
-- raw_depth, objects and arrays nested deeper stay JSON text that
-- persist_generation writes back as it is.
function M.decode_json(text, raw_depth)
  local v, err = json.decode(text, raw_depth)
  if v == nil then return nil, (tostring(err):gsub("^INVALID: ", "")) end
  return v
end

-- ---- rows ----

local TEXT_COLUMNS = schema.TEXT_COLUMNS
local DOCUMENTS = {} -- persist_generation field -> column
for col, field in pairs(schema.DOCUMENTS) do DOCUMENTS[field] = col end
-- How deep each document is rebuilt as Lua values: the members the row
-- builder checks (token counts, cost, latencies, repair_count, repair_types,
-- repair_log as an array) are; what lies deeper (the per-call arrays, each
-- repair_log entry) is kept as text. 1 = the document's own members. So the
-- exact cost survives a copy: token_metrics.estimated_cost_picousd is decoded
-- as an integer (checked again against estimated_cost by the row builder),
-- each call's cost_picousd is inside the calls text. (LuaJIT decodes an
-- integer of 2^53 or more as a double: such a row is refused, not rounded.)
local RAW_DEPTH = { token_metrics = 1, performance_metrics = 1, repair_metrics = 2, request_params = 1 }

-- the stored columns only: the generated ones (json_extract per row on
-- SQLite) would cost more than the rest of the read
-- (purged_at: a purged row has lost its payloads, so it cannot be rebuilt
-- in another store; it is counted, not copied)
local SELECT_SOURCE = "SELECT " .. table.concat(schema.COLUMNS, ", ")
  .. ", purged_at FROM generation_snapshots ORDER BY id"

-- Sets the decoded documents of a stored row on `g`; nil, err for one that
-- is not JSON. (persist_generation ignores the fields it does not know, so
-- copy passes the row itself.)
local function decode_documents(row, g)
  for field, col in pairs(DOCUMENTS) do
    local text = row[col]
    if text ~= nil then
      local v, err = json.decode(text, RAW_DEPTH[col])
      if v == nil then return nil, col .. ": " .. tostring(err):gsub("^INVALID: ", "") end
      g[field] = v
    end
  end
  return g
end

-- M.generation(row) -> the persist_generation table for a stored row | nil, err
function M.generation(row)
  local g = {}
  for _, c in ipairs(TEXT_COLUMNS) do g[c] = row[c] end
  return decode_documents(row, g)
end

-- M.run(from, to, opts) -> { copied, skipped, failed, errors = { "id: err", ... } }
-- | nil, err, code (the source could not be read, the destination could not
-- be asked which ids it holds, or could not be flushed). Rows go in id order,
-- opts.batch (500) at a time; opts.max_errors (10) bounds the messages kept;
-- opts.progress(done, total, result) is called after every batch (done:
-- rows seen so far, total: the source's row count when the copy started).
-- Rows an async destination refuses after queueing them are counted failed
-- with the writer's last error.
function M.run(from, to, opts)
  if type(from) ~= "table" or type(from.each) ~= "function" then
    error("bad argument #1 to 'copy' (store expected, got " .. type(from) .. ")", 2)
  end
  if type(to) ~= "table" or type(to.persist_generation) ~= "function" then
    error("bad argument #2 to 'copy' (store expected, got " .. type(to) .. ")", 2)
  end
  opts = opts or {}
  local max_errors = opts.max_errors or 10
  local batch = opts.batch or BATCH
  if type(batch) ~= "number" or batch < 1 or batch % 1 ~= 0 then
    error("bad argument #3 to 'copy' (batch: positive integer expected)", 2)
  end
  local result = { copied = 0, skipped = 0, failed = 0, purged = 0, errors = {} }
  local function failed(id, err)
    result.failed = result.failed + 1
    if #result.errors < max_errors then result.errors[#result.errors + 1] = tostring(id) .. ": " .. tostring(err) end
  end
  local total
  if opts.progress then
    local n, err, code = from:query("SELECT count(*) AS n FROM generation_snapshots", {})
    if not n then return nil, err, code end
    total = n[1].n
  end
  local async = type(to.stats) == "function" and to:stats().mode == "async"
  local refused_before = async and to:stats().failed or 0

  local buf, marks, seen, abort = {}, {}, 0, nil
  local function write_batch()
    local n = #buf
    if n == 0 then return true end
    local ids = {}
    for i = 1, n do ids[i] = buf[i].id end
    if #marks ~= n then
      marks = {}
      for i = 1, n do marks[i] = "?" end
    end
    local present, qerr, qcode = to:query("SELECT id FROM generation_snapshots WHERE id IN ("
      .. table.concat(marks, ",") .. ")", ids)
    if not present then
      abort = { qerr, qcode }
      return false
    end
    local have = {}
    for _, p in ipairs(present) do have[p.id] = true end
    for i = 1, n do
      local row = buf[i]
      buf[i] = nil
      if have[row.id] then
        result.skipped = result.skipped + 1
      elseif row.purged_at ~= nil then
        result.purged = result.purged + 1
      else
        row.purged_at = nil
        local g, gerr = decode_documents(row, row) -- the row, with its documents decoded
        local id, perr
        if g then id, perr = to:persist_generation(g) else perr = "INVALID: " .. gerr end
        if id then result.copied = result.copied + 1 else failed(row.id, perr) end
      end
    end
    seen = seen + n
    if opts.progress then opts.progress(seen, total, result) end
    return true
  end

  local n, err, code = from:each(SELECT_SOURCE, {}, function(row)
    buf[#buf + 1] = row
    if #buf >= batch then return write_batch() end
  end)
  if n and not abort then write_batch() end
  local flushed, ferr, fcode = true, nil, nil
  if type(to.flush) == "function" then flushed, ferr, fcode = to:flush() end
  if not n then return nil, err, code end
  if abort then return nil, abort[1], abort[2] end
  if async then
    local st = to:stats()
    local refused = st.failed - refused_before
    if refused > 0 then
      result.copied = result.copied - refused
      result.failed = result.failed + refused
      if #result.errors < max_errors then
        result.errors[#result.errors + 1] = string.format("%d row(s) refused by the destination: %s", refused,
          tostring(st.last_error))
      end
    end
    -- WRITE_FAILED: rows the writer refused, counted above (or before this copy)
    if fcode == "WRITE_FAILED" then flushed = true end
  end
  if not flushed then return nil, ferr, fcode end
  return result
end

return M
