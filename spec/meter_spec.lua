-- spec/meter_spec.lua — genaudit.core's meter: token sums and cost in exact
-- integer picodollars. Expected values are computed here by integer arithmetic
-- on the price literals read from the fixture's JSON text, never by the code
-- under test.
local core = require("genaudit.core")
local pricing = require("genaudit.pricing")

local FIXTURE = "lua/genaudit/data/litellm-model-prices-2026-07.json"

local function read_all(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local TEXT = read_all(FIXTURE)

-- The literal text of `field` in `model`'s entry: entries sit at an indent of
-- 2 spaces, their fields at 4, nested objects deeper.
local function literal(model, field)
  local start = assert(TEXT:find('\n  "' .. model .. '": {\n', 1, true), model)
  local stop = TEXT:find("\n  }", start + 1, true)
  local block = TEXT:sub(start, stop)
  return (assert(block:match('\n    "' .. field .. '": ([^,\n]+)'), model .. "." .. field))
end

-- "3.75e-06" -> 3750000 picodollars: the literal's digits shifted by its
-- exponent, integers only (exact under LuaJIT too below 2^53).
local function pico(lit)
  local int, frac, exp = lit:match("^(%d+)%.?(%d*)[eE]?([-+]?%d*)$")
  assert(int, "not a plain decimal: " .. lit)
  local digits = int .. frac
  local shift = 12 + (tonumber(exp) or 0) - #frac
  if shift < 0 then
    assert(digits:sub(shift) == string.rep("0", -shift), "finer than a picodollar: " .. lit)
    digits = digits:sub(1, #digits + shift)
  else
    digits = digits .. string.rep("0", shift)
  end
  local v = 0
  for d in digits:gmatch("%d") do v = v * 10 + (d:byte() - 48) end
  return v
end

local function price(model, field) return pico(literal(model, field)) end

-- an exact integer as the decimal string the meter reports
local function dec(v) return string.format("%.0f", v) end

-- USD from exact picodollars: one correctly rounded division
local function usd(v) return v / 1e12 end

local PT -- the fixture's price table, loaded once
local function fixture_pt()
  if not PT then PT = assert(pricing.load(FIXTURE)):price_table() end
  return PT
end

local function call(t)
  t.kind = t.kind or "initial"
  return t
end

describe("genaudit.core meter", function()
  describe("add_call() and totals()", function()
    it("sums tokens and cost of an initial call and two repairs exactly", function()
      local pt, m = fixture_pt(), core.meter()
      local model = "gpt-4o-mini"
      assert.is_true(m:add_call{ kind = "initial", model = model, prices = pt,
        prompt_tokens = 1200, completion_tokens = 310 })
      assert.is_true(m:add_call{ kind = "repair", model = model, prices = pt,
        prompt_tokens = 1650, completion_tokens = 287, cached_prompt_tokens = 1024 })
      assert.is_true(m:add_call{ kind = "repair", model = model, prices = pt,
        prompt_tokens = 1903, completion_tokens = 295, cached_prompt_tokens = 1536 })
      local input, output = price(model, "input_cost_per_token"), price(model, "output_cost_per_token")
      local cache_read = price(model, "cache_read_input_token_cost")
      local initial = 1200 * input + 310 * output
      local repair1 = (1650 - 1024) * input + 1024 * cache_read + 287 * output
      local repair2 = (1903 - 1536) * input + 1536 * cache_read + 295 * output
      local total = initial + repair1 + repair2
      local t = m:totals()
      assert.are.equal(1200 + 1650 + 1903, t.prompt_tokens)
      assert.are.equal(310 + 287 + 295, t.completion_tokens)
      assert.are.equal(1200 + 1650 + 1903 + 310 + 287 + 295, t.total_tokens)
      assert.are.equal(1024 + 1536, t.cached_prompt_tokens)
      assert.are.equal(0, t.cache_write_tokens)
      assert.are.equal(0, t.reasoning_tokens)
      assert.are.equal(3, t.call_count)
      assert.are.equal(dec(total), t.estimated_cost_picousd)
      assert.are.equal(usd(total), t.estimated_cost)
      assert.are.equal(usd(initial), t.initial_cost)
      assert.are.equal(usd(repair1 + repair2), t.repair_cost)
      assert.are.equal("local_estimate", t.cost_source)
      assert.is_nil(t.provider_cost)
    end)

    it("lists each call in order with its kind, model, tokens and cost", function()
      local pt, m = fixture_pt(), core.meter()
      local model = "gpt-4o-mini"
      m:add_call{ kind = "initial", model = model, prices = pt, prompt_tokens = 10, completion_tokens = 5,
        provider_wait_us = 1500 }
      m:add_call{ kind = "repair", model = model, prices = pt, prompt_tokens = 12, completion_tokens = 6,
        cached_prompt_tokens = 4, provider_cost = 0.00002, provider_wait_us = 2500 }
      local input, output = price(model, "input_cost_per_token"), price(model, "output_cost_per_token")
      local cache_read = price(model, "cache_read_input_token_cost")
      assert.same({
        { kind = "initial", model = model, prompt_tokens = 10, completion_tokens = 5, total_tokens = 15,
          cached_prompt_tokens = 0, cache_write_tokens = 0, reasoning_tokens = 0,
          cost = usd(10 * input + 5 * output), cost_source = "local_estimate", provider_wait_us = 1500 },
        { kind = "repair", model = model, prompt_tokens = 12, completion_tokens = 6, total_tokens = 18,
          cached_prompt_tokens = 4, cache_write_tokens = 0, reasoning_tokens = 0,
          cost = usd(8 * input + 4 * cache_read + 6 * output), cost_source = "local_estimate",
          provider_cost = 0.00002, provider_wait_us = 2500 },
      }, m:totals().calls)
    end)

    it("prices cache reads and cache writes at the model's cache prices", function()
      local pt, m = fixture_pt(), core.meter()
      local model = "claude-sonnet-4-5"
      m:add_call(call{ model = model, prices = pt, prompt_tokens = 12000, completion_tokens = 900,
        cached_prompt_tokens = 8000, cache_write_tokens = 3000 })
      local expected = (12000 - 8000 - 3000) * price(model, "input_cost_per_token")
        + 8000 * price(model, "cache_read_input_token_cost")
        + 3000 * price(model, "cache_creation_input_token_cost")
        + 900 * price(model, "output_cost_per_token")
      assert.are.equal(dec(expected), m:totals().estimated_cost_picousd)
    end)

    it("prices reasoning tokens at the fixture's output_cost_per_reasoning_token", function()
      local pt, m = fixture_pt(), core.meter()
      local model = "gemini-2.5-flash"
      m:add_call(call{ model = model, prices = pt, prompt_tokens = 400, completion_tokens = 2500,
        reasoning_tokens = 2100, cached_prompt_tokens = 100 })
      local expected = 300 * price(model, "input_cost_per_token")
        + 100 * price(model, "cache_read_input_token_cost")
        + 400 * price(model, "output_cost_per_token")
        + 2100 * price(model, "output_cost_per_reasoning_token")
      assert.are.equal(dec(expected), m:totals().estimated_cost_picousd)
    end)

    it("prices reasoning tokens apart from other output when their price differs", function()
      local pt, m = core.price_table(), core.meter()
      pt:set("r", { input_cost_per_token = "0.000001", output_cost_per_token = "0.000004",
        output_cost_per_reasoning_token = "0.000009" })
      m:add_call(call{ model = "r", prices = pt, prompt_tokens = 10, completion_tokens = 100, reasoning_tokens = 60 })
      -- 10 * 1e6 + 40 * 4e6 + 60 * 9e6 picodollars
      assert.are.equal("710000000", m:totals().estimated_cost_picousd)
    end)

    it("falls back to the input and output prices when cache and reasoning prices are missing", function()
      local pt, m = core.price_table(), core.meter()
      pt:set("plain", { input_cost_per_token = 2e-06, output_cost_per_token = 8e-06 })
      m:add_call(call{ model = "plain", prices = pt, prompt_tokens = 100, completion_tokens = 50,
        cached_prompt_tokens = 30, cache_write_tokens = 20, reasoning_tokens = 10 })
      -- every prompt token at 2e6 and every completion token at 8e6 picodollars
      assert.are.equal(dec(100 * 2000000 + 50 * 8000000), m:totals().estimated_cost_picousd)
    end)

    it("uses the above_200k prices when prompt_tokens exceeds 200000", function()
      local pt, m = fixture_pt(), core.meter()
      local model = "claude-sonnet-4-5"
      m:add_call(call{ model = model, prices = pt, prompt_tokens = 250000, completion_tokens = 4000,
        cached_prompt_tokens = 50000, cache_write_tokens = 10000 })
      local expected = (250000 - 50000 - 10000) * price(model, "input_cost_per_token_above_200k_tokens")
        + 50000 * price(model, "cache_read_input_token_cost_above_200k_tokens")
        + 10000 * price(model, "cache_creation_input_token_cost_above_200k_tokens")
        + 4000 * price(model, "output_cost_per_token_above_200k_tokens")
      assert.are.equal(dec(expected), m:totals().estimated_cost_picousd)
    end)

    it("keeps the base prices at exactly 200000 prompt tokens", function()
      local pt, m = fixture_pt(), core.meter()
      local model = "claude-sonnet-4-5"
      m:add_call(call{ model = model, prices = pt, prompt_tokens = 200000, completion_tokens = 4000 })
      local expected = 200000 * price(model, "input_cost_per_token") + 4000 * price(model, "output_cost_per_token")
      assert.are.equal(dec(expected), m:totals().estimated_cost_picousd)
    end)

    it("keeps a total_tokens the provider reports and defaults it to prompt + completion", function()
      local m = core.meter()
      m:add_call(call{ prompt_tokens = 10, completion_tokens = 5, total_tokens = 40 })
      m:add_call(call{ prompt_tokens = 7, completion_tokens = 3 })
      local t = m:totals()
      assert.are.equal(40, t.calls[1].total_tokens)
      assert.are.equal(10, t.calls[2].total_tokens)
      assert.are.equal(50, t.total_tokens)
    end)

    it("accepts integral floats such as cjson's 42.0", function()
      local m = core.meter()
      assert.is_true(m:add_call(call{ prompt_tokens = 42.0, completion_tokens = 7.0 }))
      assert.are.equal(49, m:totals().total_tokens)
    end)

    it("gives a nil estimate and cost_source 'unpriced' for a model missing from the table", function()
      local pt, m = fixture_pt(), core.meter()
      m:add_call(call{ model = "no-such-model", prices = pt, prompt_tokens = 10, completion_tokens = 5 })
      local t = m:totals()
      assert.is_nil(t.estimated_cost)
      assert.is_nil(t.estimated_cost_picousd)
      assert.is_nil(t.initial_cost)
      assert.is_nil(t.repair_cost)
      assert.are.equal(core.null, t.calls[1].cost) -- JSON null in the stored document, never 0
      assert.same({ "unpriced", "unpriced" }, { t.cost_source, t.calls[1].cost_source })
    end)

    it("gives a nil estimate when no price table is passed", function()
      local m = core.meter()
      m:add_call(call{ model = "gpt-4o-mini", prompt_tokens = 10, completion_tokens = 5 })
      assert.is_nil(m:totals().estimated_cost)
    end)

    it("gives a nil estimate when one priced call is followed by an unpriced one", function()
      local pt, m = fixture_pt(), core.meter()
      m:add_call(call{ model = "gpt-4o-mini", prices = pt, prompt_tokens = 10, completion_tokens = 5 })
      m:add_call{ kind = "repair", model = "no-such-model", prices = pt, prompt_tokens = 10, completion_tokens = 5 }
      local t = m:totals()
      assert.is_nil(t.estimated_cost)
      assert.are.equal(usd(10 * price("gpt-4o-mini", "input_cost_per_token")
        + 5 * price("gpt-4o-mini", "output_cost_per_token")), t.initial_cost)
      assert.is_nil(t.repair_cost)
      assert.are.equal("unpriced", t.cost_source)
    end)

    it("gives a nil cost when the entry lacks a price the call needs", function()
      local pt, m = core.price_table(), core.meter()
      pt:set("out-only", { output_cost_per_token = 1e-06 })
      m:add_call(call{ model = "out-only", prices = pt, prompt_tokens = 10, completion_tokens = 5 })
      assert.is_nil(m:totals().estimated_cost)
    end)

    it("reports repair_cost 0 when there were no repairs and the calls are priced", function()
      local pt, m = fixture_pt(), core.meter()
      m:add_call(call{ model = "gpt-4o-mini", prices = pt, prompt_tokens = 10, completion_tokens = 5 })
      assert.are.equal(0, m:totals().repair_cost)
    end)

    it("keeps the provider's reported cost beside the local estimate", function()
      local pt, m = fixture_pt(), core.meter()
      local model = "gpt-4o-mini"
      m:add_call(call{ model = model, prices = pt, prompt_tokens = 1000, completion_tokens = 200, provider_cost = 0.1 })
      m:add_call{ kind = "repair", model = model, prices = pt, prompt_tokens = 1000, completion_tokens = 200,
        provider_cost = 0.2 }
      local t = m:totals()
      assert.are.equal(0.3, t.provider_cost) -- summed in picodollars: no 0.30000000000000004
      assert.are.equal(usd(2 * (1000 * price(model, "input_cost_per_token")
        + 200 * price(model, "output_cost_per_token"))), t.estimated_cost)
      assert.are.equal("local_estimate", t.cost_source) -- the estimate is local; the billed cost is beside it
      assert.are.equal(0.1, t.calls[1].provider_cost)
    end)

    it("uses the provider's billed cost as the estimate when there is no local price (cost_source 'provider')",
      function()
        local m = core.meter()
        m:add_call(call{ model = "x", prompt_tokens = 10, completion_tokens = 5, provider_cost = "0.000042" })
        local t = m:totals()
        assert.same({ 0.000042, 0.000042, "42000000", "provider" },
          { t.provider_cost, t.estimated_cost, t.estimated_cost_picousd, t.cost_source })
        assert.same({ 0.000042, "provider" }, { t.calls[1].cost, t.calls[1].cost_source })
      end)

    it("sums 1000 calls of 3 tokens at 1e-07 to exactly 0.0003", function()
      local pt, m = core.price_table(), core.meter()
      pt:set("cheap", { input_cost_per_token = 1e-07, output_cost_per_token = 1e-07 })
      local naive = 0
      for _ = 1, 1000 do
        assert.is_true(m:add_call(call{ model = "cheap", prices = pt, prompt_tokens = 3, completion_tokens = 0 }))
        naive = naive + 3 * 1e-07
      end
      assert.are_not.equal(0.0003, naive) -- the drift that summing doubles would give
      local t = m:totals()
      assert.are.equal(0.0003, t.estimated_cost)
      assert.are.equal("300000000", t.estimated_cost_picousd)
      assert.are.equal(1000, t.call_count)
    end)

    it("sums provider_wait_us over the calls", function()
      local m = core.meter()
      m:add_call(call{ prompt_tokens = 1, completion_tokens = 1, provider_wait_us = 120000 })
      m:add_call(call{ prompt_tokens = 1, completion_tokens = 1, provider_wait_us = 80500 })
      m:add_call(call{ prompt_tokens = 1, completion_tokens = 1 })
      assert.are.equal(200500, m:totals().provider_wait_us)
    end)

    it("reports an empty meter (no call was made) as zero tokens, zero cost and cost_source 'no_calls'", function()
      local t = core.meter():totals()
      assert.same({
        prompt_tokens = 0, completion_tokens = 0, total_tokens = 0, cached_prompt_tokens = 0,
        cache_write_tokens = 0, reasoning_tokens = 0, estimated_cost = 0, estimated_cost_picousd = "0",
        repair_cost = 0, cost_source = "no_calls", calls = {}, call_count = 0, provider_wait_us = 0,
      }, t)
    end)
  end)

  describe("costs that are not known", function()
    it("gives a null total, never a partial sum, when a repair call failed before any usage", function()
      local pt, m = fixture_pt(), core.meter()
      assert.is_true(m:add_call{ kind = "initial", model = "gpt-4o-mini", prices = pt, prompt_tokens = 10,
        completion_tokens = 5 })
      assert.is_true(m:add_failed_call{ kind = "repair", model = "gpt-4o-mini", reason = "failed_before_usage",
        provider_wait_us = 700 })
      local t = m:totals()
      local initial = usd(10 * price("gpt-4o-mini", "input_cost_per_token")
        + 5 * price("gpt-4o-mini", "output_cost_per_token"))
      assert.same({ nil, nil, initial, nil, "failed_before_usage" },
        { t.estimated_cost, t.estimated_cost_picousd, t.initial_cost, t.repair_cost, t.cost_source })
      assert.same({ initial, "local_estimate" }, { t.calls[1].cost, t.calls[1].cost_source })
      assert.same({ kind = "repair", model = "gpt-4o-mini", cost = core.null, cost_source = "failed_before_usage",
        provider_wait_us = 700 }, t.calls[2])
      assert.same({ 10, 5, 15, 2, 700 }, { t.prompt_tokens, t.completion_tokens, t.total_tokens, t.call_count,
        t.provider_wait_us })
    end)

    it("gives a null cost with cost_source 'no_usage' for an answer without usage", function()
      local m = core.meter()
      assert.is_true(m:add_failed_call{ kind = "initial", model = "served-1", reason = "no_usage" })
      local t = m:totals()
      assert.same({ nil, nil, "no_usage", "no_usage" },
        { t.estimated_cost, t.initial_cost, t.cost_source, t.calls[1].cost_source })
    end)

    it("names the reason of the first call of unknown cost", function()
      local pt, m = fixture_pt(), core.meter()
      m:add_call{ kind = "initial", model = "gpt-4o", prices = pt, prompt_tokens = 10, completion_tokens = 5,
        unpriced_reason = "unpriced_served_model" }
      m:add_failed_call{ kind = "repair", reason = "no_usage" }
      local t = m:totals()
      assert.same({ "local_estimate", "no_usage" }, { t.calls[1].cost_source, t.calls[2].cost_source })
      assert.equal("no_usage", t.cost_source)
      m:reset()
      m:add_call{ kind = "initial", model = "served-x", prices = pt, prompt_tokens = 10, completion_tokens = 5,
        unpriced_reason = "unpriced_served_model" }
      m:add_failed_call{ kind = "repair", reason = "no_usage" }
      assert.equal("unpriced_served_model", m:totals().cost_source)
    end)

    it("sums local estimates and billed costs into one total labelled 'mixed'", function()
      local pt, m = fixture_pt(), core.meter()
      m:add_call{ kind = "initial", model = "gpt-4o-mini", prices = pt, prompt_tokens = 10, completion_tokens = 5 }
      m:add_call{ kind = "repair", model = "not-priced", prices = pt, prompt_tokens = 10, completion_tokens = 5,
        provider_cost = "0.000001" }
      local t = m:totals()
      local initial = 10 * price("gpt-4o-mini", "input_cost_per_token")
        + 5 * price("gpt-4o-mini", "output_cost_per_token")
      assert.same({ usd(initial + 1000000), usd(initial), usd(1000000), "mixed" },
        { t.estimated_cost, t.initial_cost, t.repair_cost, t.cost_source })
      assert.is_nil(t.provider_cost) -- only one call reported one: no partial sum
      assert.same({ "local_estimate", "provider" }, { t.calls[1].cost_source, t.calls[2].cost_source })
    end)

    it("refuses a failed call with an unknown reason", function()
      local m = core.meter()
      assert.same({ nil, "INVALID: reason must be 'no_usage' or 'failed_before_usage'", "INVALID" },
        { m:add_failed_call{ kind = "initial", reason = "oops" } })
      assert.equal(0, m:totals().call_count)
    end)
  end)

  describe("add_call() with invalid counts", function()
    local function rejects(bad, message)
      local pt, m = fixture_pt(), core.meter()
      m:add_call{ kind = "initial", model = "gpt-4o-mini", prices = pt, prompt_tokens = 100, completion_tokens = 20 }
      local before = m:totals()
      bad.kind = bad.kind or "repair"
      bad.model, bad.prices = "gpt-4o-mini", pt
      local ok, err, code = m:add_call(bad)
      assert.is_nil(ok)
      assert.are.equal(message, err)
      assert.are.equal("INVALID", code)
      assert.same(before, m:totals())
    end

    it("rejects a negative prompt_tokens and leaves the meter unchanged", function()
      rejects({ prompt_tokens = -1, completion_tokens = 5 }, "INVALID: prompt_tokens must be a non-negative integer")
    end)

    it("rejects a fractional completion_tokens and leaves the meter unchanged", function()
      rejects({ prompt_tokens = 10, completion_tokens = 1.5 },
        "INVALID: completion_tokens must be a non-negative integer")
    end)

    it("rejects a missing prompt_tokens", function()
      rejects({ completion_tokens = 5 }, "INVALID: prompt_tokens must be a non-negative integer")
    end)

    it("rejects a count given as a string", function()
      rejects({ prompt_tokens = 10, completion_tokens = 5, reasoning_tokens = "3" },
        "INVALID: reasoning_tokens must be a non-negative integer")
    end)

    it("rejects cached_prompt_tokens greater than prompt_tokens", function()
      rejects({ prompt_tokens = 10, completion_tokens = 5, cached_prompt_tokens = 11 },
        "INVALID: cached_prompt_tokens + cache_write_tokens must not exceed prompt_tokens")
    end)

    it("rejects cached plus cache-write tokens greater than prompt_tokens", function()
      rejects({ prompt_tokens = 10, completion_tokens = 5, cached_prompt_tokens = 6, cache_write_tokens = 5 },
        "INVALID: cached_prompt_tokens + cache_write_tokens must not exceed prompt_tokens")
    end)

    it("rejects reasoning_tokens greater than completion_tokens", function()
      rejects({ prompt_tokens = 10, completion_tokens = 5, reasoning_tokens = 6 },
        "INVALID: reasoning_tokens must not exceed completion_tokens")
    end)

    it("rejects a negative provider_cost", function()
      rejects({ prompt_tokens = 10, completion_tokens = 5, provider_cost = -0.01 },
        "INVALID: provider_cost must be a non-negative number of USD")
    end)

    it("rejects a negative provider_wait_us", function()
      rejects({ prompt_tokens = 10, completion_tokens = 5, provider_wait_us = -1 },
        "INVALID: provider_wait_us must be a non-negative integer")
    end)

    it("rejects a kind that is not a string", function()
      rejects({ kind = 1, prompt_tokens = 10, completion_tokens = 5 },
        "INVALID: kind must be a non-empty string of at most 64 bytes")
    end)

    it("rejects a total_tokens below prompt_tokens + completion_tokens", function()
      rejects({ prompt_tokens = 10, completion_tokens = 5, total_tokens = 14 },
        "INVALID: total_tokens must not be less than prompt_tokens + completion_tokens")
    end)

    it("rejects an unknown unpriced_reason", function()
      rejects({ prompt_tokens = 10, completion_tokens = 5, unpriced_reason = "free" },
        "INVALID: unpriced_reason must be 'unpriced' or 'unpriced_served_model'")
    end)

    it("raises when prices is not a price table", function()
      assert.has_error(function()
        core.meter():add_call(call{ prices = {}, prompt_tokens = 1, completion_tokens = 1 })
      end, "bad argument #1 to 'add_call' (prices must be a genaudit.price_table or nil)")
    end)
  end)

  describe("reset()", function()
    it("forgets every call", function()
      local m = core.meter()
      m:add_call(call{ prompt_tokens = 10, completion_tokens = 5, provider_wait_us = 3 })
      assert.is_true(m:reset())
      local t = m:totals()
      assert.are.equal(0, t.call_count)
      assert.are.equal(0, t.total_tokens)
      assert.are.equal(0, t.provider_wait_us)
      assert.same({}, t.calls)
    end)
  end)

  describe("close()", function()
    it("returns true twice and shows (closed)", function()
      local m = core.meter()
      m:add_call(call{ prompt_tokens = 1, completion_tokens = 1 })
      assert.are.equal("genaudit.meter (1 call)", tostring(m))
      assert.is_true(m:close())
      assert.is_true(m:close())
      assert.are.equal("genaudit.meter (closed)", tostring(m))
    end)

    it("raises on use after close", function()
      local m = core.meter()
      m:close()
      assert.has_error(function() m:totals() end, "attempt to use a closed meter")
      assert.has_error(function() m:add_call(call{ prompt_tokens = 1, completion_tokens = 1 }) end,
        "attempt to use a closed meter")
    end)

    it("raises when a call names a closed price table", function()
      local pt = core.price_table()
      pt:close()
      assert.has_error(function()
        core.meter():add_call(call{ prices = pt, model = "x", prompt_tokens = 1, completion_tokens = 1 })
      end, "attempt to use a closed price_table")
    end)
  end)

  describe("core.usd_from_picousd()", function()
    it("converts a decimal string of picodollars to the nearest USD double", function()
      assert.are.equal(0.0003, core.usd_from_picousd("300000000"))
      assert.are.equal(tonumber("123456789012345678901234567890e-12"),
        core.usd_from_picousd("123456789012345678901234567890"))
    end)

    it("converts an integer", function()
      assert.are.equal(1.75, core.usd_from_picousd(1750000000000))
    end)

    it("raises on a string that is not an integer", function()
      assert.has_error(function() core.usd_from_picousd("1.5") end,
        "bad argument #1 to 'usd_from_picousd' (decimal digits of an integer expected)")
    end)
  end)
end)
