-- examples/openresty/handler.lua — content handler: one audited generation
-- per request. Parameters come from the query string or a JSON body:
--   org_id, user_id, platform, template_id, tone_override, facts (JSON body),
--   business_name, business_tone, product. Answers JSON.
-- stream=1 (query or body): the text goes to the client as the model writes
-- it (text/plain, openresty.client_writer()); a repair's text follows a
-- record RS {"repair":N} LF, and the answer ends with a record RS {...} LF
-- (RS = "\030", RFC 7464) holding what the JSON answer holds but the content,
-- or error/code/snapshot_id. A failure before the first piece is answered
-- as without stream=1 (status and JSON).
local cjson = require("cjson.safe")
local openresty = require("genaudit.openresty")

local args = ngx.req.get_uri_args()
local body = {}
if ngx.req.get_method() == "POST" then
  ngx.req.read_body()
  body = cjson.decode(ngx.req.get_body_data() or "{}") or {}
end
local function arg(name, default) return body[name] or args[name] or default end

local ctx = {
  org_id = arg("org_id", "1"), user_id = arg("user_id", "1"),
  platform = arg("platform", "linkedin"), template_id = arg("template_id", "launch-post"),
  business = { name = arg("business_name", "Acme"), tone = arg("business_tone", "formal") },
  knowledge = body.knowledge or { "Customers mention reliability most." },
  facts = body.facts or { product = arg("product", "the Anvil 2"), topic = "maintenance", event = "the open house",
                          date = "April 12", place = "Lyon", customer = "Dana's bakery" },
  tone_override = arg("tone_override"),
  params = { temperature = 0.7, max_tokens = 400 },
}

-- Errors a client may read: its own bad input and what the provider said.
-- Everything else (store, template and rule scripts, startup) can name server
-- paths: it goes to error.log and the client gets a generic answer.
local CLIENT_ERRORS = {
  INVALID = 400, PROVIDER_ERROR = 502, PROVIDER_REJECTED = 502, RATE_LIMITED = 502, BAD_RESPONSE = 502,
  REPAIR_EXHAUSTED = 502, TIMEOUT = 502, CONNECT = 502, TLS = 502, HTTP = 502, TOO_LARGE = 502,
}

local RS = "\030" -- starts each record of a streamed answer; cjson escapes it, so never inside one

-- stream=1: each text piece straight to the client; a repair call's text
-- announced by a record first.
local streaming = tostring(arg("stream", "")) == "1"
local opts
if streaming then
  ngx.header["Content-Type"] = "text/plain; charset=utf-8" -- sent with the first piece
  local write = openresty.client_writer()
  local repairs = 0
  opts = { on_chunk = function(text, info)
    if info.kind == "repair" and info.index == 1 then
      repairs = repairs + 1
      local ok, why = write(RS .. cjson.encode{ repair = repairs } .. "\n")
      if not ok then return ok, why end
    end
    return write(text) -- false, "client went away" aborts the generation
  end }
end

-- the caller's W3C trace context: with OpenTelemetry export on, the
-- generation's spans join its trace (README "OpenTelemetry export")
opts = opts or {}
opts.traceparent = ngx.var.http_traceparent

local result, err, code, snapshot_id = openresty.generate(ctx, opts)
local answer, status
if not result then
  if CLIENT_ERRORS[code] then
    status = CLIENT_ERRORS[code]
    answer = { error = err, code = code, snapshot_id = snapshot_id }
  else
    ngx.log(ngx.ERR, "genaudit: ", err)
    local unavailable = code == "UNAVAILABLE" or code == "NOT_READY"
    status = unavailable and 503 or 500
    answer = {
      error = unavailable and "the generation service is not available" or "internal error (see the server log)",
      code = unavailable and "UNAVAILABLE" or "INTERNAL", snapshot_id = snapshot_id,
    }
  end
else
  answer = {
    snapshot_id = result.snapshot_id, content = not streaming and result.content or nil,
    repairs = result.repair_metrics.repair_count, model = result.performance_metrics.model_identifier,
    total_latency_ms = result.performance_metrics.total_latency_ms,
    provider_latency_ms = result.performance_metrics.provider_latency_ms,
  }
end
if streaming and (result or ngx.headers_sent) then
  -- the text went out already (status 200 with it): the outcome is the last record
  ngx.print(RS, cjson.encode(answer), "\n")
  return
end
ngx.status = status or 200
ngx.header["Content-Type"] = "application/json"
ngx.say(cjson.encode(answer))
