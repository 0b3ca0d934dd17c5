-- genaudit.openresty — embedding in nginx with the lua module (OpenResty's
-- LuaJIT). Two pieces:
--   * a non-blocking transport over cosockets, with the same request/response
--     shape, retries and timings as the libcurl transport, so the provider
--     adapters, meter and stopwatch work unchanged; what is retried, the
--     backoff, Retry-After and each failure's code come from the one policy
--     in C (csrc/ga_retry.c: core.retry_policy, retry_delay, retry_after_ms);
--     it streams a 2xx body to req.on_data as it arrives (README "Streaming"), and
--     client_writer() is the on_chunk that relays a stream to nginx's client;
--   * per-worker lifecycle: init_worker() opens one store per worker in async
--     mode (a C writer thread commits snapshots off the request path) and
--     builds the pipeline; exit_worker() drains the queue on quit and reload;
--   * metrics: with a lua_shared_dict (genaudit_metrics by default), every
--     persisted snapshot and the writer's figures are counted there across
--     workers (genaudit.nginx_metrics), and serve_metrics() answers /metrics;
--   * the OpenTelemetry span sink (otel_sink): genaudit.otel's spans posted
--     by an ngx.timer over this transport, never in a request's coroutine.
local core = require("genaudit.core")
local nginx_metrics = require("genaudit.nginx_metrics")

local M = {}

local ngx = rawget(_G, "ngx")

-- Phases where cosockets (and so provider calls) are available.
local COSOCKET_PHASES = { rewrite = true, access = true, content = true, timer = true, ssl_cert = true,
  ssl_session_fetch = true, preread = true }

local function parse_url(url)
  local scheme, host, port, path = url:match("^(https?)://([^/:@%[%]]+):?(%d*)(.*)$")
  if not scheme or (path ~= "" and path:sub(1, 1) ~= "/") then return nil end -- no userinfo, no IPv6 literal
  port = tonumber(port) or (scheme == "https" and 443 or 80)
  if path == "" then path = "/" end
  local default = port == (scheme == "https" and 443 or 80)
  return { scheme = scheme, host = host, port = port, path = path, hostport = host .. ":" .. port,
           host_header = default and host or (host .. ":" .. port) }
end

local function now_us() return core.monotonic_us() end

-- A failure's error code and whether another try may help, from the one
-- policy (core.retry_policy; the streamed body's kinds "aborted" and
-- "stalled" included).
local function policy(kind) return core.retry_policy(kind) end

-- The most a streamed read asks for: receiveany() hands over whatever has
-- arrived, up to this, without waiting for more.
local PIECE = 65536

-- The read timeout for the next read of a streamed body: idle_timeout_ms,
-- bounded by what is left of timeout_ms since the attempt began. Returns
-- what a time-out of that read means, "stalled" or "total"; "total" alone
-- (no read) when timeout_ms is already spent.
local function arm(sock, st)
  local left = st.timeout_ms - math.floor((now_us() - st.t0) / 1000)
  if left <= 0 then return "total", true end
  if st.idle_ms > 0 and st.idle_ms <= left then
    sock:settimeout(st.idle_ms)
    return "stalled"
  end
  sock:settimeout(left)
  return "total"
end

-- One read of a streamed body (method: sock.receive or sock.receiveany):
-- its results, with a time-out reported as "stalled" or "total".
local function stream_read(sock, st, method, arg)
  local kind, spent = arm(sock, st)
  if spent then return nil, kind end
  local data, err = method(sock, arg)
  if not data and err == "timeout" then return nil, kind end
  return data, err
end

-- Hands one piece to on_data (under pcall: a raise is a refusal), counting
-- it. Returns true | nil, "too large" | nil, "aborted" (st.msg says why).
local function deliver(st, data)
  if st.bytes + #data > st.limit then return nil, "too large" end
  if st.reads == 0 then st.first_us = now_us() end
  st.reads = st.reads + 1
  st.bytes = st.bytes + #data
  local ok, more, why = pcall(st.on_data, data)
  if not ok then
    local t = type(more)
    st.msg = "on_data raised: " .. ((t == "string" or t == "number") and tostring(more)
      or "(an error object that is not a string)")
    return nil, "aborted"
  end
  if not more then
    local t = type(why)
    st.msg = (t == "string" or t == "number") and tostring(why) or "the consumer stopped the stream"
    return nil, "aborted"
  end
  return true
