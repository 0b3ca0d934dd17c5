-- spec/core_spec.lua
-- Owns: the busted specs for the building blocks in genaudit.core that the
-- store relies on: the monotonic stopwatch (genaudit.stopwatch), ULID ids,
-- the exact JSON encoder and listdir. Runs under Lua 5.4 and LuaJIT.

local genaudit = require("genaudit")
local core = require("genaudit.core")

local IS_54 = _VERSION == "Lua 5.4" and rawget(_G, "jit") == nil
local it54 = IS_54 and it or pending
local itjit = rawget(_G, "jit") ~= nil and it or pending

local CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
local ULID_PATTERN = "^[0-9A-HJKMNP-TV-Z]+$"

-- Busy-waits `ms` milliseconds on the monotonic clock.
local function spin_ms(ms)
  local t0 = core.monotonic_us()
  -- +1: monotonic_us truncates to whole µs, so wait one more to cover `ms` fully
  while core.monotonic_us() - t0 < ms * 1000 + 1 do end
end

-- True when a millisecond value carries at most 3 decimals (whole µs).
local function whole_us(ms)
  return tonumber(string.format("%.3f", ms)) == ms
end

local function sh(cmd)
  local f = assert(io.popen(cmd .. " 2>&1"))
  local out = f:read("*a")
  f:close()
  return out
end

local function shq(s) return "'" .. (s:gsub("'", "'\\''")) .. "'" end

