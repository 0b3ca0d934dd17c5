-- spec/retry_spec.lua — the one retry policy of both HTTP transports
-- (csrc/ga_retry.c): which statuses and transport failures are retried, the
-- code of each failure, the backoff rule and the Retry-After parser.
local core = require("genaudit.core")

describe("genaudit.core retry policy", function()
  it("retries 429, 500, 502, 503 and 504, and no other status", function()
    assert.same({ 429, 500, 502, 503, 504 }, core.retry_policy().statuses)
    for st = 100, 599 do
      local want = st == 429 or st == 500 or st == 502 or st == 503 or st == 504
      assert.equal(want, core.retry_policy(st), "status " .. st)
    end
  end)

  it("has one code and one retry flag per transport failure; TLS is never retried", function()
    local want = {
      refused = { code = "CONNECT", retry = true }, resolve = { code = "CONNECT", retry = true },
      connect_timeout = { code = "TIMEOUT", retry = true }, timeout = { code = "TIMEOUT", retry = true },
      tls = { code = "TLS", retry = false }, closed = { code = "HTTP", retry = true },
      protocol = { code = "HTTP", retry = false }, too_large = { code = "TOO_LARGE", retry = false },
      internal = { code = "HTTP", retry = false },
      -- streamed bodies (issue 15): refused by the consumer, or silent too long
      aborted = { code = "STREAM_ABORTED", retry = false }, stalled = { code = "TIMEOUT", retry = false },
    }
    assert.same(want, core.retry_policy().failures)
    for kind, w in pairs(want) do
      assert.same({ w.retry, w.code }, { core.retry_policy(kind) })
    end
    assert.error_matches(function() core.retry_policy("dns") end, "unknown transport failure 'dns'", 1, true)
    assert.has_error(function() core.retry_policy({}) end)
  end)

  describe("retry_delay(attempt, base_ms, cap_ms, retry_after_ms, rnd)", function()
    it("doubles from base_ms with equal jitter: d/2 + rnd % (d - d/2 + 1)", function()
      -- attempt 1: d = 200, in [100, 200]; rnd picks the point
      assert.equal(100, core.retry_delay(1, 200, 30000, nil, 0))
      assert.equal(200, core.retry_delay(1, 200, 30000, nil, 100))
      assert.equal(100, core.retry_delay(1, 200, 30000, nil, 101)) -- wraps: 101 % 101
      assert.equal(150, core.retry_delay(1, 200, 30000, nil, 50))
      -- attempt 3: d = 800
      assert.equal(400, core.retry_delay(3, 200, 30000, nil, 0))
      assert.equal(800, core.retry_delay(3, 200, 30000, nil, 400))
    end)

    it("caps d at cap_ms before the jitter, so capped sleeps still spread over [cap/2, cap]", function()
      assert.equal(15000, core.retry_delay(20, 200, 30000, nil, 0))
      assert.equal(30000, core.retry_delay(20, 200, 30000, nil, 15000))
      assert.equal(25, core.retry_delay(1000000, 1, 50, nil, 0))
    end)

    it("sleeps Retry-After when the server sent one, up to cap_ms", function()
      assert.equal(1000, core.retry_delay(1, 200, 30000, 1000, 12345))
      assert.equal(0, core.retry_delay(2, 200, 30000, 0, 12345))
      assert.equal(50, core.retry_delay(1, 200, 50, 3600000, 0))
    end)

    it("never sleeps with base_ms or cap_ms 0", function()
      assert.equal(0, core.retry_delay(5, 0, 30000, nil, 99))
      assert.equal(0, core.retry_delay(5, 200, 0, nil, 99))
    end)

    it("draws its own random bits when rnd is absent, within the same bounds", function()
      for _ = 1, 50 do
        local d = core.retry_delay(2, 100, 30000)
        assert.is_true(d >= 100 and d <= 200, d)
      end
    end)

    it("raises on bad arguments", function()
      assert.error_matches(function() core.retry_delay(0, 1, 1) end, "attempt must be an integer in 1..1000000",
                           1, true)
      assert.error_matches(function() core.retry_delay(1, -1, 1) end, "base_ms must be an integer in 0..86400000",
                           1, true)
      assert.error_matches(function() core.retry_delay(1, 1, 1.5) end, "cap_ms must be an integer in 0..86400000",
                           1, true)
      assert.error_matches(function() core.retry_delay(1, 1, 1, -2) end, "retry_after_ms must be an integer", 1, true)
      assert.error_matches(function() core.retry_delay(1, 1, 1, nil, -1) end, "rnd must be a non-negative integer",
                           1, true)
    end)
  end)

  describe("retry_after_ms(value)", function()
    it("reads delta-seconds, capped at one day", function()
      assert.equal(0, core.retry_after_ms("0"))
      assert.equal(1000, core.retry_after_ms("1"))
      assert.equal(3600000, core.retry_after_ms("3600"))
      assert.equal(86400000, core.retry_after_ms("99999999999999999999999"))
    end)

    it("reads an HTTP-date: a past one means now, one far ahead is capped at one day", function()
      assert.equal(0, core.retry_after_ms("Wed, 21 Oct 2015 07:28:00 GMT"))
      assert.equal(86400000, core.retry_after_ms("1 Jan 999999999"))
    end)

    it("ignores anything else (RFC 9110: delay-seconds is 1*DIGIT)", function()
      for _, v in ipairs({ "", "1.5", "-1", "0x10", "1e3", " 1", "soon" }) do
        assert.is_nil(core.retry_after_ms(v), v)
      end
      assert.is_nil(core.retry_after_ms(nil))
    end)
  end)
end)