end

-- Streams n body bytes (nil: until the peer closes) to on_data, each piece
-- as soon as receiveany() has it. Returns true | nil, err.
local function pump(sock, st, n)
  while n == nil or n > 0 do
    local data, err = stream_read(sock, st, sock.receiveany, n and math.min(n, PIECE) or PIECE)
    if not data then
      if n == nil and err == "closed" then return true end
      return nil, err
    end
    if n then n = n - #data end
    local ok, why = deliver(st, data)
    if not ok then return nil, why end
  end
  return true
end

-- Streams a 2xx body to on_data: Content-Length, chunked (decoded; a chunk's
-- bytes go on as they arrive, not once the chunk is whole), or until close.
-- Returns true, framed (true when the connection can be reused) | nil, err:
-- a receive error, "too large", "bad chunk size", "aborted", "stalled" or
-- "total" (timeout_ms spent).
local function stream_body(sock, headers, st)
  local te = headers["transfer-encoding"]
  if te and te:lower():find("chunked", 1, true) then
    while true do
      local line, err = stream_read(sock, st, sock.receive, "*l")
      if not line then return nil, err end
      local hex = line:match("^%s*(%x+)")
      if not hex then return nil, "bad chunk size" end
      local size = tonumber(hex, 16)
      if size == 0 then
        repeat line, err = stream_read(sock, st, sock.receive, "*l") until not line or line == ""
        if not line then return nil, err end
        return true, true
      end
      if st.bytes + size > st.limit then return nil, "too large" end
      local ok
      ok, err = pump(sock, st, size)
      if not ok then return nil, err end
      line, err = stream_read(sock, st, sock.receive, "*l")
      if not line then return nil, err end
      if line ~= "" then return nil, "bad chunk size" end
    end
  end
  local len = tonumber(headers["content-length"])
  if len then
    if len > st.limit then return nil, "too large" end
    local ok, err = pump(sock, st, len)
    if not ok then return nil, err end
    return true, true
  end
  local ok, err = pump(sock, st, nil)
  if not ok then return nil, err end
  return true, false
end