describe("genaudit.core", function()
  describe("stopwatch", function()
    it("genaudit.stopwatch is core.stopwatch", function()
      assert.equal(core.stopwatch, genaudit.stopwatch)
    end)

    it("measures an interval of at least the time spent in it", function()
      local sw = genaudit.stopwatch()
      sw:begin("provider")
      spin_ms(20)
      assert.is_true(sw:finish("provider") >= 20)
    end)

    it("accumulates repeated intervals of the same name and counts them", function()
      local sw = genaudit.stopwatch()
      local total = 0
      for _ = 1, 2 do
        sw:begin("provider")
        spin_ms(10)
        total = total + sw:finish("provider")
      end
      local ms, count = sw:interval_ms("provider")
      assert.is_true(ms >= 20)
      assert.near(total, ms, 0.0015)
      assert.equal(2, count)
    end)

    it("reports 0 ms and 0 intervals for a name never used", function()
      local ms, count = genaudit.stopwatch():interval_ms("nothing")
      assert.same({ 0, 0 }, { ms, count })
    end)

    it("counts an open interval up to now", function()
      local sw = genaudit.stopwatch()
      sw:begin("provider")
      spin_ms(5)
      local ms, count = sw:interval_ms("provider")
      assert.is_true(ms >= 5)
      assert.equal(0, count)
    end)

    it("has a total elapsed time at least the sum of its intervals", function()
      local sw = genaudit.stopwatch()
      sw:begin("compose")
      spin_ms(5)
      local a = sw:finish("compose")
      sw:begin("provider")
      spin_ms(10)
      local b = sw:finish("provider")
      local total = sw:stop()
      assert.is_true(total >= a + b)
      assert.is_true(total >= 15)
    end)

    it("stop() is idempotent and freezes elapsed time", function()
      local sw = genaudit.stopwatch()
      spin_ms(2)
      local first = sw:stop()
      spin_ms(5)
      assert.equal(first, sw:stop())
      assert.equal(first, sw:elapsed_ms())
    end)

    it("stop() closes open intervals at the stop instant", function()
      local sw = genaudit.stopwatch()
      sw:begin("provider")
      spin_ms(3)
      local total = sw:stop()
      spin_ms(3)
      local ms, count = sw:interval_ms("provider")
      assert.equal(1, count)
      assert.is_true(ms >= 3 and ms <= total)
      assert.equal(ms, sw:interval_ms("provider"))
    end)

    it("running() is true until stop()", function()
      local sw = genaudit.stopwatch()
      assert.is_true(sw:running())
      sw:stop()
      assert.is_false(sw:running())
    end)

    it("raises when an interval is begun twice", function()
      local sw = genaudit.stopwatch()
      sw:begin("x")
      assert.has_error(function() sw:begin("x") end, "interval 'x' is already open")
    end)

    it("raises when finishing an interval never begun", function()
      local sw = genaudit.stopwatch()
      assert.has_error(function() sw:finish("nope") end, "interval 'nope' is not open")
    end)

    it("raises when finishing an interval twice", function()
      local sw = genaudit.stopwatch()
      sw:begin("x")
      sw:finish("x")
      assert.has_error(function() sw:finish("x") end, "interval 'x' is not open")
    end)

    it("raises when beginning an interval after stop()", function()
      local sw = genaudit.stopwatch()
      sw:stop()
      assert.has_error(function() sw:begin("late") end, "stopwatch is stopped")
    end)

    it("raises for an empty interval name", function()
      local sw = genaudit.stopwatch()
      assert.has_error(function() sw:begin("") end, "bad argument #1 to 'begin' (interval name must be 1-31 bytes)")
    end)

    it("raises for an interval name of 32 bytes", function()
      local sw = genaudit.stopwatch()
      assert.has_error(function() sw:begin(string.rep("x", 32)) end,
        "bad argument #1 to 'begin' (interval name must be 1-31 bytes)")
    end)

    it("add() adds exactly the given microseconds", function()
      local sw = genaudit.stopwatch()
      sw:add("db", 1500)
      sw:add("db", 250)
      local ms, count = sw:interval_ms("db")
      assert.same({ 1.75, 2 }, { ms, count })
    end)

    it("intervals() maps every name to its accumulated ms", function()
      local sw = genaudit.stopwatch()
      sw:add("db", 1500)
      sw:add("provider", 123456)
      assert.same({ db = 1.5, provider = 123.456 }, sw:intervals())
    end)

    it("add() raises for negative microseconds", function()
      local sw = genaudit.stopwatch()
      assert.has_error(function() sw:add("db", -1) end,
        "bad argument #2 to 'add' (non-negative integer microseconds expected)")
    end)

    it("add() raises for fractional microseconds", function()
      local sw = genaudit.stopwatch()
      assert.has_error(function() sw:add("db", 1.5) end,
        "bad argument #2 to 'add' (non-negative integer microseconds expected)")
    end)

    it("reports milliseconds with at most 3 decimals (µs precision)", function()
      local sw = genaudit.stopwatch()
      for _ = 1, 50 do
        spin_ms(0.013)
        local ms = sw:elapsed_ms()
        if not whole_us(ms) then error("elapsed_ms " .. string.format("%.17g", ms) .. " has sub-µs digits") end
      end
      sw:begin("x")
      spin_ms(1.3)
      assert.is_true(whole_us(sw:finish("x")))
      assert.is_true(whole_us(sw:stop()))
    end)

    it("elapsed_us() is the integer µs behind elapsed_ms()", function()
      local sw = genaudit.stopwatch()
      spin_ms(2)
      sw:stop()
      local us = sw:elapsed_us()
      assert.equal(math.floor(us), us)
      assert.equal(us / 1000, sw:elapsed_ms())
    end)

    it("monotonic_us() never goes backwards", function()
      local prev = core.monotonic_us()
      for _ = 1, 10000 do
        local now = core.monotonic_us()
        if now < prev then error("monotonic_us went back from " .. prev .. " to " .. now) end
        prev = now
      end
    end)

    it("close() returns true, twice", function()
      local sw = genaudit.stopwatch()
      assert.is_true(sw:close())
      assert.is_true(sw:close())
    end)

    it("raises when used after close()", function()
      local sw = genaudit.stopwatch()
      sw:close()
      assert.has_error(function() sw:elapsed_ms() end, "attempt to use a closed stopwatch")
    end)

    it("tostring shows running, stopped and (closed)", function()
      local sw = genaudit.stopwatch()
      local running = tostring(sw)
      sw:stop()
      local stopped = tostring(sw)
      sw:close()
      assert.same({ "genaudit.stopwatch (running)", "genaudit.stopwatch (stopped)", "genaudit.stopwatch (closed)" },
        { running, stopped, tostring(sw) })
    end)
  end)

  describe("ULID", function()
    it("a generator closes idempotently and refuses use after close", function()
      local gen = core.ulid_generator()
      assert.same({ true, true }, { gen:close(), gen:close() })
      assert.equal("genaudit.ulid_generator (closed)", tostring(gen))
      assert.has_error(function() gen:next() end, "attempt to use a closed ulid_generator")
    end)

    it("is 26 characters of Crockford base32", function()
      local id = core.ulid_generator():next()
      assert.equal(26, #id)
      assert.matches(ULID_PATTERN, id)
    end)

    it("encodes the current time, within 1 s", function()
      local ms = core.ulid_time(core.ulid_generator():next())
      assert.is_true(math.abs(math.floor(ms / 1000) - os.time()) <= 1)
    end)

    it("decodes the time of a known ULID", function()
      local id, ms = "01ARZ3NDEKTSV4RRFFQ69G5FAV", 0
      for i = 1, 10 do ms = ms * 32 + (CROCKFORD:find(id:sub(i, i), 1, true) - 1) end
      assert.equal(ms, core.ulid_time(id))
    end)

    it("gives 10000 strictly increasing, unique ids from one generator", function()
      local gen, seen, prev = core.ulid_generator(), {}, ""
      for i = 1, 10000 do
        local id = gen:next()
        if id <= prev then error(("id %d (%s) is not above %s"):format(i, id, prev)) end
        if seen[id] then error("duplicate id " .. id) end
        seen[id], prev = true, id
      end
    end)

    it("ulid_time() returns nil, err, 'INVALID' for a wrong length", function()
      assert.same({ nil, "INVALID: a ULID has 26 characters", "INVALID" }, { core.ulid_time("01ARZ3NDEK") })
    end)

    it("ulid_time() returns nil, err, 'INVALID' for a character outside the alphabet", function()
      assert.same({ nil, "INVALID: not a ULID", "INVALID" }, { core.ulid_time("01ARZ3NDEUTSV4RRFFQ69G5FAV") })
    end)
  end)

  describe("json_encode()", function()
    it("writes integers as integers", function()
      assert.same({ "0", "42", "-7", "9007199254740991" },
        { core.json_encode(0), core.json_encode(42), core.json_encode(-7), core.json_encode(9007199254740991) })
    end)

    it54("writes the full 64-bit integer range #lua54", function()
      assert.same({ "9223372036854775807", "-9223372036854775808" },
        { core.json_encode(rawget(math, "maxinteger")), core.json_encode(rawget(math, "mininteger")) })
    end)

    it("writes the shortest text that reads back as the same double", function()
      assert.same({ "0.1", "1e-07", "0.3333333333333333", "1.2345678901234568e+20", "0.000123456789012" },
        { core.json_encode(0.1), core.json_encode(1e-7), core.json_encode(1 / 3),
          core.json_encode(1.2345678901234568e+20), core.json_encode(0.000123456789012) })
    end)

    it("round-trips doubles exactly", function()
      for _, d in ipairs({ 0.1, 0.2 + 0.1, 1 / 3, 2 / 3, 1e-300, 1.7976931348623157e308, 5e-324, 123.456, 1e21 }) do
        local text = core.json_encode(d)
        if tonumber(text) ~= d then error(("%.17g encoded as %s"):format(d, text)) end
      end
    end)

    it54("keeps an integral float a float: 2.0 -> \"2.0\" #lua54", function()
      assert.equal("2.0", core.json_encode(2.0))
    end)

    itjit("writes an integral double below 2^53 as an integer: 2.0 -> \"2\" #luajit", function()
      assert.equal("2", core.json_encode(2.0))
    end)

    it("escapes quotes, backslashes, control characters and NUL", function()
      assert.equal('"q\\"b\\\\n\\nr\\rt\\tb\\bf\\fz\\u0000c\\u0001u\\u001f"',
        core.json_encode("q\"b\\n\nr\rt\tb\bf\fz\0c\1u\31"))
    end)

    it("passes UTF-8 through unescaped", function()
      assert.equal('"\226\130\172 \240\159\154\128"', core.json_encode("\226\130\172 \240\159\154\128"))
    end)

    it("writes nested arrays and objects with sorted keys", function()
      assert.equal('{"C":null,"a":[1,"two",{"x":true,"y":false}],"b":{"k":[]}}',
        core.json_encode({ b = { k = {} }, a = { 1, "two", { y = false, x = true } }, C = core.null }))
    end)

    it("writes an empty table as []", function()
      assert.equal("[]", core.json_encode({}))
    end)

    it("writes core.null as null", function()
      assert.equal("null", core.json_encode(core.null))
    end)

    it("genaudit.null is core.null", function()
      assert.equal(core.null, genaudit.null)
    end)

    it("returns nil, err, 'INVALID' for NaN", function()
      assert.same({ nil, "INVALID: number is NaN or infinite", "INVALID" }, { core.json_encode(0 / 0) })
    end)

    it("returns nil, err, 'INVALID' for infinity inside a table", function()
      assert.same({ nil, "INVALID: number is NaN or infinite", "INVALID" }, { core.json_encode({ x = -math.huge }) })
    end)

    it("returns nil, err, 'INVALID' for a function", function()
      assert.same({ nil, "INVALID: cannot encode a function as JSON", "INVALID" }, { core.json_encode(print) })
    end)

    it("returns nil, err, 'INVALID' for a sparse array", function()
      assert.same({ nil, "INVALID: a table mixes array and string keys, or has keys JSON cannot hold", "INVALID" },
        { core.json_encode({ [1] = 1, [3] = 3 }) })
    end)

    it("returns nil, err, 'INVALID' for a table mixing array and string keys", function()
      assert.same({ nil, "INVALID: a table mixes array and string keys, or has keys JSON cannot hold", "INVALID" },
        { core.json_encode({ 1, a = 2 }) })
    end)

    it("encodes 32 nested tables", function()
      local t = {}
      for _ = 2, 32 do t = { t } end
      assert.equal(string.rep("[", 32) .. string.rep("]", 32), core.json_encode(t))
    end)

    it("returns nil, err, 'INVALID' for 33 nested tables", function()
      local t = { "leaf" }
      for _ = 2, 33 do t = { t } end
      assert.same({ nil, "INVALID: nested deeper than 32 levels", "INVALID" }, { core.json_encode(t) })
    end)

    it("encodes a scalar inside the 32nd nested table", function()
      local t = { "leaf" }
      for _ = 2, 32 do t = { t } end
      assert.equal(string.rep("[", 32) .. '"leaf"' .. string.rep("]", 32), core.json_encode(t))
    end)

    it("returns nil, err, 'INVALID' for tables nested far deeper than 32 levels", function()
      local t = {}
      for _ = 2, 40 do t = { t } end
      assert.same({ nil, "INVALID: nested deeper than 32 levels", "INVALID" }, { core.json_encode(t) })
    end)

    it("returns nil, err, 'INVALID' for a self-referencing table", function()
      local t = {}
      t[1] = t
      assert.same({ nil, "INVALID: nested deeper than 32 levels", "INVALID" }, { core.json_encode(t) })
    end)

    it("raises without an argument", function()
      -- Lua 5.4 names the function by its module path, LuaJIT by its field name
      assert.error_matches(function() core.json_encode() end,
        "^bad argument #1 to '[%w.]-json_encode' %(value expected%)$")
    end)
  end)

  describe("sha256()", function()
    it("gives the FIPS 180-2 digests, lower-case hex, of any bytes (NUL included)", function()
      assert.equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", core.sha256(""))
      assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", core.sha256("abc"))
      assert.equal("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        core.sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"))
      -- the length crosses the boundary: a NUL byte does not end the input
      assert.are_not.equal(core.sha256("abc"), core.sha256("abc\0"))
      assert.equal("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
        core.sha256(string.rep("a", 1000000)))
    end)
    it("raises for a non-string argument", function()
      assert.has_error(function() core.sha256({}) end)
    end)
  end)

  describe("listdir()", function()
    local dir
    before_each(function() dir = sh("mktemp -d"):gsub("%s+$", "") end)
    after_each(function() sh("rm -rf " .. shq(dir)) end)

    it("returns the entries sorted, without . and ..", function()
      for _, name in ipairs({ "b.sql", "0002_x.sql", "a.sql", "0001_y.sql", "Z" }) do
        assert(io.open(dir .. "/" .. name, "w")):close()
      end
      sh("mkdir " .. shq(dir .. "/sub"))
      assert.same({ "0001_y.sql", "0002_x.sql", "Z", "a.sql", "b.sql", "sub" }, core.listdir(dir))
    end)

    it("returns an empty array for an empty directory", function()
      assert.same({}, core.listdir(dir))
    end)

    it("returns nil, err, 'IO' for a missing directory", function()
      assert.same({ nil, "IO: cannot list '" .. dir .. "/missing': No such file or directory", "IO" },
        { core.listdir(dir .. "/missing") })
    end)
  end)
  describe("read_file()", function()
    it("returns every byte of a file, NUL bytes included", function()
      local path = os.tmpname()
      local f = assert(io.open(path, "wb"))
      f:write("a\0b" .. string.rep("x", 20000))
      f:close()
      local data = core.read_file(path)
      os.remove(path)
      assert.equal("a\0b" .. string.rep("x", 20000), data)
    end)

    it("returns nil, err, 'IO' for a missing file", function()
      assert.same({ nil, "IO: cannot read '/nonexistent/x': No such file or directory", "IO" },
        { core.read_file("/nonexistent/x") })
    end)
  end)
end)
