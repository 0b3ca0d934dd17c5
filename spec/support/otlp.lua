-- spec/support/otlp.lua
-- Owns: decoding captured OTLP/HTTP JSON export bodies with the official
-- opentelemetry-proto definitions, for the specs: tools/otlp-proto.sh
-- installs (once, into build/node) protobufjs and the .proto files, and
-- tools/otlp_decode.js checks and decodes (see its header for the output).
--
--   local otlp = require("spec.support.otlp")
--   otlp.dir()                -- the node dir; raises (the spec fails) when it cannot be installed
--   otlp.decode(bodies)       -- bodies: http_server's srv:bodies(); each must be POST /v1/traces
--   otlp.run(cmd)             -- stdout of a shell command; raises with its output when it fails
local json = require("genaudit.json")
local tmp = require("spec.support.tmp")

local M = {}

function M.run(cmd)
  local out = os.tmpname()
  local ok = os.execute(cmd .. " >" .. out .. " 2>&1")
  local text = tmp.read(out) or ""
  os.remove(out)
  if ok ~= true and ok ~= 0 then error(cmd .. " failed: " .. text, 2) end
  return text
end

local node_dir
function M.dir()
  if not node_dir then node_dir = M.run("env -u LD_PRELOAD sh tools/otlp-proto.sh"):match("([^\n]+)\n?$") end
  return node_dir
end

function M.decode(bodies)
  local dir = tmp.dir()
  local files = {}
  for i, b in ipairs(bodies) do
    if b.method ~= "POST" or b.target ~= "/v1/traces" then
      error(("collector got %s %s, POST /v1/traces expected"):format(b.method, b.target), 2)
    end
    files[i] = dir .. "/body" .. i .. ".json"
    tmp.write(files[i], b.body)
  end
  -- node runs without the sanitizer a check run preloads (its V8 leaks are not genaudit's)
  local out = M.run("env -u LD_PRELOAD node tools/otlp_decode.js " .. M.dir() .. " " .. table.concat(files, " "))
  tmp.rm(dir)
  return assert(json.decode(out))
end

-- The generation span (the one with genaudit.snapshot.id) and the call
-- spans, these in start order.
function M.split(spans)
  local gen, calls = nil, {}
  for _, s in ipairs(spans) do
    if s.attributes["genaudit.snapshot.id"] then gen = s else calls[#calls + 1] = s end
  end
  table.sort(calls, function(a, b) return a.startTimeUnixNano < b.startTimeUnixNano end)
  return gen, calls
end

return M