-- Reads the body: Content-Length, chunked, or until close. Returns body,
-- framed (true when the connection can be reused) | nil, err.
local function read_body(sock, headers, limit)
  local te = headers["transfer-encoding"]
  if te and te:lower():find("chunked", 1, true) then
    local parts, total = {}, 0
    while true do
      local line, err = sock:receive("*l")
      if not line then return nil, err end
      local hex = line:match("^%s*(%x+)")
      if not hex then return nil, "bad chunk size" end
      local size = tonumber(hex, 16)
      if size == 0 then
        repeat line, err = sock:receive("*l") until not line or line == ""
        if not line then return nil, err end
        break
      end
      total = total + size
      if total > limit then return nil, "too large" end
      local data
      data, err = sock:receive(size)
      if not data then return nil, err end
      parts[#parts + 1] = data
      line, err = sock:receive("*l")
      if not line then return nil, err end
    end
    return table.concat(parts), true
  end
  local len = tonumber(headers["content-length"])
  if len then
    if len > limit then return nil, "too large" end
    if len == 0 then return "", true end
    local data, err = sock:receive(len)
    if not data then return nil, err end
    return data, true
  end
  -- unframed: the body ends when the server closes; a time-out is a failure
  local data, err = sock:receive("*a")
  if not data then return nil, err end
  if #data > limit then return nil, "too large" end
  return data, false
end

-- "Connection refused" as libcurl words it (strerror): cosockets lower-case it.
local function os_error(err) return (tostring(err):gsub("^%l", string.upper)) end

-- One HTTP exchange. Returns status, headers, body, timings | nil, err, code, timings, retry.
-- A failure is one of core.retry_policy()'s kinds; it gives the code (and so
-- the message prefix) and whether to retry. Messages are worded as ga_http.c's.
-- st (nil: buffered) is the attempt's stream state: a 2xx body goes to
-- st.on_data (body ""), st.live/reads/bytes/first_us record what came.
local function exchange(u, req, opts, st)
  local t0 = now_us()
  if st then st.t0 = t0 end
  local timings = { dns_us = 0, tls_us = 0 }
  local sock = ngx.socket.tcp()
  if st and not sock.receiveany then
    error("genaudit: streaming (on_data) needs lua-nginx-module 0.10.14 or later (tcpsock:receiveany)", 3)
  end
  sock:settimeouts(opts.connect_timeout_ms, opts.timeout_ms, opts.timeout_ms)
  -- TLS-verified and unverified connections never share a keepalive pool
  local verify = opts.verify_tls ~= false
  local ok, err = sock:connect(u.host, u.port, { pool = u.hostport .. (verify and ":v" or ":nv") })
  timings.connect_us = now_us() - t0
  local function fail(kind, msg)
    sock:close()
    timings.total_us = now_us() - t0
    timings.wait_us = timings.total_us
    local retry, code = policy(kind)
    return nil, code .. ": " .. msg, code, timings, retry
  end
  local function no_response()
    return fail("timeout", ("no response from %s within timeout_ms=%d"):format(u.hostport, opts.timeout_ms))
  end
  -- a receive failed: the peer closed (msg), or the socket failed (reset, …)
  local function lost(rerr, msg)
    if rerr == "timeout" then return no_response() end
    if rerr ~= "closed" then
      msg = ("connection to %s failed while receiving: %s"):format(u.hostport, os_error(rerr))
    end
    return fail("closed", msg)
  end
  if not ok then
    if err == "timeout" then
      return fail("connect_timeout", ("timed out connecting to %s (connect_timeout_ms=%d, timeout_ms=%d)")
        :format(u.hostport, opts.connect_timeout_ms, opts.timeout_ms))
    end
    if tostring(err):find("resolve", 1, true) then
      return fail("resolve", ("could not resolve the host of %s"):format(u.hostport))
    end
    return fail("refused", ("could not connect to %s: %s"):format(u.hostport, os_error(err)))
  end
  if u.scheme == "https" and sock:getreusedtimes() == 0 then
    local t1 = now_us()
    ok, err = sock:sslhandshake(nil, u.host, verify)
    timings.tls_us = now_us() - t1
    if not ok then return fail("tls", ("handshake with %s failed: %s"):format(u.hostport, err)) end
  end
  local lines = { "POST " .. u.path .. " HTTP/1.1", "Host: " .. u.host_header, "User-Agent: genaudit/0.1.0",
                  "Content-Length: " .. #req.body, "Connection: keep-alive" }
  for k, v in pairs(req.headers) do
    if tostring(k):find("[\r\n:]") or tostring(v):find("[\r\n]") then
      sock:close()
      error("genaudit: header " .. tostring(k) .. " has a CR, LF or ':' in its name or value", 3)
    end
    lines[#lines + 1] = k .. ": " .. v
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = req.body
  ok, err = sock:send(table.concat(lines, "\r\n"))
  local unanswered = ("%s closed the connection without a response"):format(u.hostport)
  if not ok then
    if err == "timeout" then return no_response() end
    if err == "closed" then return fail("closed", unanswered) end
    return fail("closed", ("connection to %s failed while sending: %s"):format(u.hostport, os_error(err)))
  end
  local line
  line, err = sock:receive("*l")
  timings.first_byte_us = now_us() - t0
  if not line then return lost(err, unanswered) end
  local partial = ("%s closed the connection before the whole response arrived"):format(u.hostport)
  local status, headers
  while true do -- interim 1xx answers first, then the final one
    status = tonumber(line:match("^HTTP/%d%.%d (%d%d%d)"))
    if not status then return fail("protocol", ("malformed response from %s"):format(u.hostport)) end
    headers = {}
    while true do
      local h, herr = sock:receive("*l")
      if not h then return lost(herr, partial) end
      if h == "" then break end
      local name, value = h:match("^([^:]+):%s*(.-)%s*$")
      if name then headers[name:lower()] = value end
    end
    if status >= 200 then break end
    line, err = sock:receive("*l")
    if not line then return lost(err, partial) end
  end
  local body, framed
  if status == 204 or status == 304 then
    body, framed = "", true -- no body, whatever the headers say
    if st and status == 204 then st.live = true end
  elseif st and status < 300 then
    st.live = true
    body, framed = stream_body(sock, headers, st)
    if body then body = "" end
  else
    body, framed = read_body(sock, headers, opts.max_response_bytes)
  end
  if not body then
    err = framed
    if err == "aborted" then return fail("aborted", st.msg) end
    if err == "stalled" then
      return fail("stalled", ("stream stalled: no data from %s for idle_timeout_ms=%d"):format(u.hostport, st.idle_ms))
    end
    if err == "total" then
      return fail("timeout", ("stream from %s not finished within timeout_ms=%d"):format(u.hostport, opts.timeout_ms))
    end
    if err == "too large" then
      return fail("too_large", ("response from %s exceeds max_response_bytes=%d")
        :format(u.hostport, opts.max_response_bytes))
    end
    if err == "bad chunk size" then return fail("protocol", ("malformed response from %s"):format(u.hostport)) end
    return lost(err, partial)
  end
  if framed and (headers.connection or ""):lower() ~= "close" then sock:setkeepalive(60000, 64) else sock:close() end
  timings.total_us = now_us() - t0
  timings.wait_us = timings.total_us
  timings.pretransfer_us = timings.connect_us + timings.tls_us
  return status, headers, body, timings
end

-- The streamed figures onto a result or a failure's info (README "Streaming").
local function stream_fields(t, st)
  t.streamed = true
  t.first_byte_us = st.first_us and st.first_us - st.t0 or nil
  t.reads = st.reads
  t.stream_bytes = st.bytes
  return t
end

-- openresty.transport(provider, opts) -> transport(req) with the libcurl
-- transport's contract: res | nil, err, code, { attempts, provider_wait_us }.
-- opts: connect_timeout_ms (10000), timeout_ms (120000), max_response_bytes
-- (64 MiB), verify_tls (true; needs lua_ssl_trusted_certificate).
-- req.on_data = function(bytes) -> true | nil, reason streams a 2xx body as
-- it arrives (chunked decoded; res.body ""; res.streamed, first_byte_us,
-- reads, stream_bytes); a falsy return or a raise aborts: nil,
-- "STREAM_ABORTED: reason", "STREAM_ABORTED", info, the connection closed.
-- req.idle_timeout_ms (0/nil: none) bounds the silence between reads of it:
-- "TIMEOUT: stream stalled: …". A non-2xx body is buffered, on_data not
-- called. Nothing is retried once a byte reached on_data (info then carries
-- streamed and the figures). timeout_ms bounds a streamed attempt as a whole.
-- Raises on a bad on_data / idle_timeout_ms, and outside the cosocket phases.
function M.transport(provider, opts)
  opts = opts or {}
  local o = {
    connect_timeout_ms = opts.connect_timeout_ms or provider.connect_timeout_ms or 10000,
    timeout_ms = opts.timeout_ms or provider.timeout_ms or 120000,
    max_response_bytes = opts.max_response_bytes or provider.max_response_bytes or 64 * 1024 * 1024,
    verify_tls = provider.verify_tls,
  }
  return function(req)
    local phase = ngx.get_phase()
    if not COSOCKET_PHASES[phase] then
      error("genaudit: provider calls cannot run in the " .. phase .. " phase (use content, access, rewrite or "
        .. "a timer)", 2)
    end
    local u = parse_url(req.url)
    if not u then error("genaudit: bad provider URL", 2) end
    local on_data, idle = req.on_data, req.idle_timeout_ms or 0
    if on_data ~= nil and type(on_data) ~= "function" then
      error("bad argument #1 to 'transport' (on_data must be a function, got " .. type(on_data) .. ")", 2)
    end
    if type(idle) ~= "number" or idle < 0 or idle % 1 ~= 0 then
      error("bad argument #1 to 'transport' (idle_timeout_ms must be a non-negative integer)", 2)
    end
    local attempts, wait_us = {}, 0
    local retries = req.retries or 2
    local backoff = req.backoff_ms or 200
    local max_backoff = req.max_backoff_ms or 30000
    for i = 1, retries + 1 do
      local st = on_data and { on_data = on_data, idle_ms = idle, timeout_ms = o.timeout_ms,
                               limit = o.max_response_bytes, reads = 0, bytes = 0 } or nil
      local status, headers, body, timings, failed_retry = exchange(u, req, o, st)
      wait_us = wait_us + timings.wait_us
      local streamed = st and st.reads > 0
      if streamed then failed_retry = false end -- bytes reached on_data: never tried again
      local a = { timings = timings }
      attempts[i] = a
      local retry
      if status then
        a.status = status
        retry = core.retry_policy(status)
        a.retry_after_ms = retry and core.retry_after_ms(headers["retry-after"]) or nil
      else
        a.error, a.code = headers, body -- exchange's nil, err, code, timings, retry
        retry = failed_retry
      end
      if not retry or i == retries + 1 or streamed then
        if status then
          local res = { status = status, headers = headers, body = body, attempts = attempts, timings = timings,
                        provider_wait_us = wait_us, retries = i - 1 }
          return st and st.live and stream_fields(res, st) or res
        end
        local info = { attempts = attempts, provider_wait_us = wait_us }
        return nil, a.error, a.code, streamed and stream_fields(info, st) or info
      end
      local sleep = core.retry_delay(i, backoff, max_backoff, a.retry_after_ms)
      a.slept_ms = sleep
      ngx.sleep(sleep / 1000) -- yields: other requests on this worker go on
    end
  end
end

-- True inside nginx where cosockets can exist (init_worker then hands the
-- pipeline openresty.transport; genaudit.client itself never looks for ngx).
function M.available()
  return ngx ~= nil and type(ngx.socket) == "table" and type(ngx.get_phase) == "function"
end

-- openresty.client_writer() -> on_chunk(text, info): relays a stream to
-- this request's client as it comes. Each call sends text at once
-- (ngx.print, then ngx.flush(true): returns when nginx has handed it to the
-- socket, so a slow client slows the stream instead of filling memory) and
-- returns true, or false, "client went away" when either fails (the client
-- closed its connection): the generation then aborts as STREAM_ABORTED and
-- the provider connection is closed. false, not nil: an on_chunk returning
-- nothing (nil) goes on, only false (or a raise) stops the pipeline. Content phase only (ngx.print raises
-- elsewhere); pass it as the pipeline's on_chunk, or as a transport's
-- on_data to relay raw bytes. The first call sends the response headers.
function M.client_writer()
  return function(text)
    local ok = ngx.print(text)
    if ok then ok = ngx.flush(true) end
    if not ok then return false, "client went away" end
    return true
  end
end

-- ---- OpenTelemetry span sink ----

local Sink = {}
Sink.__index = Sink

-- openresty.otel_sink(cfg) -> sink for genaudit.otel (cfg from otel.config:
-- url, headers, queue = 2048 generations, batch = 64, timeout_ms = 10000,
-- retries = 5, backoff_ms = 500, max_backoff_ms = 30000). push() only
-- queues and, when no flush runs, starts one in a 0-delay ngx.timer: the
-- timer posts batches over openresty.transport (cosockets, the shared retry
-- policy, ngx.sleep between tries) until the queue is empty. A full queue
-- drops and counts; on worker exit (premature timer) each batch gets one try.
function M.otel_sink(cfg)
  local prefix, suffix = require("genaudit.otel").envelope(cfg)
  local headers = { ["Content-Type"] = "application/json" }
  for k, v in pairs(cfg.headers or {}) do headers[k] = v end
  local timeout = cfg.timeout_ms or 10000
  return setmetatable({
    url = cfg.url, headers = headers, prefix = prefix, suffix = suffix,
    capacity = cfg.queue or 2048, batch = cfg.batch or 64, retries = cfg.retries or 5,
    backoff_ms = cfg.backoff_ms or 500, max_backoff_ms = cfg.max_backoff_ms or 30000,
    send = M.transport({ connect_timeout_ms = math.min(timeout, 5000), timeout_ms = timeout,
                         max_response_bytes = 1024 * 1024 }),
    queue = {}, head = 1, tail = 0, running = false, sending = 0, closed = false,
    st = { exported = 0, dropped = 0, failed = 0, pending = 0, retries = 0, batches = 0 },
  }, Sink)
end

-- The timer's loop: batches until the queue is empty. Returns nothing.
function Sink:drain(premature)
  while self.head <= self.tail do
    local parts, n, k = {}, 0, 0
    while self.head <= self.tail and k < self.batch do
      local it = self.queue[self.head]
      self.queue[self.head] = nil
      self.head = self.head + 1
      k = k + 1
      parts[k], n = it[1], n + it[2]
    end
    self.st.pending = self.st.pending - n
    self.sending = n
    local exiting = premature or ngx.worker.exiting()
    local ok, res, err, _, info = pcall(self.send, { url = self.url, headers = self.headers,
      body = self.prefix .. table.concat(parts, ",") .. self.suffix,
      retries = exiting and 0 or self.retries, backoff_ms = self.backoff_ms, max_backoff_ms = self.max_backoff_ms })
    self.sending = 0
    self.st.batches = self.st.batches + 1
    local tries = ok and ((res and res.attempts) or (info and info.attempts)) or {}
    self.st.retries = self.st.retries + math.max(0, #tries - 1)
    if ok and res and res.status >= 200 and res.status < 300 then
      self.st.exported = self.st.exported + n
    else
      self.st.failed = self.st.failed + n
      if not ok then self.st.last_error = "OTEL: " .. tostring(res)
      elseif res then self.st.last_error = ("HTTP: collector at %s answered %d"):format(
        self.url:match("^https?://([^/?#]+)") or "?", res.status)
      else self.st.last_error = tostring(err) end
    end
  end
  self.running = false
end

-- sink:push(items, nspans) -> true | nil, "FULL: ...", "FULL" | nil, "CLOSED: ...", "CLOSED"
function Sink:push(items, n)
  if self.closed then return nil, "CLOSED: the exporter is closed", "CLOSED" end
  if self.tail - self.head + 1 >= self.capacity then
    self.st.dropped = self.st.dropped + n
    return nil, ("FULL: span queue full (%d batches queued): %d span(s) dropped"):format(self.capacity, n), "FULL"
  end
  self.tail = self.tail + 1
  self.queue[self.tail] = { items, n }
  self.st.pending = self.st.pending + n
  if not self.running then
    local ok, err = ngx.timer.at(0, function(premature) self:drain(premature) end)
    if ok then
      self.running = true
    else -- no timer (too many pending): it stays queued for the next push's timer
      self.st.last_error = "OTEL: cannot start the flush timer: " .. tostring(err)
    end
  end
  return true
end

function Sink:stats()
  local out = {}
  for k, v in pairs(self.st) do out[k] = v end
  return out
end

-- sink:flush([timeout_ms = 5000]) -> true | nil, "TIMEOUT: ...", "TIMEOUT"
-- (waits with ngx.sleep: content, access, rewrite or timer phase)
function Sink:flush(ms)
  local deadline = ngx.now() + (ms or 5000) / 1000
  ngx.update_time()
  while (self.head <= self.tail or self.sending > 0) and ngx.now() < deadline do
    ngx.sleep(0.01)
    ngx.update_time()
  end
  if self.head <= self.tail or self.sending > 0 then
    return nil, "TIMEOUT: spans still queued or in flight", "TIMEOUT"
  end
  return true
end

-- sink:close() -> true: what is still queued is dropped and counted (no I/O:
-- exit_worker cannot use cosockets; a running timer finishes its batch).
function Sink:close()
  if not self.closed then
    self.closed = true
    self.st.dropped = self.st.dropped + self.st.pending
    self.st.pending = 0
    self.queue, self.head, self.tail = {}, 1, 0
  end
  return true
end

-- ---- per-worker lifecycle ----
local worker = {}

-- "nobody (uid 65534)": the effective user this worker runs as, from
-- /proc/self/status and /etc/passwd (init phase only: it reads files).
local function worker_user()
  local f = io.open("/proc/self/status", "rb")
  local status = f and f:read("a") or ""
  if f then f:close() end
  local uid = status:match("\nUid:%s+%d+%s+(%d+)")
  if not uid then return "an unknown user" end
  local name
  f = io.open("/etc/passwd", "rb")
  if f then
    for line in f:lines() do
      local n, u = line:match("^([^:]*):[^:]*:(%d+):")
      if u == uid then name = n break end
    end
    f:close()
  end
  return (name or "uid") .. " (uid " .. uid .. ")"
end

-- The metrics options of init_worker: nil (the dict genaudit_metrics when
-- nginx.conf declares it, else none), false (none), a dict name, or
-- { dict = name, interval = seconds (1) }. Returns dict, name, interval | nil.
-- Raises when a dict is named but not declared (a configuration mistake).
local function metrics_options(m)
  if m == false then return nil end
  if m ~= nil and type(m) ~= "string" and type(m) ~= "table" then
    error("bad argument #1 to 'init_worker' (metrics must be false, a dict name or a table)", 3)
  end
  local name = type(m) == "string" and m or type(m) == "table" and m.dict or nginx_metrics.DICT
  local interval = type(m) == "table" and m.interval or 1
  if type(name) ~= "string" then error("bad argument #1 to 'init_worker' (metrics.dict must be a string)", 3) end
  if type(interval) ~= "number" or interval <= 0 then
    error("bad argument #1 to 'init_worker' (metrics.interval must be a positive number of seconds)", 3)
  end
  local dict = ngx.shared[name]
  if not dict then
    if m == nil then return nil end
    error("genaudit: no lua_shared_dict " .. name .. " (declare it in the http block: lua_shared_dict " .. name
      .. " 1m;)", 3)
  end
  return dict, name, interval
end

-- What the pipeline persists through when metrics are on: the store, and
-- each persisted row counted (a counting failure is logged, never the
-- request's failure).
local function counting_persister(store, rec)
  return {
    persist_generation = function(_, row)
      local id, err, code, extra = store:persist_generation(row)
      local ok, e
      if id then ok, e = pcall(rec.generation, rec, row) else ok, e = pcall(rec.persist_failed, rec, code) end
      if not ok then ngx.log(ngx.ERR, "genaudit: metrics: ", tostring(e)) end
      return id, err, code, extra
    end,
  }
end

-- Publishes this worker's writer figures (premature: the worker is exiting,
-- exit_worker publishes the last ones).
local function publish_writer(premature)
  if premature or not worker.metrics or not worker.store then return end
  local ok, e = pcall(function() worker.metrics:writer(worker.store:stats(), ngx.worker.id() or 0) end)
  if not ok then ngx.log(ngx.ERR, "genaudit: metrics: ", tostring(e)) end
end

-- openresty.init_worker{ store = "sqlite:/var/lib/genaudit/audit.db",
--   async = { queue = 10000, batch = 100, on_full = "error", linger_ms = 10 }, provider = <provider>,
--   templates = dir, rules = dir, pricing = <pricing>,
--   metrics = nil | false | dict name | { dict = name, interval = 1 },
--   otel = { endpoint = url, headers, capture_content, queue, batch, ... } } — call from
-- init_worker_by_lua*. Opens this worker's store (migrations are safe with
-- several workers at once) with a writer thread, and builds the pipeline.
-- With metrics (the lua_shared_dict genaudit_metrics, when declared, by
-- default) every persisted snapshot is counted in the dict, and the writer's
-- figures are published every interval seconds (ngx.timer.every).
-- A failure is logged as one line naming the store and the worker's user,
-- and returned as nil, err; generate() then answers UNAVAILABLE with it.
-- Raises when metrics names a dict nginx.conf does not declare.
function M.init_worker(opts)
  local genaudit = require("genaudit")
  local async = opts.async or { queue = 10000, batch = 100, on_full = "error", linger_ms = 10 }
  worker.init_error = nil
  local dict, dict_name, interval = metrics_options(opts.metrics)
  worker.metrics, worker.metrics_dict = dict and nginx_metrics.recorder(dict) or nil, dict_name
  local store, err = genaudit.open(opts.store, { async = async, busy_timeout = opts.busy_timeout or 10000 })
  if not store then
    local user = worker_user()
    err = ("cannot open store %s as user %s: %s (the worker user must be able to write the database's"
      .. " directory)"):format(tostring(opts.store), user, tostring(err))
    ngx.log(ngx.ERR, "genaudit disabled: ", err)
    worker.init_error = err
    return nil, err
  end
  worker.store = store
  -- the OpenTelemetry export: opts.otel over the OTEL_* variables (name
  -- them with nginx's `env` directive), through this module's timer sink
  local otel_opts = false
  local ocfg = require("genaudit.otel").config(opts.otel)
  if ocfg then
    otel_opts = { sink = ocfg.sink or M.otel_sink(ocfg), service_name = ocfg.service_name,
                  capture_content = ocfg.capture_content }
  end
  worker.pipeline = genaudit.pipeline{
    otel = otel_opts,
    store = store, provider = opts.provider, templates = opts.templates, rules = opts.rules,
    pricing = opts.pricing, retries = opts.retries, backoff_ms = opts.backoff_ms,
    budgets = opts.budgets, budget_cache_ttl_ms = opts.budget_cache_ttl_ms,
    -- cosockets, never a blocking libcurl call on a worker
    transport = type(opts.provider) == "table" and M.transport(opts.provider) or nil,
    persister = worker.metrics and counting_persister(store, worker.metrics) or nil,
  }
  if worker.metrics then
    publish_writer() -- the worker's series exist from the start, at 0
    local ok, terr = ngx.timer.every(interval, publish_writer)
    if not ok then ngx.log(ngx.ERR, "genaudit: metrics: cannot start the writer figures' timer: ", terr) end
  end
  return true
end

-- openresty.generate(ctx [, opts]) -> the pipeline's result | nil, err, code, snapshot_id.
-- opts as pipeline:generate's (stream, on_chunk = openresty.client_writer(), …).
-- UNAVAILABLE when init_worker() failed (err says why; it names server
-- paths: log it, do not send it to clients), NOT_READY when it never ran.
function M.generate(ctx, opts)
  if not worker.pipeline then
    if worker.init_error then
      return nil, "UNAVAILABLE: genaudit.openresty.init_worker() failed: " .. worker.init_error, "UNAVAILABLE"
    end
    return nil, "NOT_READY: genaudit.openresty.init_worker() has not run", "NOT_READY"
  end
  return worker.pipeline:generate(ctx, opts)
end

-- The worker's store and pipeline (for reports or custom handlers).
function M.store() return worker.store end
function M.pipeline() return worker.pipeline end

-- openresty.exit_worker() — call from exit_worker_by_lua*: drains the async
-- queue (every acknowledged snapshot is committed) and closes the store.
function M.exit_worker()
  if worker.pipeline then worker.pipeline:close() end
  if worker.store then
    local ok, err = worker.store:flush()
    if not ok then ngx.log(ngx.ERR, "genaudit: ", err) end
    publish_writer() -- the drained queue's last figures
    worker.store:close()
  end
  worker.store, worker.pipeline, worker.metrics = nil, nil, nil
end

-- openresty.serve_metrics([dict_name]) — content handler of a /metrics
-- location: the shared dict's figures (every worker's) in the Prometheus
-- text format 0.0.4. The dict is the one init_worker counts into (or
-- dict_name, or genaudit_metrics); 404 when there is none.
function M.serve_metrics(dict_name)
  local name = dict_name or worker.metrics_dict or nginx_metrics.DICT
  local dict = ngx.shared[name]
  if not dict then
    ngx.status = 404
    ngx.header["Content-Type"] = "text/plain; charset=utf-8"
    ngx.say("no lua_shared_dict ", name, ": genaudit metrics are off")
    return
  end
  ngx.header["Content-Type"] = nginx_metrics.CONTENT_TYPE
  ngx.print(nginx_metrics.render(dict))
end

return M
