-- spec/pricing_spec.lua — genaudit.pricing (LiteLLM price maps, model name
-- resolution) and genaudit.core's price_table. Expected prices come from the
-- fixture's JSON text, read here without the code under test.
local core = require("genaudit.core")
local pricing = require("genaudit.pricing")

local FIXTURE = "lua/genaudit/data/litellm-model-prices-2026-07.json"
local FIELDS = {
  "input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost",
  "cache_creation_input_token_cost", "output_cost_per_reasoning_token",
  "input_cost_per_token_above_200k_tokens", "output_cost_per_token_above_200k_tokens",
  "cache_read_input_token_cost_above_200k_tokens", "cache_creation_input_token_cost_above_200k_tokens",
}

local function read_all(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function write_temp(text)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

-- { model = { field = "literal text", ... }, ... } for the 7 price fields,
-- from the fixture's text: entries at an indent of 2 spaces, fields at 4.
local function fixture_literals()
  local text, out = read_all(FIXTURE), {}
  for model, block in text:gmatch('\n  "([^"\n]+)": (%b{})') do
    local lits = {}
    for _, field in ipairs(FIELDS) do
      lits[field] = block:match('\n    "' .. field .. '": ([^,\n]+)')
    end
    out[model] = lits
  end
  return out
end

-- "3.75e-06" -> "3750000": picodollars as decimal digits, by string shifting
local function pico_text(lit)
  local int, frac, exp = lit:match("^(%d+)%.?(%d*)[eE]?([-+]?%d*)$")
  local digits = int .. frac
  local shift = 12 + (tonumber(exp) or 0) - #frac
  if shift < 0 then
    assert(digits:sub(shift) == string.rep("0", -shift), "finer than a picodollar: " .. lit)
    digits = digits:sub(1, #digits + shift)
  else
    digits = digits .. string.rep("0", shift)
  end
  digits = digits:gsub("^0+", "")
  return digits == "" and "0" or digits
end

local LITS = fixture_literals()

local FIXTURE_PRICING -- loaded once; every test reads it only
local function fixture()
  if not FIXTURE_PRICING then FIXTURE_PRICING = assert(pricing.load(FIXTURE)) end
  return FIXTURE_PRICING
end

describe("genaudit.pricing", function()
  it("PRICE_FIELDS are the C meter's LiteLLM fields, listed once (core.price_fields)", function()
    assert.same({ "input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost",
      "cache_creation_input_token_cost", "output_cost_per_reasoning_token", "input_cost_per_token_above_200k_tokens",
      "output_cost_per_token_above_200k_tokens", "cache_read_input_token_cost_above_200k_tokens",
      "cache_creation_input_token_cost_above_200k_tokens" }, pricing.PRICE_FIELDS)
    assert.same(core.price_fields, pricing.PRICE_FIELDS)
    assert.are_not.equal(core.price_fields, pricing.PRICE_FIELDS) -- a copy: the core's list stays as it is
  end)

  describe("load()", function()
    it("finds the 218 entries of the fixture in its text", function()
      local n = 0
      for _ in pairs(LITS) do n = n + 1 end
      assert.are.equal(218, n)
    end)

    it("round-trips every price of every fixture model with an input price through pt:get", function()
      local pt, checked = fixture():price_table(), 0
      for model, lits in pairs(LITS) do
        if lits.input_cost_per_token then
          local got = pt:get(model)
          assert.is_table(got, model)
          local expected = {}
          for field, lit in pairs(lits) do expected[field] = tonumber(lit) end
          assert.same(expected, got)
          checked = checked + 1
        end
      end
      assert.are.equal(217, checked)
    end)

    it("stores every fixture input and output price as its exact picodollar integer", function()
      local pt = fixture():price_table()
      for model, lits in pairs(LITS) do
        if lits.input_cost_per_token and lits.output_cost_per_token then
          local m = core.meter()
          m:add_call{ kind = "initial", model = model, prices = pt, prompt_tokens = 1, completion_tokens = 0 }
          assert.are.equal(pico_text(lits.input_cost_per_token), m:totals().estimated_cost_picousd, model)
          m:reset()
          m:add_call{ kind = "initial", model = model, prices = pt, prompt_tokens = 0, completion_tokens = 1 }
          assert.are.equal(pico_text(lits.output_cost_per_token), m:totals().estimated_cost_picousd, model)
          m:close()
        end
      end
    end)

    it("counts only the models that have a token price", function()
      local n = 0
      for _, lits in pairs(LITS) do
        if next(lits) then n = n + 1 end
      end
      assert.are.equal(n, fixture():count())
      assert.are.equal(n, fixture():price_table():count())
      assert.is_nil(fixture():price_table():get("gpt-realtime-whisper")) -- priced per second only
    end)

    it("skips entries without price fields, such as LiteLLM's sample_spec", function()
      local p = assert(pricing.load{
        sample_spec = { litellm_provider = "one of https://docs.litellm.ai/docs/providers", mode = "chat" },
        ["per-second"] = { input_cost_per_second = 0.0001 },
        m = { input_cost_per_token = 1e-06, output_cost_per_token = 2e-06 },
      })
      assert.are.equal(1, p:count())
      assert.is_nil(p:resolve("sample_spec"))
      assert.is_nil(p:resolve("per-second"))
    end)

    it("accepts a Lua table with numbers, decimal strings and JSON nulls", function()
      local cjson = require("cjson")
      local p = assert(pricing.load{
        m = { input_cost_per_token = "0.0000025", output_cost_per_token = 1e-05,
              cache_read_input_token_cost = cjson.null },
      })
      assert.same({ input_cost_per_token = 2.5e-06, output_cost_per_token = 1e-05 }, p:prices("m"))
    end)

    it("returns nil, err for a missing file", function()
      local p, err, code = pricing.load("/nonexistent/prices.json")
      assert.is_nil(p)
      assert.are.equal("PRICING: cannot read '/nonexistent/prices.json': No such file or directory", err)
      assert.are.equal("PRICING", code)
    end)

    it("returns nil, err for invalid JSON", function()
      local path = write_temp('{ "m": { "input_cost_per_token": 1e-06, } ')
      local p, err, code = pricing.load(path)
      os.remove(path)
      assert.is_nil(p)
      local prefix = "PRICING: invalid JSON in " .. path .. ": "
      assert.are.equal(prefix, err:sub(1, #prefix))
      assert.are.equal("PRICING", code)
    end)

    it("returns nil, err for JSON that is not an object of models", function()
      local path = write_temp("42")
      local p, err = pricing.load(path)
      os.remove(path)
      assert.is_nil(p)
      assert.are.equal("PRICING: " .. path .. " does not hold a JSON object of models", err)
    end)

    it("returns nil, err for a negative price in a file", function()
      local path = write_temp('{ "ok": { "input_cost_per_token": 1e-06 }, "bad": { "output_cost_per_token": -2e-06 } }')
      local p, err, code = pricing.load(path)
      os.remove(path)
      assert.is_nil(p)
      assert.are.equal("PRICING: " .. path
        .. ": model 'bad': output_cost_per_token must be a non-negative decimal number", err)
      assert.are.equal("PRICING", code)
    end)

    it("returns nil, err for a price that is not a number", function()
      local p, err, code = pricing.load{ m = { input_cost_per_token = true } }
      assert.is_nil(p)
      assert.are.equal(
        "PRICING: price table: model 'm': input_cost_per_token must be a non-negative decimal number", err)
      assert.are.equal("PRICING", code)
    end)

    it("returns nil, err for a decimal string that is not a number", function()
      local _, err = pricing.load{ m = { input_cost_per_token = "3 USD" } }
      assert.are.equal(
        "PRICING: price table: model 'm': input_cost_per_token must be a non-negative decimal number", err)
    end)

    it("raises on an argument that is neither a path nor a table", function()
      assert.has_error(function() pricing.load(42) end,
        "bad argument #1 to 'load' (string or table expected, got number)")
    end)
  end)

  describe("default()", function()
    it("loads the price map shipped in lua/genaudit/data", function()
      local p = assert(pricing.default())
      assert.are.equal(fixture():count(), p:count())
      assert.are.equal("gpt-4o-mini", p:resolve("openai/gpt-4o-mini"))
    end)

    it("finds the shipped file relative to the module", function()
      if os.getenv("GENAUDIT_PRICES") then return end -- the environment overrides it
      local path, origin = pricing.default_path()
      local tail = "/genaudit/data/litellm-model-prices-2026-07.json"
      assert.are.equal(tail, path:sub(-#tail))
      assert.are.equal("shipped", origin)
      assert.are.equal(read_all(FIXTURE), read_all(path))
    end)
  end)

  describe("resolve()", function()
    local TABLE = {
      ["claude-3.5-sonnet"] = { input_cost_per_token = 3e-06, output_cost_per_token = 1.5e-05 },
      ["claude-3-5-sonnet"] = { input_cost_per_token = 3e-06, output_cost_per_token = 1.5e-05 },
      ["gpt-4o-mini"] = { input_cost_per_token = 1.5e-07, output_cost_per_token = 6e-07 },
      ["meta-llama/llama-3-8b"] = { input_cost_per_token = 3e-08, output_cost_per_token = 6e-08 },
    }
    local p = assert(pricing.load(TABLE))

    it("returns an exact key as it is", function()
      assert.are.equal("gpt-4o-mini-2024-07-18", fixture():resolve("gpt-4o-mini-2024-07-18"))
    end)

    it("drops a provider prefix", function()
      assert.are.equal("gpt-4o-mini", fixture():resolve("openai/gpt-4o-mini"))
    end)

    it("drops nested provider prefixes one at a time", function()
      assert.are.equal("claude-3.5-sonnet", p:resolve("openrouter/anthropic/claude-3.5-sonnet"))
      assert.are.equal("meta-llama/llama-3-8b", p:resolve("openrouter/meta-llama/llama-3-8b"))
    end)

    it("drops a :variant suffix", function()
      assert.are.equal("claude-3.5-sonnet", p:resolve("claude-3.5-sonnet:beta"))
    end)

    it("does not price an OpenRouter :free model at the paid price", function()
      assert.is_nil(p:resolve("meta-llama/llama-3-8b:free"))
    end)

    it("drops a YYYY-MM-DD date suffix", function()
      assert.are.equal("gpt-4o-mini", p:resolve("gpt-4o-mini-2024-07-18"))
    end)

    it("drops a YYYYMMDD date suffix", function()
      assert.are.equal("claude-3-5-sonnet", p:resolve("claude-3-5-sonnet-20241022"))
    end)

    it("drops a date suffix of a fixture model", function()
      assert.are.equal("claude-opus-4-1", fixture():resolve("anthropic/claude-opus-4-1-20990101"))
    end)

    it("combines prefix, variant and date rules", function()
      assert.are.equal("claude-3-5-sonnet", p:resolve("openrouter/anthropic/claude-3-5-sonnet-20241022:beta"))
    end)

    it("matches OpenRouter's dotted versions to LiteLLM's hyphenated keys", function()
      assert.are.equal("claude-sonnet-4-5", fixture():resolve("anthropic/claude-sonnet-4.5"))
    end)

    it("keeps a dot that is part of the key", function()
      assert.are.equal("gpt-4.1", fixture():resolve("openai/gpt-4.1"))
    end)

    it("returns nil for an unknown model, also when asked again", function()
      assert.is_nil(p:resolve("no-such-model"))
      assert.is_nil(p:resolve("no-such-model"))
    end)

    it("raises on a model that is not a string", function()
      assert.has_error(function() p:resolve(nil) end, "bad argument #1 to 'resolve' (string expected, got nil)")
    end)
  end)

  describe("prices()", function()
    it("returns the resolved entry's prices in USD per token", function()
      local lits = LITS["gpt-4o-mini"]
      assert.same({
        input_cost_per_token = tonumber(lits.input_cost_per_token),
        output_cost_per_token = tonumber(lits.output_cost_per_token),
        cache_read_input_token_cost = tonumber(lits.cache_read_input_token_cost),
      }, fixture():prices("openai/gpt-4o-mini"))
    end)

    it("returns nil for an unpriced model", function()
      assert.is_nil(fixture():prices("no-such-model"))
    end)
  end)
end)

describe("genaudit.core price_table", function()
  it("stores and returns prices and counts models", function()
    local pt = core.price_table()
    assert.is_true(pt:set("a", { input_cost_per_token = 3e-07, output_cost_per_token = 1.2e-06 }))
    assert.is_true(pt:set("b", { input_cost_per_token = 0, output_cost_per_token = 0 }))
    assert.same({ input_cost_per_token = 3e-07, output_cost_per_token = 1.2e-06 }, pt:get("a"))
    assert.same({ input_cost_per_token = 0, output_cost_per_token = 0 }, pt:get("b"))
    assert.are.equal(2, pt:count())
    assert.are.equal("genaudit.price_table (2 models)", tostring(pt))
  end)

  it("returns nil for a model it does not hold", function()
    assert.is_nil(core.price_table():get("x"))
  end)

  it("replaces the prices of a model set twice", function()
    local pt = core.price_table()
    pt:set("a", { input_cost_per_token = 1e-06 })
    pt:set("a", { output_cost_per_token = 2e-06 })
    assert.are.equal(1, pt:count())
    assert.same({ output_cost_per_token = 2e-06 }, pt:get("a"))
  end)

  it("keeps model names that differ after a NUL byte apart", function()
    local pt = core.price_table()
    pt:set("a\0x", { input_cost_per_token = 1e-06 })
    pt:set("a\0y", { input_cost_per_token = 2e-06 })
    assert.are.equal(1e-06, pt:get("a\0x").input_cost_per_token)
    assert.are.equal(2e-06, pt:get("a\0y").input_cost_per_token)
    assert.is_nil(pt:get("a"))
  end)

  it("parses decimal strings exactly", function()
    local pt, m = core.price_table(), core.meter()
    pt:set("s", { input_cost_per_token = "0.000000123456789012", output_cost_per_token = "+4.5E-6" })
    m:add_call{ kind = "initial", model = "s", prices = pt, prompt_tokens = 1000000, completion_tokens = 1 }
    -- 123456.789012 pico rounds half up to 123457; 4.5e-6 USD is 4500000 pico
    assert.are.equal("123461500000", m:totals().estimated_cost_picousd)
  end)

  it("rounds sub-picodollar digits half up", function()
    local pt, m = core.price_table(), core.meter()
    pt:set("up", { input_cost_per_token = "1.5e-12", output_cost_per_token = "1.49e-12" })
    m:add_call{ kind = "initial", model = "up", prices = pt, prompt_tokens = 1, completion_tokens = 1 }
    assert.are.equal("3", m:totals().estimated_cost_picousd)
  end)

  it("rounds a double price by the shortest decimal that reads back as it", function()
    -- the double nearest 2.5e-12 lies just below it (2.4999999999999998e-12);
    -- the price was written as 2.5e-12, which rounds half up to 3 picodollars
    local pt, m = core.price_table(), core.meter()
    pt:set("d", { input_cost_per_token = 2.5e-12, output_cost_per_token = 4.5e-12 })
    m:add_call{ kind = "initial", model = "d", prices = pt, prompt_tokens = 1, completion_tokens = 1 }
    assert.are.equal("8", m:totals().estimated_cost_picousd)
  end)

  it("rounds a price below half a picodollar to 0", function()
    local pt, m = core.price_table(), core.meter()
    pt:set("tiny", { input_cost_per_token = "5e-14", output_cost_per_token = "0.5e-12" })
    m:add_call{ kind = "initial", model = "tiny", prices = pt, prompt_tokens = 1, completion_tokens = 1 }
    assert.are.equal("1", m:totals().estimated_cost_picousd)
  end)

  it("rejects a negative price with INVALID", function()
    local ok, err, code = core.price_table():set("m", { input_cost_per_token = -1e-06 })
    assert.is_nil(ok)
    assert.are.equal("INVALID: input_cost_per_token must be a non-negative decimal number", err)
    assert.are.equal("INVALID", code)
  end)

  it("rejects a malformed decimal string with INVALID", function()
    for _, s in ipairs{ "", "abc", "-1e-06", "1e", "0x10", " 1e-06", "1e-06 ", "nan", "inf" } do
      local ok, err = core.price_table():set("m", { output_cost_per_token = s })
      assert.is_nil(ok, s)
      assert.are.equal("INVALID: output_cost_per_token must be a non-negative decimal number", err)
    end
  end)

  it("rejects NaN and infinite prices with INVALID", function()
    for _, v in ipairs{ 0 / 0, math.huge } do
      local _, err = core.price_table():set("m", { input_cost_per_token = v })
      assert.are.equal("INVALID: input_cost_per_token must be a non-negative decimal number", err)
    end
  end)

  it("rejects a price too large for int64 picodollars with INVALID", function()
    local _, err = core.price_table():set("m", { input_cost_per_token = "1e7" })
    assert.are.equal("INVALID: input_cost_per_token is too large (at most 9223372 USD per token)", err)
  end)

  it("rejects prices with none of the token price fields", function()
    local pt = core.price_table()
    local _, err = pt:set("m", { input_cost_per_second = 1e-06 })
    assert.are.equal("INVALID: prices has none of the token price fields", err)
    assert.are.equal(0, pt:count())
  end)

  it("returns true from close() twice and shows (closed)", function()
    local pt = core.price_table()
    assert.is_true(pt:close())
    assert.is_true(pt:close())
    assert.are.equal("genaudit.price_table (closed)", tostring(pt))
  end)

  it("raises on use after close", function()
    local pt = core.price_table()
    pt:set("m", { input_cost_per_token = 1e-06 })
    pt:close()
    assert.has_error(function() pt:get("m") end, "attempt to use a closed price_table")
    assert.has_error(function() pt:set("m", { input_cost_per_token = 1e-06 }) end,
      "attempt to use a closed price_table")
    assert.has_error(function() pt:count() end, "attempt to use a closed price_table")
  end)
end)
