-- spec/copy_spec.lua
-- Owns: genaudit.copy on SQLite -> SQLite (the PostgreSQL direction is in
-- spec/cli_pg_spec.lua) and the C JSON decoder it reads documents with
-- (core.json_decode): every row arrives with its id, created_at and
-- documents, one existence query per batch, ids already there skipped (so a
-- second run finishes a partial copy), sync and async destinations alike;
-- and `genaudit copy` / `export` drawing a progress line only on a terminal.
local genaudit = require("genaudit")
local core = require("genaudit.core")
local copy = require("genaudit.copy")
local report = require("genaudit.report")
local tmp = require("spec.support.tmp")
local util = require("spec.support.util")
local q, lcg = util.q, util.lcg

local N = 1234

-- N generations with documents that exercise the decoder: nested calls,
-- floats with 17 digits, nulls, escapes, non-ASCII text.
local function generations(n)
  local rnd = lcg(99)
  local out = {}
  for i = 1, n do
    out[i] = {
      org_id = "org-" .. i % 3, user_id = i % 7, platform = "linkedin", template_id = "t" .. i % 5,
      created_at = string.format("2026-10-%02d %02d:%02d:%02d.%03d", 1 + i % 28, i % 24, i % 60, (i * 7) % 60,
        i % 1000),
      final_system_prompt = "system \"quoted\"\n\tcaf\195\169 " .. i, final_user_prompt = "user " .. i,
      token_usage = { prompt_tokens = rnd.int(1, 5000), completion_tokens = rnd.int(1, 900),
                      estimated_cost = i % 4 ~= 0 and rnd.int(1, 999999) / 3e9 or nil,
                      calls = { { kind = "initial", cost = 0.1 + 0.2, model = "m\226\130\172" } } },
      performance = { total_latency_ms = rnd.int(700, 9000) / 7, provider_latency_ms = rnd.int(1, 99),
                      model_identifier = i % 9 ~= 0 and "gpt-4o-mini" or nil, note = genaudit.null },
      repair_info = { repair_count = i % 3, repair_types = i % 3 > 0 and { "length_exceeded" } or {},
                      repair_log = { { attempt = 1, feedback = "Fix \\ this \240\159\152\128", issues = {} } } },
      request_params = i % 2 == 0 and { temperature = 0.7, max_tokens = 400, stop = { "\n\n" } } or nil,
      content = "content " .. i,
    }
  end
  return out
end

