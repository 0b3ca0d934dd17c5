-- spec/support/http_server.lua
-- Owns: a tiny scriptable HTTP/1.1 server for spec/http_spec.lua (loopback
-- only), and the helper that starts, scripts and stops it. Used two ways:
--
--   lua5.4 spec/support/http_server.lua --serve PORTFILE [WATCH_PID]   -- the server
--
--   local server = require("spec.support.http_server")                 -- the helper
--   local srv = server.start()        -- srv.port, srv.url ("http://127.0.0.1:PORT")
--   srv:script{ {status = 429, headers = {{"Retry-After", "1"}}}, {echo = true} }
--   srv:stats()                       -- {requests = N, connections = N} since reset
--   srv:streams()                     -- {sent = N, hangups = N}: streamed pieces sent, and
--                                     --   streamed responses whose client hung up before the end
--   srv:release()                     -- lets a lockstep stream send its next piece
--   srv:bodies()                      -- every request since reset (control ones aside), in order:
--                                     --   array of {method, target, body, headers = {lowercased name = value}}
--                                     --   (a collector stand-in)
--   srv:reset()                       -- empty script, zero counters, unfinished streams dropped
--   srv:stop()                        -- SIGTERM, waits until gone; idempotent
--   server.closed_port()              -- a loopback port nobody listens on
--
-- A response script entry (one per request, in order; an empty script answers
-- {echo = true}): status (default 200), headers (array of {name, value}; sent
-- in order), body (string), size (body of N "x"), echo (body = request body,
-- plus X-Echo-Method/-Target/-Length and X-Echo-H-<name> for each request
-- header), delay_ms (answer later), nolength (no Content-Length: the body ends
-- when the connection closes), close (close after answering), reset (close
-- without answering). Control requests go to /__ctl/* on a fresh connection.
--
-- A streamed response: chunks = {"a", "b", ...} sends the headers, then each
-- piece with its own send (never coalesced by us): chunked (one chunk per
-- piece), one_chunk (with chunked: a single chunk whose bytes are the
-- pieces, sent one by one), nolength (the body ends at close), else a
-- Content-Length of the pieces' total. chunk_delay_ms waits before each
-- piece; lockstep sends piece 2, 3, ... only after a /__ctl/release each (a
-- client proves it has piece k by releasing k + 1); drop closes the
-- connection after the last piece without the chunked terminator (a
-- Content-Length body: one byte short).

local socket = require("socket")

local M = {}

local CTL_TIMEOUT = 5

local function pct_encode(s)
  return (s:gsub("[^%w%-%._~]", function(ch) return string.format("%%%02X", ch:byte()) end))
end

local function pct_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local data = f:read("*a")
  f:close()
  return data
end

-- ---------------------------------------------------------------- server side

-- One script line -> response spec table.
local function parse_line(line)
  local spec = { headers = {} }
  for key, value in line:gmatch("(%w+)=(%S*)") do
    if key == "h" then
      local n, v = value:match("^([^:]*):(.*)$")
      spec.headers[#spec.headers + 1] = { pct_decode(n), pct_decode(v) }
    elseif key == "body" then
      spec.body = pct_decode(value)
    elseif key == "status" or key == "size" or key == "delay" or key == "cdelay" then
      spec[key] = tonumber(value)
    elseif key == "chunks" then
      spec.chunks = {}
      for piece in value:gmatch("[^,]+") do spec.chunks[#spec.chunks + 1] = pct_decode(piece) end
    else
      spec[key] = value == "1"
    end
  end
  return spec
end

local REASONS = { [200] = "OK", [400] = "Bad Request", [404] = "Not Found", [429] = "Too Many Requests",
                  [500] = "Internal Server Error", [502] = "Bad Gateway", [503] = "Service Unavailable",
                  [504] = "Gateway Timeout" }

local function build_response(spec, req)
  local status = spec.status or 200
  local body = spec.body or ""
  local lines = { string.format("HTTP/1.1 %d %s", status, REASONS[status] or "Status") }
  local function add(n, v) lines[#lines + 1] = n .. ": " .. v end
  if spec.echo then
    body = req.body
    add("Content-Type", "application/octet-stream")
    add("X-Echo-Method", req.method)
    add("X-Echo-Target", req.target)
    add("X-Echo-Length", string.format("%d", #req.body))
    for _, h in ipairs(req.headers) do add("X-Echo-H-" .. h[1], h[2]) end
  end
  if spec.size then body = string.rep("x", spec.size) end
  for _, h in ipairs(spec.headers) do add(h[1], h[2]) end
  if spec.nolength or spec.close then add("Connection", "close") end
  if not spec.nolength then add("Content-Length", string.format("%d", #body)) end
  if req.method == "HEAD" then body = "" end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. body, spec.nolength or spec.close
end

-- A streamed response: its head, the framed pieces (each sent on its own),
-- the terminator (nil: none), and whether to close after it.
local function build_stream(spec, req)
  local status = spec.status or 200
  local total = 0
  for _, p in ipairs(spec.chunks) do total = total + #p end
  local lines = { string.format("HTTP/1.1 %d %s", status, REASONS[status] or "Status") }
  for _, h in ipairs(spec.headers) do lines[#lines + 1] = h[1] .. ": " .. h[2] end
  local parts, final = {}, ""
  if spec.chunked then
    lines[#lines + 1] = "Transfer-Encoding: chunked"
    for i, p in ipairs(spec.chunks) do
      if spec.onechunk then
        parts[i] = (i == 1 and string.format("%x\r\n", total) or "") .. p
      else
        parts[i] = string.format("%x\r\n", #p) .. p .. "\r\n"
      end
    end
    final = (spec.onechunk and "\r\n" or "") .. "0\r\n\r\n"
  else
    if not spec.nolength then
      lines[#lines + 1] = string.format("Content-Length: %d", total + (spec.drop and 1 or 0))
    end
    for i, p in ipairs(spec.chunks) do parts[i] = p end
  end
  if spec.nolength or spec.close then lines[#lines + 1] = "Connection: close" end
  if spec.drop then final = nil end
  return table.concat(lines, "\r\n") .. "\r\n\r\n", parts, final,
    spec.drop or spec.nolength or spec.close or req.close
end

-- Parses one complete request at the start of buf: request table and the
-- rest of buf, or nil while incomplete.
local function parse_request(buf)
  local head_end = buf:find("\r\n\r\n", 1, true)
  if not head_end then return nil end
  local head = buf:sub(1, head_end - 1)
  local method, target = head:match("^(%u+) (%S+) HTTP/1%.%d")
  local req = { method = method or "?", target = target or "?", headers = {}, close = false }
  local length = 0
  for name, value in head:gmatch("\r\n([^:\r\n]+):[ \t]*([^\r\n]*)") do
    req.headers[#req.headers + 1] = { name, value }
    local lname = name:lower()
    if lname == "content-length" then length = tonumber(value) or 0 end
    if lname == "connection" and value:lower() == "close" then req.close = true end
  end
  if #buf < head_end + 3 + length then return nil end
  req.body = buf:sub(head_end + 4, head_end + 3 + length)
  return req, buf:sub(head_end + 4 + length)
end

local function serve(port_file, watch_pid)
  local listener = assert(socket.bind("127.0.0.1", 0))
  listener:settimeout(0)
  local _, port = listener:getsockname()
  local tmp = port_file .. ".tmp"
  local f = assert(io.open(tmp, "w"))
  f:write(string.format("%d\n", port))
  f:close()
  assert(os.rename(tmp, port_file))

  local conns = {}
  local queue = {}
  local stats = { requests = 0, connections = 0 }
  local streams = { sent = 0, hangups = 0, tokens = 0 }
  local recorded = {} -- every request since reset: { method, target, body }
  local last_activity = socket.gettime()
  local next_watch = 0

  local function drop(c)
    c.sock:close()
    c.dead = true
  end

  -- a client gone in the middle of a streamed response
  local function hangup(c)
    if c.stream then streams.hangups = streams.hangups + 1 end
    drop(c)
  end

  local function send(c, out, close_after)
    c.sock:settimeout(CTL_TIMEOUT)
    local ok = c.sock:send(out)
    c.sock:settimeout(0)
    if not ok then return hangup(c) end
    if close_after then drop(c) end
  end

  local function control(c, req)
    local out = "ok"
    if req.target == "/__ctl/script" then
      queue = {}
      for line in req.body:gmatch("[^\n]+") do queue[#queue + 1] = parse_line(line) end
    elseif req.target == "/__ctl/stats" then
      out = string.format("requests=%d connections=%d", stats.requests, stats.connections)
    elseif req.target == "/__ctl/streams" then
      out = string.format("sent=%d hangups=%d", streams.sent, streams.hangups)
    elseif req.target == "/__ctl/bodies" then
      local parts = {}
      for i, r in ipairs(recorded) do
        local hs = {}
        for j, h in ipairs(r.headers) do hs[j] = pct_encode(h[1]) .. ":" .. pct_encode(h[2]) end
        parts[i] = string.format("%s %s %s %d\n%s", r.method, pct_encode(r.target),
                                 #hs > 0 and table.concat(hs, ",") or "-", #r.body, r.body)
      end
      out = table.concat(parts)
    elseif req.target == "/__ctl/release" then
      streams.tokens = streams.tokens + 1
    elseif req.target == "/__ctl/reset" then
      queue = {}
      stats = { requests = 0, connections = 0 }
      streams = { sent = 0, hangups = 0, tokens = 0 }
      recorded = {}
      for _, other in ipairs(conns) do
        if other.stream and not other.dead then drop(other) end
      end
    else
      send(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", true)
      return
    end
    send(c, string.format("HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", #out, out), true)
  end

  local function handle(c, req)
    if req.target:sub(1, 7) == "/__ctl/" then return control(c, req) end
    stats.requests = stats.requests + 1
    recorded[#recorded + 1] = { method = req.method, target = req.target, body = req.body, headers = req.headers }
    if not c.counted then
      c.counted = true
      stats.connections = stats.connections + 1
    end
    local spec = table.remove(queue, 1) or { echo = true, headers = {} }
    if spec.reset then return drop(c) end
    if spec.chunks then
      local head, parts, final, close_after = build_stream(spec, req)
      send(c, head)
      c.stream = { parts = parts, i = 1, final = final, close_after = close_after, lockstep = spec.lockstep,
                   delay = (spec.cdelay or 0) / 1000, due = socket.gettime() + (spec.cdelay or 0) / 1000 }
      return
    end
    local out, close_after = build_response(spec, req)
    close_after = close_after or req.close
    if spec.delay and spec.delay > 0 then
      c.due, c.out, c.close_after = socket.gettime() + spec.delay / 1000, out, close_after
    else
      send(c, out, close_after)
    end
  end

  while true do
    local now = socket.gettime()
    local readers, timeout = { listener }, 0.25
    for _, c in ipairs(conns) do
      if c.stream then
        readers[#readers + 1] = c.sock -- only to see a hang-up
        if not c.stream.lockstep or c.stream.i == 1 or streams.tokens > 0 then
          timeout = math.min(timeout, math.max(0, c.stream.due - now))
        end
      elseif c.due then
        timeout = math.min(timeout, math.max(0, c.due - now))
      else
        readers[#readers + 1] = c.sock
      end
    end
    local ready = socket.select(readers, nil, timeout)
    now = socket.gettime()
    if ready[listener] then
      while true do
        local s = listener:accept()
        if not s then break end
        s:settimeout(0)
        conns[#conns + 1] = { sock = s, buf = "" }
      end
    end
    for _, c in ipairs(conns) do
      if not c.dead and not c.due and ready[c.sock] then
        last_activity = now
        local data, err, partial = c.sock:receive(65536)
        data = data or partial or ""
        c.buf = c.buf .. data
        if c.stream then
          if err == "closed" then hangup(c) end
        elseif c.buf:match("^[^%u]") then
          drop(c) -- not HTTP (a TLS ClientHello): hang up
        else
          local req, rest = parse_request(c.buf)
          if req then
            c.buf = rest
            handle(c, req)
          elseif err == "closed" then
            drop(c)
          end
        end
      end
      if not c.dead and c.due and c.due <= now then
        local out, close_after = c.out, c.close_after
        c.due, c.out = nil, nil
        send(c, out, close_after)
      end
    end
    -- streamed responses: the next piece of each that is due (and released)
    for _, c in ipairs(conns) do
      local st = c.stream
      if st and not c.dead and st.due <= now and (not st.lockstep or st.i == 1 or streams.tokens > 0) then
        last_activity = now
        if st.lockstep and st.i > 1 then streams.tokens = streams.tokens - 1 end
        send(c, st.parts[st.i])
        streams.sent = streams.sent + 1
        st.i = st.i + 1
        st.due = now + st.delay
        if not c.dead and st.i > #st.parts then
          c.stream = nil
          if st.final then send(c, st.final, st.close_after) else drop(c) end
        end
      end
    end
    local live = {}
    for _, c in ipairs(conns) do
      if not c.dead then live[#live + 1] = c end
    end
    conns = live
    -- never outlive the test run: the watched process gone, or idle too long
    if now >= next_watch then
      next_watch = now + 1
      if watch_pid and not read_file("/proc/" .. watch_pid .. "/stat") then os.exit(0) end
      if now - last_activity > 300 then os.exit(0) end
    end
  end
end

if (...) == "--serve" then
  local _, port_file, watch_pid = ...
  serve(assert(port_file, "usage: http_server.lua --serve PORTFILE [WATCH_PID]"), watch_pid)
  return
end

-- ---------------------------------------------------------------- helper side

local Server = {}
Server.__index = Server

local function shell_quote(s)
  return "'" .. (tostring(s):gsub("'", "'\\''")) .. "'"
end

local function this_file()
  local src = debug.getinfo(1, "S").source or ""
  return src:match("^@(.*)$") or "spec/support/http_server.lua"
end

local function own_pid()
  local stat = read_file("/proc/self/stat")
  return stat and stat:match("^(%d+)")
end

local function alive(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  if not stat then return false end
  local st = stat:match("^%d+ %b() (%a)")
  return st ~= "Z" and st ~= "X"
end

-- Starts the server under lua5.4 (which has luasocket) in the background and
-- waits up to 5 s for its port. Raises when it does not come up.
function M.start()
  local base = os.tmpname()
  local srv = setmetatable({ base = base, port_file = base .. ".port", pid_file = base .. ".pid",
                             log_file = base .. ".log", stopped = false }, Server)
  local cmd = table.concat({ "lua5.4", shell_quote(this_file()), "--serve", shell_quote(srv.port_file),
                             own_pid() or "" }, " ")
              .. " >" .. shell_quote(srv.log_file) .. " 2>&1 </dev/null & echo $! >" .. shell_quote(srv.pid_file)
  os.execute(cmd)
  srv.pid = (read_file(srv.pid_file) or ""):match("%d+")
  local deadline = socket.gettime() + 5
  while true do
    local port = tonumber((read_file(srv.port_file) or ""):match("^(%d+)"))
    if port then
      srv.port = port
      break
    end
    if not srv.pid or not alive(srv.pid) or socket.gettime() > deadline then
      local log = read_file(srv.log_file) or ""
      srv:stop()
      error("http_server did not start: " .. log)
    end
    socket.sleep(0.01)
  end
  srv.url = string.format("http://127.0.0.1:%d", srv.port)
  return srv
end

-- One control request on its own connection; returns the response body.
function Server:control(method, path, body)
  body = body or ""
  local sock = assert(socket.connect("127.0.0.1", self.port))
  sock:settimeout(CTL_TIMEOUT)
  assert(sock:send(string.format("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n"
                                 .. "Connection: close\r\n\r\n%s", method, path, #body, body)))
  local data, err, partial = sock:receive("*a")
  sock:close()
  data = data or partial or ""
  local status = data:match("^HTTP/1%.1 (%d+)")
  if status ~= "200" then error("http_server: " .. path .. " failed: " .. tostring(status or err)) end
  return data:match("\r\n\r\n(.*)$")
end

-- Replaces the response script (see the header for the entry fields).
function Server:script(list)
  local lines = {}
  for _, spec in ipairs(list) do
    local t = {}
    for _, key in ipairs({ "status", "size", "delay_ms", "chunk_delay_ms" }) do
      local name = ({ delay_ms = "delay", chunk_delay_ms = "cdelay" })[key] or key
      if spec[key] then t[#t + 1] = string.format("%s=%d", name, spec[key]) end
    end
    for _, key in ipairs({ "echo", "nolength", "close", "reset", "chunked", "one_chunk", "drop", "lockstep" }) do
      if spec[key] then t[#t + 1] = key:gsub("_", "") .. "=1" end
    end
    if spec.chunks then
      local enc = {}
      for i, p in ipairs(spec.chunks) do enc[i] = pct_encode(p) end
      t[#t + 1] = "chunks=" .. table.concat(enc, ",")
    end
    if spec.body then t[#t + 1] = "body=" .. pct_encode(spec.body) end
    for _, h in ipairs(spec.headers or {}) do t[#t + 1] = "h=" .. pct_encode(h[1]) .. ":" .. pct_encode(h[2]) end
    if #t == 0 then t[1] = "status=200" end
    lines[#lines + 1] = table.concat(t, " ")
  end
  self:control("POST", "/__ctl/script", table.concat(lines, "\n"))
  return true
end

function Server:stats()
  local text = self:control("GET", "/__ctl/stats")
  local r, c = text:match("^requests=(%d+) connections=(%d+)$")
  return { requests = tonumber(r), connections = tonumber(c) }
end

function Server:bodies()
  local text = self:control("GET", "/__ctl/bodies")
  local out, pos = {}, 1
  while pos <= #text do
    local method, target, hs, len, nxt = text:match("^(%S+) (%S+) (%S+) (%d+)\n()", pos)
    if not method then error("http_server: bad /__ctl/bodies answer") end
    len = tonumber(len)
    local headers = {}
    for n, v in hs:gmatch("([^,:]+):([^,]*)") do headers[pct_decode(n):lower()] = pct_decode(v) end
    out[#out + 1] = { method = method, target = pct_decode(target), body = text:sub(nxt, nxt + len - 1),
                      headers = headers }
    pos = nxt + len
  end
  return out
end

function Server:streams()
  local text = self:control("GET", "/__ctl/streams")
  local s, h = text:match("^sent=(%d+) hangups=(%d+)$")
  return { sent = tonumber(s), hangups = tonumber(h) }
end

function Server:release()
  self:control("POST", "/__ctl/release")
  return true
end

function Server:reset()
  self:control("POST", "/__ctl/reset")
  return true
end

-- Kills the server (SIGTERM, then SIGKILL after 2 s) and waits until gone.
function Server:stop()
  if self.stopped then return true end
  self.stopped = true
  if self.pid then
    os.execute("kill " .. self.pid .. " 2>/dev/null")
    local deadline = socket.gettime() + 2
    while alive(self.pid) and socket.gettime() < deadline do socket.sleep(0.01) end
    if alive(self.pid) then
      os.execute("kill -9 " .. self.pid .. " 2>/dev/null")
      while alive(self.pid) do socket.sleep(0.01) end
    end
  end
  for _, p in ipairs({ self.base, self.port_file, self.pid_file, self.log_file }) do os.remove(p) end
  return true
end

-- A loopback port with no listener (bound, then released).
function M.closed_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

return M
