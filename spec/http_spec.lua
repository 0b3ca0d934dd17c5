-- spec/http_spec.lua — the libcurl client core.http_client (csrc/ga_http.c)
-- against the scriptable loopback server in spec/support/http_server.lua.
local core = require("genaudit.core")
local server = require("spec.support.http_server")

local mtype = rawget(math, "type") -- Lua 5.3+; nil under LuaJIT
local it54 = _VERSION == "Lua 5.4" and it or pending

local function is_integer(v)
  if type(v) ~= "number" or v ~= math.floor(v) then return false end
  return mtype == nil or mtype(v) == "integer"
end

local function now_ms()
  return core.monotonic_us() / 1000
end

local function statuses(attempts)
  local t = {}
  for i, a in ipairs(attempts) do t[i] = a.status or a.code end
  return t
end

describe("genaudit.core http_client", function()
  local srv, client

  setup(function()
    srv = server.start()
  end)

  teardown(function()
    if srv then srv:stop() end
  end)

  before_each(function()
    srv:reset()
    -- proxy = "": never route the loopback tests through an environment proxy
    client = core.http_client{ proxy = "", connect_timeout_ms = 2000, timeout_ms = 5000 }
  end)

  after_each(function()
    client:close()
  end)

  describe("request()", function()
    it("returns a 200 with lower-case headers and the body byte-exact (NUL bytes included)", function()
      -- over 1 MiB: libcurl would add "Expect: 100-continue" unless told not to
      local body = "a\0b\0c" .. string.rep("\0\255\1", 400000) .. "\0"
      srv:script{ { echo = true, headers = { { "X-Custom", "v1" } } } }
      local res = assert(client:request{
        url = srv.url .. "/v1/chat/completions?x=1",
        headers = { ["Content-Type"] = "application/octet-stream", Authorization = "Bearer sk-abc" },
        body = body, retries = 0,
      })
      assert.equal(200, res.status)
      assert.equal(body, res.body)
      assert.equal(#body, #res.body)
      assert.equal("POST", res.headers["x-echo-method"])
      assert.equal("/v1/chat/completions?x=1", res.headers["x-echo-target"])
      assert.equal(tostring(#body), res.headers["x-echo-length"])
      assert.equal("Bearer sk-abc", res.headers["x-echo-h-authorization"])
      assert.equal("application/octet-stream", res.headers["x-echo-h-content-type"])
      assert.is_nil(res.headers["x-echo-h-expect"])
      assert.equal("v1", res.headers["x-custom"])
      assert.is_nil(res.headers["X-Custom"])
      assert.equal(0, res.retries)
      assert.equal(1, #res.attempts)
      assert.equal(200, res.attempts[1].status)
      assert.is_nil(res.attempts[1].error)
      assert.is_nil(res.attempts[1].slept_ms)
      assert.is_nil(res.attempts[1].retry_after_ms)
    end)

    it("keeps the last value of a repeated response header", function()
      srv:script{ { body = "ok", headers = { { "X-Dup", "first" }, { "X-Dup", "second" } } } }
      local res = assert(client:request{ url = srv.url .. "/", retries = 0 })
      assert.equal("second", res.headers["x-dup"])
      assert.equal("ok", res.body)
    end)

    it("sends GET without a body, and PUT/DELETE with their method", function()
      local res = assert(client:request{ url = srv.url .. "/g", method = "GET", retries = 0 })
      assert.equal("GET", res.headers["x-echo-method"])
      assert.equal("0", res.headers["x-echo-length"])
      res = assert(client:request{ url = srv.url .. "/p", method = "PUT", body = "xyz", retries = 0 })
      assert.equal("PUT", res.headers["x-echo-method"])
      assert.equal("xyz", res.body)
      res = assert(client:request{ url = srv.url .. "/d", method = "DELETE", retries = 0 })
      assert.equal("DELETE", res.headers["x-echo-method"])
      res = assert(client:request{ url = srv.url .. "/h", method = "HEAD", retries = 0 })
      assert.equal(200, res.status)
      assert.equal("", res.body)
      res = assert(client:request{ url = srv.url .. "/again", body = "after head", retries = 0 })
      assert.equal("POST", res.headers["x-echo-method"])
      assert.equal("after head", res.body)
    end)

    it("honours Retry-After: 1 on a 429, then returns the 200 (2 attempts, slept 1000 ms)", function()
      srv:script{ { status = 429, headers = { { "Retry-After", "1" } }, body = "slow down" }, { body = "done" } }
      local t0 = now_ms()
      local res = assert(client:request{ url = srv.url .. "/v1/chat/completions", body = "{}", retries = 2,
                                         backoff_ms = 10 })
      local elapsed = now_ms() - t0
      assert.equal(200, res.status)
      assert.equal("done", res.body)
      assert.equal(1, res.retries)
      assert.same({ 429, 200 }, statuses(res.attempts))
      assert.equal(1000, res.attempts[1].retry_after_ms)
      assert.equal(1000, res.attempts[1].slept_ms)
      assert.is_nil(res.attempts[2].slept_ms)
      assert.is_true(elapsed >= 990)
      assert.equal(2, srv:stats().requests)
    end)

    it("reads Retry-After as an HTTP-date (a past date means retry now)", function()
      srv:script{ { status = 503, headers = { { "Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT" } } }, {} }
      local res = assert(client:request{ url = srv.url .. "/", retries = 1 })
      assert.same({ 503, 200 }, statuses(res.attempts))
      assert.equal(0, res.attempts[1].retry_after_ms)
      assert.equal(0, res.attempts[1].slept_ms)
    end)

    it("caps Retry-After at max_backoff_ms", function()
      srv:script{ { status = 429, headers = { { "Retry-After", "3600" } } }, {} }
      local res = assert(client:request{ url = srv.url .. "/", retries = 1, max_backoff_ms = 50 })
      assert.same({ 429, 200 }, statuses(res.attempts))
      assert.equal(3600000, res.attempts[1].retry_after_ms)
      assert.equal(50, res.attempts[1].slept_ms)
    end)

    -- found by fuzz/fuzz_retry_after.c: curl_getdate takes any year, and
    -- seconds * 1000 overflowed (UB) for dates past year ~292 million
    it("caps an HTTP-date Retry-After millions of years ahead at one day, no overflow", function()
      srv:script{ { status = 429, headers = { { "Retry-After", "1 Jan 999999999" } } }, {} }
      local res = assert(client:request{ url = srv.url .. "/", retries = 1, max_backoff_ms = 50 })
      assert.same({ 429, 200 }, statuses(res.attempts))
      assert.equal(86400000, res.attempts[1].retry_after_ms)
      assert.equal(50, res.attempts[1].slept_ms)
    end)

    it("retries 503 twice with exponential backoff and jitter, then returns the 200", function()
      srv:script{ { status = 503 }, { status = 503 }, { body = "third time" } }
      local res = assert(client:request{ url = srv.url .. "/", retries = 2, backoff_ms = 20, max_backoff_ms = 1000 })
      assert.equal(200, res.status)
      assert.equal("third time", res.body)
      assert.equal(2, res.retries)
      assert.same({ 503, 503, 200 }, statuses(res.attempts))
      -- equal jitter: try i sleeps in [d/2, d] with d = 20 * 2^i
      assert.is_true(res.attempts[1].slept_ms >= 10 and res.attempts[1].slept_ms <= 20)
      assert.is_true(res.attempts[2].slept_ms >= 20 and res.attempts[2].slept_ms <= 40)
      assert.is_nil(res.attempts[1].retry_after_ms)
      assert.equal(3, srv:stats().requests)
    end)

    it("returns the last 5xx response, not an error, when the retries run out", function()
      srv:script{ { status = 500 }, { status = 502 }, { status = 504, body = "gateway" }, { body = "too late" } }
      local res, err = client:request{ url = srv.url .. "/", retries = 2, backoff_ms = 1 }
      assert.is_nil(err)
      assert.equal(504, res.status)
      assert.equal("gateway", res.body)
      assert.equal(2, res.retries)
      assert.same({ 500, 502, 504 }, statuses(res.attempts))
      assert.is_number(res.attempts[2].slept_ms)
      assert.is_nil(res.attempts[3].slept_ms)
      assert.equal(3, srv:stats().requests)
    end)

    it("does not retry a 400", function()
      srv:script{ { status = 400, body = "bad" }, { body = "never" } }
      local res = assert(client:request{ url = srv.url .. "/", retries = 2, backoff_ms = 1 })
      assert.equal(400, res.status)
      assert.equal("bad", res.body)
      assert.equal(0, res.retries)
      assert.same({ 400 }, statuses(res.attempts))
      assert.equal(1, srv:stats().requests)
    end)

    it("returns nil, err, 'CONNECT', info with every try when the port is closed", function()
      local port = server.closed_port()
      local res, err, code, info = client:request{ url = "http://127.0.0.1:" .. port .. "/v1/x", retries = 2,
                                                   backoff_ms = 1 }
      local msg = "CONNECT: could not connect to 127.0.0.1:" .. port .. ": Connection refused"
      assert.is_nil(res)
      assert.equal(msg, err)
      assert.equal("CONNECT", code)
      assert.equal(3, #info.attempts)
      for i, a in ipairs(info.attempts) do
        assert.is_nil(a.status)
        assert.equal(msg, a.error)
        assert.equal("CONNECT", a.code)
        assert.equal(i < 3, a.slept_ms ~= nil)
      end
      assert.is_true(is_integer(info.provider_wait_us))
      assert.is_true(info.provider_wait_us >= 0)
    end)

    it("returns 'TIMEOUT' when the server answers after timeout_ms", function()
      srv:script{ { delay_ms = 1500, body = "late" } }
      local t0 = now_ms()
      local res, err, code, info = client:request{ url = srv.url .. "/slow", retries = 0, timeout_ms = 300 }
      local elapsed = now_ms() - t0
      assert.is_nil(res)
      assert.equal("TIMEOUT: no response from 127.0.0.1:" .. srv.port .. " within timeout_ms=300", err)
      assert.equal("TIMEOUT", code)
      assert.equal(1, #info.attempts)
      assert.equal("TIMEOUT", info.attempts[1].code)
      -- libcurl's timer may fire up to a ms early
      assert.is_true(info.attempts[1].timings.total_us >= 290000)
      assert.is_true(info.provider_wait_us >= info.attempts[1].timings.total_us)
      assert.is_true(elapsed < 1400)
    end)

    it("returns 'TOO_LARGE' when Content-Length exceeds max_response_bytes, without retrying", function()
      local small = core.http_client{ proxy = "", max_response_bytes = 1000 }
      srv:script{ { size = 5000 }, { size = 5000 } }
      local res, err, code, info = small:request{ url = srv.url .. "/big", retries = 2, backoff_ms = 1 }
      small:close()
      assert.is_nil(res)
      assert.equal("TOO_LARGE: response from 127.0.0.1:" .. srv.port .. " exceeds max_response_bytes=1000", err)
      assert.equal("TOO_LARGE", code)
      assert.equal(1, #info.attempts)
    end)

    it("returns 'TOO_LARGE' when a body without Content-Length grows past max_response_bytes", function()
      local small = core.http_client{ proxy = "", max_response_bytes = 1000 }
      srv:script{ { size = 200000, nolength = true } }
      local res, err, code = small:request{ url = srv.url .. "/stream", retries = 0 }
      small:close()
      assert.is_nil(res)
      assert.equal("TOO_LARGE: response from 127.0.0.1:" .. srv.port .. " exceeds max_response_bytes=1000", err)
      assert.equal("TOO_LARGE", code)
    end)

    it("accepts a response of exactly max_response_bytes", function()
      local small = core.http_client{ proxy = "", max_response_bytes = 1000 }
      srv:script{ { size = 1000 } }
      local res = assert(small:request{ url = srv.url .. "/", retries = 0 })
      small:close()
      assert.equal(string.rep("x", 1000), res.body)
    end)

    it("returns 'HTTP' when the server closes the connection without answering", function()
      srv:script{ { reset = true } }
      local res, err, code, info = client:request{ url = srv.url .. "/", retries = 0 }
      assert.is_nil(res)
      assert.equal("HTTP: 127.0.0.1:" .. srv.port .. " closed the connection without a response", err)
      assert.equal("HTTP", code)
      assert.equal(1, #info.attempts)
    end)

    it("retries after a connection closed without an answer", function()
      srv:script{ { reset = true }, { body = "back" } }
      local res = assert(client:request{ url = srv.url .. "/", retries = 1, backoff_ms = 1 })
      assert.equal("back", res.body)
      assert.same({ "HTTP", 200 }, statuses(res.attempts))
      assert.equal("HTTP: 127.0.0.1:" .. srv.port .. " closed the connection without a response",
                   res.attempts[1].error)
    end)

    it("fails TLS against a plain-HTTP port (verification is on): code TLS, not retried", function()
      local res, err, code, info = client:request{ url = "https://127.0.0.1:" .. srv.port .. "/", retries = 2,
                                                   backoff_ms = 1 }
      assert.is_nil(res)
      local prefix = "TLS: handshake with 127.0.0.1:" .. srv.port .. " failed: "
      assert.equal(prefix, err:sub(1, #prefix))
      assert.equal("TLS", code)
      assert.equal(1, #info.attempts)
      assert.same({ "TLS", err }, { info.attempts[1].code, info.attempts[1].error })
    end)

    it("never puts the query string, a header value or the body in error messages", function()
      local secrets = { "secret123", "sk-live-SECRET", "ANTHROPIC-KEY", "prompt-secret" }
      local function check(err, info)
        assert.is_string(err)
        for _, s in ipairs(secrets) do assert.is_nil(err:find(s, 1, true)) end
        assert.is_nil(err:find("key=", 1, true))
        assert.is_nil(err:find("/v1/", 1, true))
        for _, a in ipairs(info.attempts) do
          for _, s in ipairs(secrets) do assert.is_nil(a.error:find(s, 1, true)) end
        end
      end
      local req = {
        headers = { Authorization = "Bearer sk-live-SECRET", ["x-api-key"] = "ANTHROPIC-KEY" },
        body = '{"prompt":"prompt-secret"}', retries = 1, backoff_ms = 1, timeout_ms = 300,
      }
      local small = core.http_client{ proxy = "", max_response_bytes = 10 }
      local urls = {
        "http://u:secret123@127.0.0.1:" .. server.closed_port() .. "/v1/x?key=secret123",
        srv.url .. "/v1/x?key=secret123",
        srv.url .. "/v1/x?key=secret123#secret123",
      }
      srv:script{ { delay_ms = 1000 }, { delay_ms = 1000 }, { size = 100 }, { size = 100 } }
      for i, url in ipairs(urls) do
        req.url = url
        local res, err, code, info = (i == 3 and small or client):request(req)
        assert.is_nil(res)
        assert.equal(({ "CONNECT", "TIMEOUT", "TOO_LARGE" })[i], code)
        check(err, info)
      end
      small:close()
    end)

    it("never puts a header value in argument errors", function()
      local ok, err = pcall(client.request, client,
                            { url = srv.url, headers = { Authorization = "Bearer sk-live-SECRET\r\nX: y" } })
      assert.is_false(ok)
      assert.is_nil(err:find("sk-live", 1, true))
      assert.is_truthy(err:find("header 'Authorization' value must not contain CR, LF or NUL", 1, true))
    end)

    it("reports integer timings in µs, ordered, within provider_wait_us", function()
      local res = assert(client:request{ url = srv.url .. "/", body = "x", retries = 0 })
      local t = res.timings
      for _, k in ipairs({ "dns_us", "connect_us", "tls_us", "pretransfer_us", "first_byte_us", "total_us",
                           "wait_us" }) do
        assert.is_true(is_integer(t[k]), k)
      end
      assert.is_true(0 <= t.dns_us and t.dns_us <= t.connect_us)
      assert.is_true(t.connect_us <= t.pretransfer_us and t.pretransfer_us <= t.first_byte_us)
      assert.is_true(t.first_byte_us <= t.total_us)
      assert.equal(0, t.tls_us)
      assert.is_true(is_integer(res.provider_wait_us))
      assert.is_true(res.provider_wait_us >= t.total_us)
      assert.equal(t.wait_us, res.provider_wait_us)
      assert.same(t, res.attempts[1].timings)
    end)

    it("sums provider_wait_us over all attempts", function()
      srv:script{ { status = 503, delay_ms = 50 }, { delay_ms = 50 } }
      local res = assert(client:request{ url = srv.url .. "/", retries = 1, backoff_ms = 1 })
      local a1, a2 = res.attempts[1].timings, res.attempts[2].timings
      assert.equal(a1.wait_us + a2.wait_us, res.provider_wait_us)
      assert.is_true(res.provider_wait_us >= a1.total_us + a2.total_us)
      assert.is_true(res.provider_wait_us >= 100000)
      assert.same(a2, res.timings)
    end)

    it("reuses one connection for consecutive requests (keep-alive)", function()
      assert(client:request{ url = srv.url .. "/one", retries = 0 })
      assert(client:request{ url = srv.url .. "/two", retries = 0 })
      assert.same({ requests = 2, connections = 1 }, srv:stats())
    end)
  end)

  describe("http_client()", function()
    it("close() returns true, twice", function()
      local c = core.http_client()
      assert.is_true(c:close())
      assert.is_true(c:close())
    end)

    it("raises on use after close, and tostring shows (closed)", function()
      local c = core.http_client()
      assert.is_truthy(tostring(c):find("^genaudit%.http_client %(0x"))
      c:close()
      assert.equal("genaudit.http_client (closed)", tostring(c))
      assert.has_error(function() c:request{ url = srv.url } end, "attempt to use a closed http_client")
    end)

    it54("closes a client held in a <close> variable #lua54", function()
      -- compiled at run time so LuaJIT, which has no <close>, still parses this file
      local f = assert(load([[
        local core = ...
        local keep
        do
          local c <close> = core.http_client()
          keep = c
        end
        return tostring(keep)
      ]]))
      assert.equal("genaudit.http_client (closed)", f(core))
    end)

    it("raises on bad options", function()
      assert.has_error(function() core.http_client("x") end)
      assert.error_matches(function() core.http_client{ timeout_ms = -1 } end,
                           "timeout_ms must be an integer in 0..86400000", 1, true)
      assert.error_matches(function() core.http_client{ connect_timeout_ms = 1.5 } end,
                           "connect_timeout_ms must be an integer in 0..86400000", 1, true)
      assert.error_matches(function() core.http_client{ max_response_bytes = 0 } end,
                           "max_response_bytes must be an integer in 1..", 1, true)
      assert.error_matches(function() core.http_client{ verify_tls = "no" } end,
                           "verify_tls must be a boolean", 1, true)
      assert.error_matches(function() core.http_client{ ca_file = 1 } end, "ca_file must be a string", 1, true)
    end)
  end)

  describe("request() arguments", function()
    local function raises(req, msg)
      assert.error_matches(function() client:request(req) end, msg, 1, true)
    end

    it("raises when the argument is not a table", function()
      assert.has_error(function() client:request("http://127.0.0.1/") end)
      assert.has_error(function() client:request() end)
    end)

    it("raises on a bad url", function()
      raises({}, "url must be a string")
      raises({ url = 42 }, "url must be a string")
      raises({ url = "ftp://127.0.0.1/" }, "url must be an http:// or https:// URL with a host")
      raises({ url = "http:///path" }, "url must be an http:// or https:// URL with a host")
      raises({ url = "http://127.0.0.1:99999999/" }, "url must be an http:// or https:// URL with a host")
      raises({ url = "http://127.0.0.1/\0x" }, "url must not contain NUL bytes")
    end)

    it("raises on bad headers", function()
      raises({ url = srv.url, headers = "x" }, "headers must be a table")
      raises({ url = srv.url, headers = { ["X-N"] = 1 } }, "header 'X-N' must have a string value, got number")
      raises({ url = srv.url, headers = { "v" } }, "headers must map names (strings) to string values")
      raises({ url = srv.url, headers = { ["Bad Name"] = "v" } }, "invalid header name 'Bad Name'")
    end)

    it("raises on bad method, body and numbers", function()
      raises({ url = srv.url, method = "FETCH" }, "method must be one of POST, GET, PUT, PATCH, DELETE, HEAD")
      raises({ url = srv.url, method = "post" }, "method must be one of POST, GET, PUT, PATCH, DELETE, HEAD")
      raises({ url = srv.url, method = "GET", body = "x" }, "GET requests cannot have a body")
      raises({ url = srv.url, body = {} }, "body must be a string")
      raises({ url = srv.url, timeout_ms = -5 }, "timeout_ms must be an integer in 0..86400000")
      raises({ url = srv.url, connect_timeout_ms = -1 }, "connect_timeout_ms must be an integer in 0..86400000")
      raises({ url = srv.url, retries = 21 }, "retries must be an integer in 0..20")
      raises({ url = srv.url, backoff_ms = -1 }, "backoff_ms must be an integer in 0..86400000")
      raises({ url = srv.url, max_backoff_ms = "1" }, "max_backoff_ms must be an integer in 0..86400000")
    end)

    it("sends nothing when the arguments are bad", function()
      pcall(client.request, client, { url = srv.url, retries = -1 })
      assert.same({ requests = 0, connections = 0 }, srv:stats())
    end)
  end)
end)
