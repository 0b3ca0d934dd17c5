-- spec/transport_parity_spec.lua — one failure, two transports: the libcurl
-- client (core.http_client, in this process) and the cosocket transport
-- (genaudit.openresty, in real nginx) against the same scripted loopback
-- server must answer with the same error code, the same message (prefix)
-- and the same tries, because both follow csrc/ga_retry.c's policy.
local cjson = require("cjson")
local core = require("genaudit.core")
local server = require("spec.support.http_server")
local nginx = require("spec.support.nginx")

-- a test-only nginx: /health, and /transport running openresty.transport()
-- once against 127.0.0.1:<port> with the query's settings, answering JSON
local CONFIG = nginx.config_head() .. [[
    server {
        listen 127.0.0.1:@PORT@;
        location = /health { content_by_lua_block { ngx.say("ok") } }
        location = /transport {
            content_by_lua_block {
                local cjson = require("cjson")
                local a = ngx.req.get_uri_args()
                local n = function(k) return tonumber(a[k]) end
                local transport = require("genaudit.openresty").transport{
                    connect_timeout_ms = n("connect_timeout_ms") or 2000, timeout_ms = n("timeout_ms") or 5000,
                }
                local res, err, code, info = transport{
                    url = a.scheme .. "://127.0.0.1:" .. a.port .. "/v1/x", headers = {}, body = "{}",
                    retries = n("retries"), backoff_ms = n("backoff_ms"), max_backoff_ms = n("max_backoff_ms"),
                }
                local out = { err = err, code = code, attempts = {} }
                if res then out.status, out.retries = res.status, res.retries end
                for i, t in ipairs(res and res.attempts or info.attempts) do
                    out.attempts[i] = { status = t.status, code = t.code, error = t.error,
                                        retry_after_ms = t.retry_after_ms, slept_ms = t.slept_ms }
                end
                ngx.say(cjson.encode(out))
            }
        }
    }
}
]]

