-- spec.support.nginx — runs the real examples/openresty/nginx.conf in a
-- throwaway prefix (nginx in the foreground, reaped by us) and drives load
-- through it with curl --parallel.
local socket = require("socket")
local tmp = require("spec.support.tmp")

local M = {}

local Nginx = {}
Nginx.__index = Nginx

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end

-- True while the process exists and is not a zombie (an exited master is
-- reaped late by PID 1, so kill -0 alone would say it is still there).
local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local state = f:read("a"):match("^%d+ %b() (%a)")
  f:close()
  return state ~= nil and state ~= "Z"
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- M.render{ port, workers, db, templates, rules } -> prefix: the example
-- config rendered by tools/openresty-example.sh as shipped (no `user`
-- override: as root, the workers run as nobody; the script makes the
-- database's directory theirs).
function M.render(opts)
  local prefix = tmp.dir()
  local env = { EXAMPLE_PORT = opts.port, EXAMPLE_WORKERS = opts.workers or 2, EXAMPLE_DB = opts.db,
                EXAMPLE_TEMPLATES = opts.templates, EXAMPLE_RULES = opts.rules }
  local parts = {}
  for k, v in pairs(env) do parts[#parts + 1] = k .. "=" .. q(v) end
  assert(sh(table.concat(parts, " ") .. " sh tools/openresty-example.sh " .. q(prefix) .. " > /dev/null"))
  return prefix
end

-- M.config_head{ env = { NAME, ... } } -> the opening of a test-only config
-- (for render_config): the lua module loaded, one worker, pid, error log and
-- temp paths under @PREFIX@, the env names passed through, and `http {` open
-- with genaudit's package paths (@ROOT@/lua, the LuaJIT build); the caller
-- adds its directives and servers and closes the block.
function M.config_head(opts)
  local env = {}
  for _, name in ipairs(opts and opts.env or {}) do env[#env + 1] = "env " .. name .. ";\n" end
  return "load_module /usr/lib/nginx/modules/ndk_http_module.so;\n"
    .. "load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;\n"
    .. "worker_processes 1;\npid       @PREFIX@/nginx.pid;\nerror_log @PREFIX@/error.log info;\n"
    .. table.concat(env) .. "events { worker_connections 64; }\nhttp {\n"
    .. "    access_log            @PREFIX@/access.log;\n"
    .. "    client_body_temp_path @PREFIX@/tmp/body;\n    proxy_temp_path       @PREFIX@/tmp/proxy;\n"
    .. "    fastcgi_temp_path     @PREFIX@/tmp/fastcgi;\n    uwsgi_temp_path       @PREFIX@/tmp/uwsgi;\n"
    .. "    scgi_temp_path        @PREFIX@/tmp/scgi;\n"
    .. "    lua_package_path  \"@ROOT@/lua/?.lua;@ROOT@/lua/?/init.lua;;\";\n"
    .. "    lua_package_cpath \"@ROOT@/build/luajit/?.so;;\";\n"
end

-- M.render_config{ port, config } -> prefix: a test-only config (text with
-- @PREFIX@, @ROOT@ and @PORT@ filled in) instead of the shipped example; it
-- must answer GET /health.
function M.render_config(opts)
  local prefix = tmp.dir()
  assert(sh("mkdir -p " .. q(prefix .. "/tmp")))
  local pwd = io.popen("pwd")
  local root = pwd:read("l")
  pwd:close()
  local text = opts.config:gsub("@(%u+)@", { PREFIX = prefix, ROOT = root, PORT = tostring(opts.port) })
  tmp.write(prefix .. "/nginx.conf", text)
  return prefix
end

-- M.start{ port, workers, db, templates, rules, env = {NAME = value},
--   prepare = function(prefix), config = text } -> server; prepare runs after
-- rendering; config replaces the example (see render_config).
function M.start(opts)
  local prefix = opts.config and M.render_config(opts) or M.render(opts)
  if opts.prepare then opts.prepare(prefix) end
  local env = {}
  for k, v in pairs(opts.env or {}) do env[#env + 1] = k .. "='" .. v .. "'" end
  local pidfile = prefix .. "/master.pid"
  assert(sh(("%s nginx -p %s -c %s/nginx.conf -g 'daemon off;' > %s/stdout 2>&1 & echo $! > %s")
    :format(table.concat(env, " "), prefix, prefix, prefix, pidfile)))
  local self = setmetatable({ prefix = prefix, pid = tonumber(tmp.read(pidfile)), port = opts.port,
    url = "http://127.0.0.1:" .. opts.port }, Nginx)
  for _ = 1, 100 do
    if sh("curl -sf " .. self.url .. "/health > /dev/null") then return self end
    socket.sleep(0.05)
  end
  local log = tmp.read(prefix .. "/error.log") .. tmp.read(prefix .. "/stdout")
  self:stop()
  error("nginx did not start: " .. log)
end

-- server:load(paths, concurrency) -> array of { code = http status, body = text },
-- in the order of paths; runs all requests through curl --parallel.
function Nginx:load(paths, concurrency, background)
  local dir = self.prefix .. "/load" .. tostring(socket.gettime()):gsub("%.", "")
  assert(sh("mkdir -p " .. dir))
  local cfg = {}
  for i, p in ipairs(paths) do
    cfg[#cfg + 1] = ('url = "%s%s"\noutput = "%s/%d.body"'):format(self.url, p, dir, i)
  end
  tmp.write(dir .. "/curl.cfg", table.concat(cfg, "\n") .. "\n")
  local cmd = ("curl -s --parallel --parallel-max %d -K %s/curl.cfg -w '%%{http_code} %%{filename_effective}\\n' " ..
    "> %s/codes 2>/dev/null"):format(concurrency, dir, dir)
  local function collect()
    local codes = {}
    for code, file in tmp.read(dir .. "/codes"):gmatch("(%d%d%d) [^\n]-/(%d+)%.body") do
      codes[tonumber(file)] = tonumber(code)
    end
    local out = {}
    for i = 1, #paths do
      local f = io.open(dir .. "/" .. i .. ".body", "rb")
      out[i] = { code = codes[i], body = f and f:read("a") or nil }
      if f then f:close() end
    end
    return out
  end
  if background then
    assert(sh("(" .. cmd .. "; touch " .. dir .. "/done) &"))
    return function()
      for _ = 1, 1200 do
        local f = io.open(dir .. "/done")
        if f then f:close() return collect() end
        socket.sleep(0.05)
      end
      error("load did not finish")
    end
  end
  sh(cmd)
  return collect()
end

-- Graceful reload (SIGHUP): new workers start, old ones finish and exit.
function Nginx:reload() assert(sh("kill -HUP " .. self.pid)) end

-- Graceful quit (SIGQUIT), waiting until the master is gone.
function Nginx:stop()
  if not self.pid then return end
  sh("kill -QUIT " .. self.pid .. " 2>/dev/null")
  for _ = 1, 400 do
    if not alive(self.pid) then break end
    socket.sleep(0.025)
  end
  if alive(self.pid) then sh("kill -KILL " .. self.pid) end
  self.pid = nil
end

function Nginx:error_log() return tmp.read(self.prefix .. "/error.log") end

function Nginx:cleanup() tmp.rm(self.prefix) end

return M