-- The store's rows as export writes them, without the seal columns: a copy
-- puts every row into the destination's own hash chain (util.unsealed).
local function export(store)
  local buf = {}
  local sink = { write = function(_, s) buf[#buf + 1] = s return true end }
  assert(report.export(store, { format = "jsonl", out = sink }))
  return util.unsealed(table.concat(buf))
end

local function count(store)
  return store:query("SELECT count(*) AS n FROM generation_snapshots", {})[1].n
end

-- A store that counts the calls copy makes to it.
local function counting(store)
  local calls = { query = 0, persist = 0 }
  return setmetatable({
    query = function(_, ...) calls.query = calls.query + 1 return store:query(...) end,
    persist_generation = function(_, g) calls.persist = calls.persist + 1 return store:persist_generation(g) end,
    stats = function() return store:stats() end,
    flush = function(_, ...) return store:flush(...) end,
  }, { __index = store }), calls
end

describe("core.json_decode()", function()
  it("keeps integers integers, floats floats and null as genaudit.null", function()
    local v = assert(core.json_decode('{"a":42,"b":2.0,"c":null,"d":[1,null,-3e2],"e":9007199254740993}'))
    assert.equal(42, v.a)
    assert.equal(genaudit.null, v.c)
    assert.same({ 1, genaudit.null, -300 }, v.d)
    local mtype = rawget(math, "type")
    if mtype then
      assert.same({ "integer", "float", "float" }, { mtype(v.a), mtype(v.b), mtype(v.d[3]) })
      assert.equal(9007199254740993, v.e)
    end
  end)

  it("reads every decimal as tonumber does, to the last bit", function()
    local rnd = lcg(4242)
    for _ = 1, 3000 do
      local digits = tostring(rnd.int(0, 999999999)) .. tostring(rnd.int(0, 9999999))
      local text = digits:sub(1, rnd.int(1, #digits))
      local cut = rnd.int(0, #text)
      if cut > 0 and cut < #text then text = text:sub(1, cut) .. "." .. text:sub(cut + 1) end
      if rnd.int(1, 4) == 1 then text = text .. "e" .. (rnd.int(0, 1) == 1 and "-" or "") .. rnd.int(0, 40) end
      if rnd.int(1, 3) == 1 then text = "-" .. text end
      local got = assert(core.json_decode(text))
      assert.equal(string.format("%.17g", tonumber(text)), string.format("%.17g", got), text)
    end
  end)

  it("reads escapes, surrogate pairs and raw UTF-8; a lone surrogate becomes U+FFFD (it has no UTF-8 form)", function()
    local v = assert(core.json_decode('["a\\"b\\\\c\\/d\\b\\f\\n\\r\\t", "\\u00e9\\u20ac\\ud83d\\ude00", "caf\195\169",'
      .. ' "\\ud800x"]'))
    assert.same({ 'a"b\\c/d\b\f\n\r\t', "\195\169\226\130\172\240\159\152\128", "caf\195\169", "\239\191\189x" }, v)
    assert.same({ "\239\191\189", "a\239\191\189" }, assert(core.json_decode('["\\udc00", "a\\ud83d"]')))
  end)

  it("gives back the bytes of a document genaudit wrote, through the row builder", function()
    local store = assert(genaudit.open("sqlite::memory:"))
    for _, g in ipairs(generations(40)) do assert(store:persist_generation(g)) end
    local other = assert(genaudit.open("sqlite::memory:"))
    assert.same({ copied = 40, skipped = 0, failed = 0, purged = 0, errors = {} }, copy.run(store, other))
    assert.equal(export(store), export(other))
    store:close()
    other:close()
  end)

  it("keeps objects and arrays deeper than raw_depth as text the encoder writes back verbatim", function()
    local text = '{"n":1,"calls":[{"b":2.50,"a":{}}, []],"o":{"x":[1,{"y":null}]}}'
    local v = assert(core.json_decode(text, 1))
    assert.equal(1, v.n)
    assert.same({ "userdata", "userdata" }, { type(v.calls), type(v.o) })
    assert.equal('[{"b":2.50,"a":{}}, []]', tostring(v.calls))
    assert.equal('{"calls":[{"b":2.50,"a":{}}, []],"n":1,"o":{"x":[1,{"y":null}]}}', core.json_encode(v))
    local two = assert(core.json_decode(text, 2))
    assert.same({ "table", "userdata" }, { type(two.calls), type(two.calls[1]) })
  end)

  it("delimits what it keeps as text by its strings and brackets", function()
    assert.equal([=[["]x", "\\", "a\"]"]]=], tostring(assert(core.json_decode([[{"a":["]x", "\\", "a\"]"]}]], 1)).a))
    assert.same({ nil, "INVALID: mismatched bracket at byte 10", "INVALID" }, { core.json_decode('{"a":[1,2}}', 1) })
    assert.same({ nil, "INVALID: unterminated string at byte 8", "INVALID" },
      { core.json_decode([[{"a":["x\"]}]], 1) })
    assert.same({ nil, "INVALID: unexpected end at byte 10", "INVALID" }, { core.json_decode('{"a":[[1]', 1) })
  end)

  it("leaves checking the text it kept to the store, which refuses a document that is not JSON", function()
    local store = assert(genaudit.open("sqlite::memory:"))
    local perf = assert(core.json_decode('{"total_latency_ms":1,"provider_latency_ms":1,"x":[tru]}', 1))
    local id, err = store:persist_generation{ org_id = 1, user_id = 1, platform = "x", template_id = "t",
      final_system_prompt = "s", final_user_prompt = "u", token_usage = { prompt_tokens = 1, completion_tokens = 1 },
      performance = perf, repair_info = {} }
    assert.is_nil(id)
    assert.truthy(err:find("malformed JSON", 1, true) or err:find("CHECK constraint", 1, true), err)
    assert.equal(0, store:query("SELECT count(*) AS n FROM generation_snapshots", {})[1].n)
    store:close()
  end)

  it("keeps an empty object in a copied document an object", function()
    local a = assert(genaudit.open("sqlite::memory:"))
    local b = assert(genaudit.open("sqlite::memory:"))
    assert(a:persist_generation{ org_id = 1, user_id = 1, platform = "x", template_id = "t",
      final_system_prompt = "s", final_user_prompt = "u", token_usage = { prompt_tokens = 1, completion_tokens = 1 },
      performance = { total_latency_ms = 1, provider_latency_ms = 1 }, repair_info = {} })
    local row = a:query("SELECT * FROM generation_snapshots", {})[1]
    local doc = row.performance_metrics:gsub("}$", ',"z":{"empty":{}}}')
    local g = assert(copy.generation(row))
    g.performance = assert(copy.decode_json(doc, 1))
    assert(b:persist_generation(g))
    assert.equal(doc, b:query("SELECT performance_metrics AS p FROM generation_snapshots", {})[1].p)
    a:close()
    b:close()
  end)

  for _, bad in ipairs({ { '{"a":1', "expected ',' or '}' at byte 7" }, { '[1,]', "bad value at byte 4" },
                         { '"abc', "unterminated string at byte 2" }, { '{"a":1} x', "trailing text at byte 9" },
                         { '"\\q"', "bad escape at byte 2" }, { '"\\u12"', "bad \\u escape at byte 2" },
                         { "01.", "bad number at byte 1" }, { "", "unexpected end at byte 1" },
                         { ("["):rep(65) .. ("]"):rep(65), "nested too deep at byte 65" } }) do
    it("returns nil, INVALID for " .. bad[1]:sub(1, 12), function()
      assert.same({ nil, "INVALID: " .. bad[2], "INVALID" }, { core.json_decode(bad[1]) })
    end)
  end
end)

describe("genaudit.copy", function()
  local dir, src, gens

  setup(function()
    dir = tmp.dir()
    src = assert(genaudit.open("sqlite:" .. dir .. "/src.db", { async = { queue = 2000, batch = 200 } }))
    gens = generations(N)
    for _, g in ipairs(gens) do assert(src:persist_generation(g)) end
    assert(src:flush())
  end)

  teardown(function()
    src:close()
    tmp.rm(dir)
  end)

  local function fresh(name, opts)
    return assert(genaudit.open("sqlite:" .. dir .. "/" .. name .. ".db", opts))
  end

  it("copies every row into an async destination with one existence query per batch", function()
    local dst = fresh("async", { async = { queue = 1000, batch = 100 } })
    local proxy, calls = counting(dst)
    local seen = {}
    local r = assert(copy.run(src, proxy, { batch = 100, progress = function(done, total) seen[#seen + 1] =
      { done, total } end }))
    assert.same({ N, 0, 0 }, { r.copied, r.skipped, r.failed })
    assert.same({ math.ceil(N / 100), N }, { calls.query, calls.persist })
    assert.same({ N, N }, seen[#seen])
    assert.equal(math.ceil(N / 100), #seen)
    assert.equal(export(src), export(dst))
    dst:close()
  end)

  it("finishes a partial copy: ids already there are skipped, in any batch", function()
    local dst = fresh("partial")
    local rows = assert(src:query("SELECT * FROM generation_snapshots ORDER BY id", {}))
    local pre = 0
    for i, row in ipairs(rows) do
      if i % 3 == 0 or i <= 10 then
        assert(dst:persist_generation(assert(copy.generation(row))))
        pre = pre + 1
      end
    end
    local proxy, calls = counting(dst)
    local r = assert(copy.run(src, proxy, { batch = 7 }))
    assert.same({ N - pre, pre, 0 }, { r.copied, r.skipped, r.failed })
    assert.same({ math.ceil(N / 7), N - pre }, { calls.query, calls.persist })
    assert.equal(export(src), export(dst))
    assert.same({ 0, N, 0 }, (function()
      local again = assert(copy.run(src, dst))
      return { again.copied, again.skipped, again.failed }
    end)())
    assert.equal(N, count(dst))
    dst:close()
  end)

  it("reports a row the destination refuses, and copies the others", function()
    local bad_src = fresh("bad-src")
    assert(bad_src:persist_generation(gens[1]))
    local bad_id = assert(bad_src:persist_generation(gens[2]))
    assert(bad_src:persist_generation(gens[3]))
    local dst = fresh("bad-dst")
    -- a destination whose row builder refuses one row, as PostgreSQL refuses a NUL byte
    local proxy = setmetatable({ persist_generation = function(_, g)
      if g.id == bad_id then return nil, "INVALID: final_user_prompt: refused", "INVALID" end
      return dst:persist_generation(g)
    end }, { __index = function(_, k) return function(_, ...) return dst[k](dst, ...) end end })
    local r = assert(copy.run(bad_src, proxy))
    assert.same({ 2, 0, 1, { bad_id .. ": INVALID: final_user_prompt: refused" } },
      { r.copied, r.skipped, r.failed, r.errors })
    assert.equal(2, count(dst))
    bad_src:close()
    dst:close()
  end)

  it("counts rows an async destination refuses (duplicate ids, before queueing), and copies the rest", function()
    local dst = fresh("refusing", { async = { queue = 1000, batch = 50 } })
    local rows = assert(src:query("SELECT * FROM generation_snapshots ORDER BY id LIMIT 30", {}))
    for i = 1, 30, 3 do assert(dst:persist_generation(assert(copy.generation(rows[i])))) end
    assert(dst:flush())
    -- a destination that answers "none of these" although it holds 10 of them: the
    -- store refuses those 10 (duplicate ids) at persist time, before queueing them
    local proxy = setmetatable({ query = function(_, sql, p)
      if sql:find("WHERE id IN", 1, true) then return {} end
      return dst:query(sql, p)
    end }, { __index = function(_, k) return function(_, ...) return dst[k](dst, ...) end end })
    local r = assert(copy.run(src, proxy))
    assert.same({ N - 10, 0, 10 }, { r.copied, r.skipped, r.failed })
    assert.equal(10, #r.errors)
    for _, e in ipairs(r.errors) do assert.matches("^%w+: CONSTRAINT: a snapshot with id %w+ is stored already$", e) end
    assert.equal(N, count(dst))
    dst:close()
  end)

  it("returns nil, err when the destination cannot be asked which ids it holds", function()
    local dst = fresh("closed")
    local proxy = setmetatable({ query = function() return nil, "CONNECT: gone", "CONNECT" end },
      { __index = function(_, k) return function(_, ...) return dst[k](dst, ...) end end })
    assert.same({ nil, "CONNECT: gone", "CONNECT" }, { copy.run(src, proxy) })
    assert.equal(0, count(dst))
    dst:close()
  end)
end)

describe("genaudit copy / export progress", function()
  local dir, db

  setup(function()
    dir = tmp.dir()
    db = dir .. "/src.db"
    local store = assert(genaudit.open("sqlite:" .. db))
    for _, g in ipairs(generations(1200)) do assert(store:persist_generation(g)) end
    store:close()
  end)

  teardown(function() tmp.rm(dir) end)

  -- Runs the CLI with stdout and stderr on a pseudo-terminal (script(1)).
  -- script(1) gives the CLI a terminal. Under make check, libasan is preloaded:
  -- script itself then runs unsanitized (its own leaks would change its exit
  -- code), and the CLI inside it gets the preload back.
  local function on_tty(args)
    local preload = os.getenv("LD_PRELOAD")
    local inner = (preload and preload ~= "" and ("env LD_PRELOAD=" .. q(preload) .. " ") or "")
      .. "lua5.4 bin/genaudit " .. args
    local p = assert(io.popen("env -u GENAUDIT_API_KEY -u LD_PRELOAD script -qec " .. q(inner)
      .. " /dev/null; echo rc=$?", "r"))
    local out = p:read("a")
    p:close()
    return out
  end

  it("draws rows done, rows/s and ETA on a terminal, and ends the line", function()
    local out = on_tty("copy --from " .. q(db) .. " --to " .. q("sqlite:" .. dir .. "/tty.db"))
    assert.matches("\rcopy: 1200/1200 rows  %d+ rows/s", out)
    assert.matches("\n1200 snapshots copied from ", (out:gsub("\r\n", "\n")))
    assert.matches("rc=0\n$", out)
    out = on_tty("--db " .. q(db) .. " export --format csv --out " .. q(dir .. "/tty.csv"))
    assert.matches("\rexport: 1200/1200 rows  %d+ rows/s", out)
  end)

  it("draws nothing with --quiet", function()
    local out = on_tty("copy --quiet --from " .. q(db) .. " --to " .. q("sqlite:" .. dir .. "/quiet.db"))
    assert.is_nil(out:find("rows/s", 1, true))
    assert.matches("^1200 snapshots copied", out)
    out = on_tty("--db " .. q(db) .. " export --quiet --format csv --out " .. q(dir .. "/quiet.csv"))
    assert.is_nil(out:find("rows/s", 1, true))
  end)

  it("draws nothing when stderr is not a terminal", function()
    local out, err, rc = util.cli("--json copy --from " .. q(db) .. " --to " .. q("sqlite:" .. dir .. "/pipe.db"))
    assert.same({ '{"copied":1200,"skipped":0,"failed":0,"purged":0}\n', "", 0 }, { out, err, rc })
  end)

  it("exports with list's filters and a limit", function()
    local out, err, rc = util.cli("--db " .. q(db) .. " export --format jsonl --template t1 --org org-2"
      .. " --since 2026-10-05 --until 2026-10-20 --limit 7")
    assert.same({ "", 0 }, { err, rc })
    local want = {}
    for i, g in ipairs(generations(1200)) do
      local day = g.created_at:sub(1, 10)
      if i % 5 == 1 and i % 3 == 2 and day >= "2026-10-05" and day <= "2026-10-20" then
        want[#want + 1] = g.created_at
      end
    end
    table.sort(want)
    local got = {}
    for line in out:gmatch("[^\n]+") do got[#got + 1] = require("cjson").decode(line).created_at end
    local first7 = {}
    for i = 1, 7 do first7[i] = want[i] end
    assert.same(first7, got)
  end)
end)