describe("the libcurl and cosocket transports #nginx", function()
  local srv, ngx_srv, client

  setup(function()
    srv = server.start()
    ngx_srv = nginx.start{ port = 21000 + srv.port % 8000, config = CONFIG }
  end)

  teardown(function()
    if ngx_srv then
      ngx_srv:stop()
      ngx_srv:cleanup()
    end
    if srv then srv:stop() end
  end)

  before_each(function()
    srv:reset()
    client = core.http_client{ proxy = "", connect_timeout_ms = 2000, timeout_ms = 5000 }
  end)
  after_each(function() client:close() end)

  -- the same outcome shape from either transport
  local function shape(res, err, code, info)
    local out = { err = err, code = code, attempts = {} }
    if res then out.status, out.retries = res.status, res.retries end
    for i, t in ipairs(res and res.attempts or info.attempts) do
      out.attempts[i] = { status = t.status, code = t.code, error = t.error, retry_after_ms = t.retry_after_ms,
                          slept_ms = t.slept_ms }
    end
    return out
  end

  -- opts: scheme, port, retries, backoff_ms, max_backoff_ms, timeout_ms
  local function via_curl(opts)
    return shape(client:request{
      url = (opts.scheme or "http") .. "://127.0.0.1:" .. (opts.port or srv.port) .. "/v1/x", body = "{}",
      retries = opts.retries, backoff_ms = opts.backoff_ms, max_backoff_ms = opts.max_backoff_ms,
      timeout_ms = opts.timeout_ms,
    })
  end

  local function via_nginx(opts)
    local q = { "scheme=" .. (opts.scheme or "http"), "port=" .. (opts.port or srv.port) }
    for _, k in ipairs({ "retries", "backoff_ms", "max_backoff_ms", "timeout_ms" }) do
      if opts[k] then q[#q + 1] = k .. "=" .. opts[k] end
    end
    local r = ngx_srv:load({ "/transport?" .. table.concat(q, "&") }, 1)[1]
    assert.equal(200, r.code, tostring(r.body) .. ngx_srv:error_log())
    return cjson.decode(r.body)
  end

  -- runs `script` on the server before each transport; returns both outcomes
  local function both(script, opts)
    srv:script(script)
    local a = via_curl(opts)
    local requests_curl = srv:stats().requests
    srv:reset()
    srv:script(script)
    local b = via_nginx(opts)
    local requests_nginx = srv:stats().requests
    return a, b, requests_curl, requests_nginx
  end

  local function codes(out)
    local t = {}
    for i, a in ipairs(out.attempts) do t[i] = a.status or a.code end
    return t
  end

  it("connection refused: CONNECT, the same message, retried the same number of times", function()
    local port = server.closed_port()
    local a, b = both({}, { port = port, retries = 2, backoff_ms = 1 })
    local msg = "CONNECT: could not connect to 127.0.0.1:" .. port .. ": Connection refused"
    for _, o in ipairs({ a, b }) do
      assert.same({ msg, "CONNECT" }, { o.err, o.code })
      assert.same({ "CONNECT", "CONNECT", "CONNECT" }, codes(o))
      assert.equal(msg, o.attempts[3].error)
    end
  end)

  it("a TLS handshake against a plain-HTTP port: TLS, the same message prefix, not retried", function()
    local a, b, na, nb = both({}, { scheme = "https", retries = 2, backoff_ms = 1 })
    local prefix = "TLS: handshake with 127.0.0.1:" .. srv.port .. " failed: "
    for _, o in ipairs({ a, b }) do
      assert.equal("TLS", o.code)
      assert.equal(prefix, o.err:sub(1, #prefix))
      assert.same({ "TLS" }, codes(o))
      assert.is_nil(o.attempts[1].slept_ms)
    end
    assert.same({ 0, 0 }, { na, nb }) -- no HTTP request got through
  end)

  it("no answer within timeout_ms: TIMEOUT, the same message", function()
    local a, b = both({ { delay_ms = 1500 } }, { retries = 0, timeout_ms = 300 })
    local msg = "TIMEOUT: no response from 127.0.0.1:" .. srv.port .. " within timeout_ms=300"
    for _, o in ipairs({ a, b }) do
      assert.same({ msg, "TIMEOUT", { "TIMEOUT" } }, { o.err, o.code, codes(o) })
    end
  end)

  it("a connection closed without an answer: HTTP, the same message, retried", function()
    local a, b, na, nb = both({ { reset = true }, { body = "ok" } }, { retries = 1, backoff_ms = 1 })
    local msg = "HTTP: 127.0.0.1:" .. srv.port .. " closed the connection without a response"
    for _, o in ipairs({ a, b }) do
      assert.same({ 200, { "HTTP", 200 } }, { o.status, codes(o) })
      assert.equal(msg, o.attempts[1].error)
    end
    assert.same({ 2, 2 }, { na, nb })
  end)

  it("503 then 200: retried once by both, with the same tries recorded", function()
    local a, b, na, nb = both({ { status = 503 }, { body = "ok" } }, { retries = 2, backoff_ms = 20 })
    for _, o in ipairs({ a, b }) do
      assert.same({ 200, 1, { 503, 200 } }, { o.status, o.retries, codes(o) })
      assert.is_true(o.attempts[1].slept_ms >= 10 and o.attempts[1].slept_ms <= 20, o.attempts[1].slept_ms)
      assert.is_nil(o.attempts[2].slept_ms)
    end
    assert.same({ 2, 2 }, { na, nb })
  end)

  it("400: final, not retried by either", function()
    local a, b, na, nb = both({ { status = 400 }, { body = "never" } }, { retries = 2, backoff_ms = 1 })
    for _, o in ipairs({ a, b }) do
      assert.same({ 400, 0, { 400 } }, { o.status, o.retries, codes(o) })
    end
    assert.same({ 1, 1 }, { na, nb })
  end)

  it("429 with Retry-After: 1 is honoured by both (1000 ms), and capped at max_backoff_ms", function()
    local script = { { status = 429, headers = { { "Retry-After", "1" } } }, { body = "ok" } }
    local a, b = both(script, { retries = 1, backoff_ms = 1 })
    for _, o in ipairs({ a, b }) do
      assert.same({ 200, { 429, 200 } }, { o.status, codes(o) })
      assert.same({ 1000, 1000 }, { o.attempts[1].retry_after_ms, o.attempts[1].slept_ms })
    end
    a, b = both(script, { retries = 1, backoff_ms = 1, max_backoff_ms = 50 })
    for _, o in ipairs({ a, b }) do
      assert.same({ 1000, 50 }, { o.attempts[1].retry_after_ms, o.attempts[1].slept_ms })
    end
  end)

  it("a Retry-After that is not delta-seconds or a date (1.5) is ignored by both: the backoff applies", function()
    local script = { { status = 503, headers = { { "Retry-After", "1.5" } } }, { body = "ok" } }
    local a, b = both(script, { retries = 1, backoff_ms = 4 })
    for _, o in ipairs({ a, b }) do
      assert.same({ 200, { 503, 200 } }, { o.status, codes(o) })
      assert.is_nil(o.attempts[1].retry_after_ms)
      assert.is_true(o.attempts[1].slept_ms >= 2 and o.attempts[1].slept_ms <= 4)
    end
  end)
end)
