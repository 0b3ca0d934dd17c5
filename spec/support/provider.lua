-- spec/support/provider.lua
-- Owns: the helper that starts/stops tools/local_provider.lua (the local mock
-- OpenAI/Anthropic server) as a background process for busted specs and the
-- demo, and wraps its /__mock/ control API (via socket.http, loopback only).
--
--   local provider = require("spec.support.provider")
--   local srv = provider.start{ api_key = "sk-test" }  -- waits up to 5 s
--   srv.url, srv.port                 -- "http://127.0.0.1:PORT", PORT
--   srv:queue{ {status = 429, headers = {["Retry-After"] = "1"}}, {content = "hi"} }
--   srv:requests()                    -- array of {path, method, headers, body, auth, status}
--   srv:reset()                       -- clear queue, request log, id counter
--   srv:stop()                        -- SIGTERM (then SIGKILL), waits until gone; idempotent
--
-- start{} options: api_key, host (default 127.0.0.1), quiet (default false;
-- the server's stdout/stderr go to srv.log_file either way), interpreter
-- (default: the running interpreter from arg, else lua5.4), script (path to
-- local_provider.lua), timeout (seconds to wait for the port file, default 5).

local socket = require("socket")
local http = require("socket.http")
local ltn12 = require("ltn12")
local cjson = require("cjson")

local M = {}

local Server = {}
Server.__index = Server

local function shell_quote(s)
  return "'" .. (tostring(s):gsub("'", "'\\''")) .. "'"
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local data = f:read("*a")
  f:close()
  return data
end

-- Directory holding spec/ and tools/, derived from this file's location.
local function repo_root()
  local src = debug.getinfo(1, "S").source or ""
  local root = src:match("^@(.*)spec[/\\]support[/\\]provider%.lua$")
  if root == nil or root == "" then return "." end
  return (root:gsub("[/\\]$", ""))
end

-- The interpreter running this code (lowest negative index of arg), else lua5.4.
function M.interpreter()
  local a = _G.arg
  if type(a) == "table" and type(a[-1]) == "string" then
    local i = -1
    while type(a[i - 1]) == "string" do i = i - 1 end
    local exe = a[i]
    if exe ~= "" and exe:sub(1, 1) ~= "-" then return exe end
  end
  return "lua5.4"
end

local function own_pid()
  local stat = read_file("/proc/self/stat")
  return stat and tonumber(stat:match("^(%d+)"))
end

-- True while the process exists and is not a zombie.
function M.pid_alive(pid)
  if not pid then return false end
  local stat = read_file("/proc/" .. string.format("%d", pid) .. "/stat")
  if stat then
    local st = stat:match("^%d+ %b() (%a)")
    return st ~= "Z" and st ~= "X"
  end
  if read_file("/proc/self/stat") then return false end -- /proc works: process is gone
  local r = os.execute("kill -0 " .. string.format("%d", pid) .. " 2>/dev/null")
  return r == true or r == 0
end

local function wait_gone(pid, seconds)
  local deadline = socket.gettime() + seconds
  while M.pid_alive(pid) do
    if socket.gettime() >= deadline then return false end
    socket.sleep(0.02)
  end
  return true
end

function M.start(opts)
  opts = opts or {}
  local host = opts.host or "127.0.0.1"
  local interp = opts.interpreter or M.interpreter()
  local script = opts.script or (repo_root() .. "/tools/local_provider.lua")
  local base = os.tmpname()
  local srv = setmetatable({
    host = host, base = base,
    port_file = base .. ".port", pid_file = base .. ".pid", log_file = base .. ".log",
    stopped = false,
  }, Server)

  local args = { shell_quote(interp), shell_quote(script), "--host", shell_quote(host),
                 "--port", "0", "--port-file", shell_quote(srv.port_file) }
  if opts.api_key then
    args[#args + 1] = "--api-key"
    args[#args + 1] = shell_quote(opts.api_key)
  end
  if opts.quiet then args[#args + 1] = "--quiet" end
  local me = own_pid()
  if me then
    args[#args + 1] = "--watch-pid"
    args[#args + 1] = string.format("%d", me)
  end
  local cmd = table.concat(args, " ") .. " >" .. shell_quote(srv.log_file) .. " 2>&1 </dev/null & echo $! >"
              .. shell_quote(srv.pid_file)
  os.execute(cmd)
  srv.pid = tonumber((read_file(srv.pid_file) or ""):match("%d+"))
  if not srv.pid then
    srv:stop()
    error("local_provider: could not start: " .. cmd)
  end

  local deadline = socket.gettime() + (opts.timeout or 5)
  while true do
    local port = tonumber((read_file(srv.port_file) or ""):match("^(%d+)"))
    if port then
      srv.port = port
      break
    end
    if not M.pid_alive(srv.pid) or socket.gettime() >= deadline then
      local log = read_file(srv.log_file) or ""
      srv:stop()
      error("local_provider did not start listening (" .. interp .. "): " .. log)
    end
    socket.sleep(0.02)
  end
  srv.url = "http://" .. host .. ":" .. string.format("%d", srv.port)
  return srv
end

-- Performs one control call; returns the decoded JSON body. Errors on failure.
function Server:call(method, path, body)
  if self.stopped then error("local_provider: server already stopped") end
  local chunks = {}
  local headers = { ["accept"] = "application/json" }
  if body then
    headers["content-type"] = "application/json"
    headers["content-length"] = string.format("%d", #body)
  end
  local old_timeout = http.TIMEOUT
  http.TIMEOUT = 5
  local ok, code = http.request({
    url = self.url .. path, method = method, headers = headers,
    source = body and ltn12.source.string(body) or nil,
    sink = ltn12.sink.table(chunks),
  })
  http.TIMEOUT = old_timeout
  local text = table.concat(chunks)
  if not ok then error("local_provider: " .. method .. " " .. path .. " failed: " .. tostring(code)) end
  if code ~= 200 then
    error("local_provider: " .. method .. " " .. path .. " -> HTTP " .. tostring(code) .. ": " .. text)
  end
  return cjson.decode(text)
end

-- Queues response scripts (an array of script tables, or one script table).
-- Returns the number of scripts now pending.
function Server:queue(list)
  local body
  if type(list) == "table" and #list == 0 and next(list) ~= nil then
    body = cjson.encode({ list })
  elseif type(list) == "table" and #list == 0 then
    body = "[]"
  else
    body = cjson.encode(list)
  end
  return math.floor(self:call("POST", "/__mock/queue", body).pending)
end

-- Logged completion requests, oldest first: {path, method, headers, body, auth, status}.
function Server:requests()
  return self:call("GET", "/__mock/requests")
end

function Server:reset()
  self:call("POST", "/__mock/reset", "{}")
  return true
end

function Server:health()
  return self:call("GET", "/__mock/health")
end

function Server:alive()
  return not self.stopped and M.pid_alive(self.pid)
end

-- Kills the server and waits until the process is gone. Safe to call twice.
function Server:stop()
  if self.stopped then return true end
  self.stopped = true
  local gone = true
  if self.pid and M.pid_alive(self.pid) then
    local pid = string.format("%d", self.pid)
    os.execute("kill -TERM " .. pid .. " 2>/dev/null")
    gone = wait_gone(self.pid, 5)
    if not gone then
      os.execute("kill -KILL " .. pid .. " 2>/dev/null")
      gone = wait_gone(self.pid, 2)
    end
  end
  for _, path in ipairs({ self.port_file, self.pid_file, self.log_file, self.base }) do
    os.remove(path)
  end
  return gone
end

-- The server's stdout/stderr so far (request log lines), or "" once stopped.
function Server:log()
  return read_file(self.log_file) or ""
end

return M
