-- Async persist hands the writer thread the metric documents unencoded (a
-- tape, csrc/ga_tape.c) and the writer's threads make the JSON: the same
-- rows persisted synchronously and asynchronously must be stored byte for
-- byte alike, and a row one mode refuses the other refuses with the same
-- error. On both stores (SQLite, PostgreSQL), under both engines.
local genaudit = require("genaudit")
local json = require("genaudit.json")
local tmp = require("spec.support.tmp")
local pg = require("spec.support.pg")

local LUA54 = rawget(math, "type") ~= nil
local NUL_OK -- set per store: PostgreSQL text cannot hold NUL bytes (both modes refuse such rows)

local function base(i)
  return {
    org_id = 1000 + i, user_id = "u" .. i, platform = "linkedin", template_id = "t" .. (i % 3),
    template_version = i,
    final_system_prompt = "system prompt " .. i, final_user_prompt = "user prompt " .. i,
    token_usage = { prompt_tokens = 10 * i, completion_tokens = i, estimated_cost = i / 1e6 },
    performance = { total_latency_ms = 1.5 * i, provider_latency_ms = i, model_identifier = "m-" .. i },
    repair_info = { repair_count = i % 2 }, content = "content " .. i,
  }
end

local function with(r, over)
  for k, v in pairs(over) do r[k] = v end
  return r
end

