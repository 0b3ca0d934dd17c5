-- bench/openresty_bare.lua — the floor of bench/openresty_load.lua: a content
-- handler that does what any proxy to the provider must do and nothing more.
-- It sends the very request body the example handler sent (captured by the
-- bench and kept in the shared dict bench_bare, key "body") to the provider
-- at GENAUDIT_BASE_URL over a raw cosocket (keepalive pool), reads the
-- answer (Content-Length framing, as the instant provider sends it), decodes
-- the JSON and answers {"content": ...}. No templates, no rules, no store.
-- Answers 500 with a one-line reason when the body was not set or the
-- provider call failed.
local cjson = require("cjson.safe")

local body = ngx.shared.bench_bare:get("body")
local base = os.getenv("GENAUDIT_BASE_URL") or ""
local host, port = base:match("^http://([^:/]+):(%d+)")
local function fail(msg)
  ngx.status = 500
  ngx.say(msg)
end
if not body or not host then return fail("bare: no request body captured or no http:// GENAUDIT_BASE_URL") end

local sock = ngx.socket.tcp()
sock:settimeouts(10000, 60000, 60000)
local ok, err = sock:connect(host, tonumber(port))
if not ok then return fail("bare: connect: " .. tostring(err)) end
ok, err = sock:send{ "POST /v1/chat/completions HTTP/1.1\r\nHost: ", host, ":", port,
  "\r\nUser-Agent: bare/1\r\nContent-Type: application/json\r\nAuthorization: Bearer ",
  os.getenv("GENAUDIT_API_KEY") or "", "\r\nContent-Length: ", #body, "\r\nConnection: keep-alive\r\n\r\n", body }
if not ok then return fail("bare: send: " .. tostring(err)) end
local line
line, err = sock:receive("*l")
if not line then return fail("bare: receive: " .. tostring(err)) end
local status = tonumber(line:match("^HTTP/%d%.%d (%d%d%d)"))
local length, close
while true do
  local h, herr = sock:receive("*l")
  if not h then return fail("bare: headers: " .. tostring(herr)) end
  if h == "" then break end
  local name, value = h:match("^([^:]+):%s*(.-)%s*$")
  name = name and name:lower()
  if name == "content-length" then length = tonumber(value) end
  if name == "connection" and value:lower() == "close" then close = true end
end
if status ~= 200 or not length then return fail("bare: provider answered " .. line) end
local data
data, err = sock:receive(length)
if not data then return fail("bare: body: " .. tostring(err)) end
if close then sock:close() else sock:setkeepalive(60000, 64) end
local doc = cjson.decode(data)
local content = doc and doc.choices and doc.choices[1] and doc.choices[1].message and doc.choices[1].message.content
if type(content) ~= "string" then return fail("bare: no content in the provider's answer") end
ngx.header["Content-Type"] = "application/json"
ngx.say(cjson.encode{ content = content })
