-- spec/openresty_stream_spec.lua — the cosocket transport's streamed bodies
-- (README "Streaming", "Transports") in real nginx (one worker): pieces reach
-- on_data as they arrive, aborts, stalls, drops, and openresty.client_writer()
-- relaying a stream to nginx's own client while the worker serves others.
-- Pacing is by events, not times: a "lockstep" upstream sends piece k + 1
-- only once released, and on_data releases it (ack) after getting piece k.
local cjson = require("cjson")
local socket = require("socket")
local server = require("spec.support.http_server")
local nginx = require("spec.support.nginx")

local CONFIG = nginx.config_head() .. [[
    init_by_lua_block {
        -- lets the upstream send its next lockstep piece
        function _G.release(port)
            local s = ngx.socket.tcp()
            s:settimeout(2000)
            assert(s:connect("127.0.0.1", port))
            assert(s:send("POST /__ctl/release HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
            s:receive("*a")
            s:close()
        end
    }
    server {
        listen 127.0.0.1:@PORT@;
        location = /health { content_by_lua_block { ngx.say("ok") } }
        location = /ping { content_by_lua_block { ngx.say("pong") } }
        location = /stream {
            content_by_lua_block {
                local cjson = require("cjson")
                local a = ngx.req.get_uri_args()
                local n = function(k) return tonumber(a[k]) end
                local transport = require("genaudit.openresty").transport({}, {
                    timeout_ms = n("timeout_ms") or 5000, max_response_bytes = n("max"),
                })
                local pieces = {}
                local res, err, code, info = transport{
                    url = "http://127.0.0.1:" .. a.port .. "/v1/x", headers = {}, body = "{}",
                    retries = n("retries") or 0, backoff_ms = 1, idle_timeout_ms = n("idle"),
                    on_data = function(bytes)
                        pieces[#pieces + 1] = bytes
                        if n("raise_at") == #pieces then error("boom", 0) end
                        if n("abort_at") == #pieces then return nil, "x" end
                        if a.ack then release(n("port")) end
                        return true
                    end,
                }
                local t = res or info
                ngx.say(cjson.encode{ pieces = pieces, err = err, code = code, status = res and res.status,
                    body = res and res.body, streamed = t.streamed, first_byte_us = t.first_byte_us,
                    reads = t.reads, stream_bytes = t.stream_bytes, wait_us = t.provider_wait_us,
                    attempts = #t.attempts, retries = res and res.retries })
            }
        }
        location = /relay {
            content_by_lua_block {
                local a = ngx.req.get_uri_args()
                local openresty = require("genaudit.openresty")
                local write = openresty.client_writer()
                local k = 0
                local _, err = openresty.transport({}, { timeout_ms = 10000 }){
                    url = "http://127.0.0.1:" .. a.port .. "/v1/x", headers = {}, body = "{}", retries = 0,
                    on_data = function(bytes)
                        k = k + 1
                        local ok, why = write(bytes)
                        if ok and a.ack_from and k >= tonumber(a.ack_from) then release(a.port) end
                        return ok, why
                    end,
                }
                ngx.log(ngx.WARN, "relay outcome: ", err or "ok", ".")
            }
        }
    }
}
]]

local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

describe("genaudit.openresty transport streaming #nginx", function()
  local srv, ngx_srv, hp

  setup(function()
    srv = server.start()
    ngx_srv = nginx.start{ port = free_port(), config = CONFIG }
    hp = "127.0.0.1:" .. srv.port
  end)
  teardown(function()
    if ngx_srv then
      ngx_srv:stop()
      ngx_srv:cleanup()
    end
    if srv then srv:stop() end
  end)
  before_each(function() srv:reset() end)

  -- one /stream call against the scripted upstream; its JSON outcome
  local function stream(script, q)
    srv:script(script)
    local parts = { "port=" .. srv.port }
    for k, v in pairs(q or {}) do parts[#parts + 1] = k .. "=" .. tostring(v) end
    local r = ngx_srv:load({ "/stream?" .. table.concat(parts, "&") }, 1)[1]
    assert.equal(200, r.code, tostring(r.body) .. ngx_srv:error_log())
    return cjson.decode(r.body)
  end

  -- waits (bounded) until f() is true; returns its last value
  local function eventually(f)
    for _ = 1, 250 do
      local v = f()
      if v then return v end
      socket.sleep(0.02)
    end
    return f()
  end

  local TEXT = { "Hello", ", ", "wor", "ld!\n", "{\"k\":1}" }

  local function check_pieces(o, pieces)
    assert.same(pieces, o.pieces)
    assert.same({ 200, "", true, #pieces }, { o.status, o.body, o.streamed, o.reads })
    assert.equal(#table.concat(pieces), o.stream_bytes)
    assert.is_true(o.first_byte_us > 0 and o.first_byte_us <= o.wait_us, tostring(o.first_byte_us))
  end

  it("hands each chunk of a chunked body to on_data as it arrives, in order", function()
    check_pieces(stream({ { chunks = TEXT, chunked = true, lockstep = true } }, { ack = 1 }), TEXT)
    assert.equal(#TEXT, srv:streams().sent)
  end)

  it("streams a Content-Length body piece by piece", function()
    check_pieces(stream({ { chunks = TEXT, lockstep = true } }, { ack = 1 }), TEXT)
  end)

  it("streams a body that ends when the server closes", function()
    check_pieces(stream({ { chunks = TEXT, nolength = true, lockstep = true } }, { ack = 1 }), TEXT)
  end)

  it("streams 1-byte chunks, one on_data call each", function()
    local bytes = {}
    for i = 1, 16 do bytes[i] = string.char(96 + i) end
    check_pieces(stream({ { chunks = bytes, chunked = true, lockstep = true } }, { ack = 1 }), bytes)
  end)

  it("hands over a chunk's bytes as they arrive, not only whole chunks", function()
    check_pieces(stream({ { chunks = TEXT, chunked = true, one_chunk = true, lockstep = true } }, { ack = 1 }), TEXT)
  end)

  it("puts the connection of a fully streamed framed body back in the keepalive pool", function()
    srv:script{ { chunks = TEXT, chunked = true }, { chunks = TEXT } }
    for _ = 1, 2 do
      local r = ngx_srv:load({ "/stream?port=" .. srv.port }, 1)[1]
      assert.equal(table.concat(TEXT), table.concat(cjson.decode(r.body).pieces))
    end
    -- two requests, at most one new connection (the pool may hold one from an earlier spec)
    local st = srv:stats()
    assert.is_true(st.requests == 2 and st.connections <= 1, st.requests .. " " .. st.connections)
  end)

  it("reads delayed pieces separately (at least one read per delayed piece)", function()
    local o = stream({ { chunks = { "aa", "bb", "cc", "dd" }, chunked = true, chunk_delay_ms = 100 } })
    assert.equal("aabbccdd", table.concat(o.pieces))
    assert.is_true(o.reads >= 4, tostring(o.reads))
  end)

  it("buffers a non-2xx body and never calls on_data", function()
    local o = stream({ { status = 400, chunks = { "{\"error\":", "\"bad\"}" }, chunked = true } })
    assert.same({ 400, "{\"error\":\"bad\"}", {} }, { o.status, o.body, o.pieces })
    assert.is_nil(o.streamed)
  end)

  it("retries before the first byte, then streams", function()
    local o = stream({ { status = 503 }, { chunks = TEXT, chunked = true } }, { retries = 2 })
    assert.same({ 200, 1, 2, table.concat(TEXT) }, { o.status, o.retries, o.attempts, table.concat(o.pieces) })
  end)

  it("on_data returning nil, reason aborts: STREAM_ABORTED, the connection closed, no retry", function()
    local o = stream({ { chunks = TEXT, chunked = true, lockstep = true } }, { abort_at = 1, retries = 2 })
    assert.same({ "STREAM_ABORTED: x", "STREAM_ABORTED", true, 1, 1 },
      { o.err, o.code, o.streamed, o.reads, o.attempts })
    assert.equal(1, srv:stats().requests)
    -- not put back in the keepalive pool: the upstream sees the hang-up mid-stream
    assert.equal(1, eventually(function() return srv:streams().hangups == 1 and 1 end))
  end)

  it("on_data raising aborts the same way, with the error", function()
    local o = stream({ { chunks = TEXT, chunked = true, lockstep = true } }, { raise_at = 1, retries = 2 })
    assert.same({ "STREAM_ABORTED: on_data raised: boom", "STREAM_ABORTED", 1 }, { o.err, o.code, o.attempts })
  end)

  it("a stall longer than idle_timeout_ms: TIMEOUT stream stalled, not retried", function()
    local o = stream({ { chunks = TEXT, chunked = true, lockstep = true } }, { idle = 300, retries = 2 })
    assert.same({ "TIMEOUT: stream stalled: no data from " .. hp .. " for idle_timeout_ms=300", "TIMEOUT", true, 1, 1 },
      { o.err, o.code, o.streamed, o.reads, o.attempts })
    assert.equal(1, srv:stats().requests)
  end)

  it("timeout_ms bounds the whole streamed attempt", function()
    local o = stream({ { chunks = TEXT, chunked = true, lockstep = true } }, { timeout_ms = 400 })
    assert.same({ "TIMEOUT: stream from " .. hp .. " not finished within timeout_ms=400", "TIMEOUT", 1 },
      { o.err, o.code, o.reads })
  end)

  it("a connection dropped mid-body fails with streamed = true and is not retried", function()
    for _, framing in ipairs({ { chunked = true }, {} }) do
      srv:reset()
      local o = stream({ { chunks = { "ab", "cd" }, chunked = framing.chunked, drop = true } }, { retries = 2 })
      assert.same({ "HTTP: " .. hp .. " closed the connection before the whole response arrived", "HTTP", true, 1 },
        { o.err, o.code, o.streamed, o.attempts })
      assert.equal("abcd", table.concat(o.pieces))
      assert.equal(1, srv:stats().requests)
    end
  end)

  it("a streamed body past max_response_bytes: TOO_LARGE", function()
    local o = stream({ { chunks = { "abc", "def" }, chunked = true } }, { max = 4 })
    assert.same({ "TOO_LARGE: response from " .. hp .. " exceeds max_response_bytes=4", "TOO_LARGE", true, 1 },
      { o.err, o.code, o.streamed, o.reads })
  end)

  -- a raw client of nginx: GET path, reading as bytes come
  local function client(path)
    local c = assert(socket.connect("127.0.0.1", ngx_srv.port))
    assert(c:send("GET " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    c:settimeout(0.05)
    local got = ""
    local function read_until(needle)
      for _ = 1, 200 do
        local d, err, partial = c:receive(4096)
        got = got .. (d or partial or "")
        if got:find(needle, 1, true) then return true end
        if err == "closed" then break end
      end
      return false
    end
    return c, read_until, function() return got end
  end

  -- the outcome the /relay location logged after byte `from` of error.log
  local function relay_outcome(from)
    return eventually(function() return ngx_srv:error_log():sub(from + 1):match("relay outcome: ([^\n]-)%.,") end)
  end

  it("client_writer relays the stream to nginx's client as it comes; the worker keeps serving", function()
    srv:script{ { chunks = { "first|", "second|", "third|" }, chunked = true, lockstep = true } }
    local from = #ngx_srv:error_log()
    local c, read_until, got = client("/relay?port=" .. srv.port)
    local events = {}
    assert.is_true(read_until("first|"), got())
    events[#events + 1] = "client has piece 1; upstream sent " .. srv:streams().sent
    local p = ngx_srv:load({ "/ping" }, 1)[1]
    events[#events + 1] = "ping " .. tostring(p.body):gsub("\n", "") .. "; upstream sent " .. srv:streams().sent
    srv:release()
    srv:release()
    assert.is_true(read_until("\r\n0\r\n\r\n"), got())
    c:close()
    assert.same({ "client has piece 1; upstream sent 1", "ping pong; upstream sent 1" }, events)
    local body = got():match("\r\n\r\n(.*)$"):gsub("%x+\r\n(.-)\r\n", "%1")
    assert.equal("first|second|third|", body)
    assert.equal("ok", relay_outcome(from))
  end)

  it("client_writer aborts the generation when the client goes away", function()
    local pieces = {}
    for i = 1, 10 do pieces[i] = "piece" .. i .. "|" end
    srv:script{ { chunks = pieces, chunked = true, lockstep = true } }
    local from = #ngx_srv:error_log()
    local c, read_until, got = client("/relay?ack_from=2&port=" .. srv.port)
    assert.is_true(read_until("piece1|"), got())
    c:close()
    srv:release() -- piece 2; nginx releases the rest as it writes them
    assert.equal("STREAM_ABORTED: client went away", relay_outcome(from))
    assert.equal(1, eventually(function() return srv:streams().hangups == 1 and 1 end))
    assert.is_true(srv:streams().sent < #pieces)
  end)
end)