-- strings a JSON encoder must escape or repair: quotes, backslashes, every
-- control byte, DEL, UTF-8 of each length, and ill-formed UTF-8 of each kind
local function hostile_strings()
  local ctl = {}
  for b = 1, 31 do ctl[#ctl + 1] = string.char(b) end
  local list = {
    "", "plain", 'quote " and backslash \\ and slash /', table.concat(ctl), "del \127",
    "caf\195\169 \226\130\172 \240\157\132\158", -- é € 𝄞
    "bad \255\254 bytes", "truncated \226\130", "overlong \192\175", "surrogate \237\160\128",
    "above \244\144\128\128", "lone continuation \128 in text", "ends with lead \226",
    string.rep("long plain text, ", 200), string.rep("line\n", 300) .. string.rep('"q"', 50),
  }
  if NUL_OK then list[#list + 1] = "nul \0 inside" end
  return list
end

local function many_keys(n, prefix)
  local t = {}
  for k = 1, n do t[prefix .. string.format("%03d", (k * 37) % 101)] = k * 1.25 end
  return t
end

local function reversed_array(n)
  local t = {}
  for k = n, 1, -1 do t[k] = k % 3 == 0 and ("s" .. k) or k end -- built from the end: the hash part
  return t
end

local function nested(depth)
  local t = { leaf = true }
  for _ = 2, depth do t = { down = t } end
  return t
end

-- numbers both engines hold exactly, as doubles and as integers
local function numbers()
  local t = { 0, 1, -1, 0.1, 1 / 3, -1.5, 1e-300, 1e300, 2 ^ 53, -2 ^ 53, 123456789012, 5e-324,
              1.7976931348623157e308, 2.5, 1e15, 1e16, 123456.789, 1e-7 }
  if LUA54 then
    t[#t + 1] = rawget(math, "maxinteger")
    t[#t + 1] = rawget(math, "mininteger")
    t[#t + 1] = 2.0 -- a float: written 2.0
    t[#t + 1] = -0.0
  end
  return t
end

-- Rows that are stored: every kind of value the documents take.
local function good_rows()
  local rows, s = {}, hostile_strings()
  for i = 1, #s do
    rows[#rows + 1] = with(base(i), {
      performance = { total_latency_ms = 2, provider_latency_ms = 1, model_identifier = s[i], note = s[i] },
      token_usage = { prompt_tokens = 3, completion_tokens = 4, estimated_cost = 0.25,
                      [s[i] .. "k"] = s[i] },
      repair_info = { repair_count = 1, repair_types = { "length_exceeded", s[i] },
                      initial_validation_score = 70,
                      repair_log = { { feedback = s[i], issues = { { slug = "x", message = s[i] } } } } },
      request_params = { temperature = 0.7, stop = { s[i], "\n" }, [s[i]] = i },
      drafts = { s[i], "draft two " .. s[i] },
    })
  end
  rows[#rows + 1] = with(base(100), {
    request_params = { numbers = numbers(), flags = { true, false, genaudit.null } } })
  rows[#rows + 1] = with(base(101), {
    token_usage = with(many_keys(40, "extra_"), { prompt_tokens = 1, completion_tokens = 2 }),
    request_params = { wide = many_keys(60, "w"), long = reversed_array(50), empty = {},
                       nested_empty = { {}, { {} } } },
  })
  rows[#rows + 1] = with(base(102), { request_params = nested(30),
                                      repair_info = { repair_log = "a text log \"quoted\"" } })
  rows[#rows + 1] = with(base(103), {
    -- near misses of the names the documents write first (and skip among the rest)
    token_usage = { prompt_tokens = 5, completion_tokens = 6, total_tokens = 20, prompt_token = 1, prompt_tokens2 = 2,
                    [""] = "empty key", estimated_costs = 3, Estimated_cost = 4 },
    performance = { total_latency_ms = 3, provider_latency_ms = 2, model_identifier = genaudit.null,
                    total_latency = 1, p = { q = { r = { 1, 2, { s = "t" } } } } },
    repair_info = { repair_count = 0, final_validation_score = 99.5, stop_reason = "passed", repair_log = {} },
  })
  -- raw JSON kept as text by a decode with raw_depth (what copies persist)
  local decoded = assert(json.decode('{"kept":{"b":[1,2.50,"x\\u00e9"],"a":null},"n":1}', 1))
  rows[#rows + 1] = with(base(104), { request_params = decoded,
    repair_info = { repair_count = 1, repair_log = assert(json.decode('[{"z":1,"a":[true]}]', 0)) } })
  if NUL_OK then
    rows[#rows + 1] = with(base(105), { request_params = { ["key\0with nul"] = "v\0v" }, drafts = { "d\0d" },
      final_user_prompt = "user\0prompt" })
  end
  -- the bench's rows: what a pipeline writes (calls arrays, timings, repair log)
  for _, r in ipairs(require("bench.common").rows(4)) do rows[#rows + 1] = r end
  return rows
end

-- Rows every mode refuses, each for a reason inside a document.
local function bad_rows()
  local cyclic = {}
  cyclic.self = cyclic
  local rows = {
    with(base(1), { request_params = { x = 0 / 0 } }),
    with(base(2), { request_params = { x = math.huge } }),
    with(base(3), { request_params = { f = print } }),
    with(base(4), { request_params = { 1, 2, x = 3 } }),
    with(base(5), { request_params = { [true] = 1 } }),
    with(base(6), { request_params = { [0] = 1 } }),
    with(base(7), { request_params = { [1.5] = 1 } }),
    with(base(8), { request_params = nested(34) }),
    with(base(9), { request_params = cyclic }),
    with(base(10), { token_usage = { prompt_tokens = 1, completion_tokens = 1, [1] = "array key" } }),
    with(base(11), { performance = { total_latency_ms = 1, provider_latency_ms = 1,
                                     extra = { co = coroutine.create(print) } } }),
    with(base(12), { repair_info = { repair_log = { { f = print } } } }),
    with(base(13), { repair_info = { repair_types = { "a", 1 } } }),
    with(base(14), { drafts = { "a", { "b" } } }),
    with(base(15), { drafts = {} }),
    with(base(16), { performance = { total_latency_ms = 1, provider_latency_ms = 1, model_identifier = 7 } }),
    -- two faults: the one first in key order is named
    with(base(17), { request_params = { x = 1, y = { 0 / 0 }, a = print } }),
    with(base(18), { token_usage = { prompt_tokens = 1, completion_tokens = 1, z = print, a = 0 / 0 } }),
  }
  if not NUL_OK then rows[#rows + 1] = with(base(19), { request_params = { k = "nul \0" } }) end
  if not NUL_OK then rows[#rows + 1] = with(base(20), { drafts = { "nul \0" } }) end
  if not NUL_OK then rows[#rows + 1] = with(base(21), { request_params = { ["k\0"] = 1 } }) end
  return rows
end

local SEAL = { chain_id = true, chain_seq = true, prev_hash = true, record_hash = true }

-- every stored column but the seal's chain position (each store has its own chain)
local function stored(store, skip)
  local out = {}
  for _, r in ipairs(assert(store:query("SELECT * FROM generation_snapshots ORDER BY id", {}))) do
    local t = {}
    for k, v in pairs(r) do
      if not SEAL[k] and not (skip and skip[k]) then t[k] = v end
    end
    out[#out + 1] = t
  end
  return out
end

local function suite(name, open_sync, open_async, nul_ok, describe_fn)
  describe_fn(name, function()
    local dir, sync, async

    before_each(function()
      NUL_OK = nul_ok
      dir = tmp.dir()
      sync, async = open_sync(dir), open_async(dir)
    end)
    after_each(function()
      if sync then sync:close() end
      if async then async:close() end
      tmp.rm(dir)
    end)

    it("stores every column of the same rows byte for byte alike", function()
      local rows = good_rows()
      for i, r in ipairs(rows) do
        local a, aerr = sync:persist_generation(r)
        local b, berr = async:persist_generation(r)
        assert(a, "row " .. i .. " (sync): " .. tostring(aerr))
        assert(b, "row " .. i .. " (async): " .. tostring(berr))
      end
      assert.is_true(async:flush())
      local x, y = stored(sync, { id = true, created_at = true }), stored(async, { id = true, created_at = true })
      assert.equal(#rows, #x)
      assert.equal(#rows, #y)
      for i = 1, #rows do
        for k, v in pairs(x[i]) do
          assert(y[i][k] == v, ("row %d, column %s: sync %q, async %q"):format(i, k, tostring(v), tostring(y[i][k])))
        end
        for k in pairs(y[i]) do assert(x[i][k] ~= nil, ("row %d, column %s: async only"):format(i, k)) end
      end
      assert.is_true(assert(sync:verify()).ok)
      assert.is_true(assert(async:verify()).ok)
    end)

    it("stores rows that bring their id and created_at with every column alike", function()
      local rows = good_rows()
      for i, r in ipairs(rows) do
        r.id = ("01J0000000000000000000%04d"):format(i)
        r.created_at = ("2024-06-01 12:%02d:%02d.%03d"):format(math.floor(i / 60) % 60, i % 60, i)
        assert(sync:persist_generation(r))
        assert(async:persist_generation(r))
      end
      assert.is_true(async:flush())
      assert.same(stored(sync), stored(async))
    end)

    it("refuses the same rows with the same error", function()
      for i, r in ipairs(bad_rows()) do
        local a = { sync:persist_generation(r) }
        local b = { async:persist_generation(r) }
        assert.is_nil(a[1], "row " .. i .. " was stored")
        assert.same(a, b)
      end
      assert.is_true(async:flush())
      assert.equal(0, async:query("SELECT count(*) AS n FROM generation_snapshots", {})[1].n)
    end)
  end)
end

local function sqlite(opts)
  return function(dir) return assert(genaudit.open("sqlite:" .. dir .. "/" .. (opts and "a" or "s") .. ".db", opts)) end
end

suite("async persist: the same bytes as sync (SQLite)", sqlite(nil), sqlite({ async = { batch = 7 } }), true,
  describe)

local pg_schema = {}
local function pgopen(opts)
  return function()
    local schema = pg.schema()
    pg_schema[#pg_schema + 1] = schema
    return assert(pg.open(schema, opts))
  end
end
suite("async persist: the same bytes as sync (PostgreSQL) #postgresql", pgopen(nil), pgopen({ async = { batch = 7 } }),
  false, pg.describe)

describe("async persist near the limits (SQLite)", function()
  local dir
  before_each(function() dir = tmp.dir() end)
  after_each(function() tmp.rm(dir) end)

  -- a document's JSON is known only as an upper bound at first: when that
  -- is over a limit, its exact size decides, as in sync mode
  it("stores a row whose documents' bound is over length_limit but not their JSON, refuses one over it alike",
    function()
      local limit = 60000
      local s = assert(genaudit.open("sqlite:" .. dir .. "/s.db", { length_limit = limit }))
      local a = assert(genaudit.open("sqlite:" .. dir .. "/a.db", { length_limit = limit, async = true }))
      local fits = with(base(1), { drafts = { string.rep("x", 20000) } })        -- JSON 20004 bytes, bound 120000+
      local over = with(base(2), { drafts = { string.rep("\1", 12000) } })       -- JSON 72004 bytes
      assert(s:persist_generation(fits))
      assert(a:persist_generation(fits))
      local e1 = { s:persist_generation(over) }
      local e2 = { a:persist_generation(over) }
      assert.is_nil(e1[1])
      assert.same(e1, e2)
      assert.is_true(a:flush())
      assert.same(stored(s, { id = true, created_at = true }), stored(a, { id = true, created_at = true }))
      s:close()
      a:close()
    end)

  it("weighs a row against max_bytes by its JSON when the bound is over", function()
    local a = assert(genaudit.open("sqlite:" .. dir .. "/a.db", { async = { max_bytes = 40000 } }))
    assert(a:persist_generation(with(base(1), { drafts = { string.rep("y", 30000) } })))
    local id, err, code = a:persist_generation(with(base(2), { drafts = { string.rep("\1", 8000) } }))
    assert.is_nil(id)
    assert.equal("FULL", code)
    local n = tonumber(err:match("row of (%d+) bytes"))
    -- the exact bytes: the row's text columns and its documents' JSON (48004 of them the drafts')
    assert.is_true(n > 48004 and n < 49000, err)
    assert.is_true(a:flush())
    assert.equal(1, a:query("SELECT count(*) AS n FROM generation_snapshots", {})[1].n)
    a:close()
  end)

  it("never holds more than max_bytes for a row whose tape is larger than its JSON", function()
    -- 30000 empty strings: 90 KB of JSON, ~540 KB as a tape (18 bytes an entry)
    local max = 200000
    local empties = {}
    for i = 1, 30000 do empties[i] = "" end
    local s = assert(genaudit.open("sqlite:" .. dir .. "/s.db"))
    local a = assert(genaudit.open("sqlite:" .. dir .. "/a.db", { async = { max_bytes = max } }))
    -- the writer held up for 1.5 s by a sqlite3 process's write lock: the row stays queued while we look
    local ready = dir .. "/locked"
    os.execute(("(echo 'BEGIN IMMEDIATE;'; echo '.shell touch %s'; sleep 1.5; echo 'COMMIT;') | sqlite3 %s &")
      :format(ready, dir .. "/a.db"))
    for _ = 1, 500 do
      local f = io.open(ready)
      if f then f:close() break end
      os.execute("sleep 0.01")
    end
    local row = with(base(1), { request_params = empties })
    assert(s:persist_generation(row))
    assert(a:persist_generation(row))
    local held = a._conn:stats().pending_bytes
    assert.is_true(held > 90000 and held <= max, "pending_bytes " .. held)
    assert.is_true(a:flush())
    assert.same(stored(s, { id = true, created_at = true }), stored(a, { id = true, created_at = true }))
    s:close()
    a:close()
  end)
end)
