-- examples/openresty/handler.lua — content handler: one audited generation
-- per request. Parameters come from the query string or a JSON body:
--   org_id, user_id, platform, template_id, tone_override, facts (JSON body),
--   business_name, business_tone, product. Answers JSON.
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

local result, err, code, snapshot_id = openresty.generate(ctx)
ngx.header["Content-Type"] = "application/json"
if not result then
  ngx.status = code == "INVALID" and 400 or 502
  ngx.say(cjson.encode{ error = err, code = code, snapshot_id = snapshot_id })
  return
end
ngx.say(cjson.encode{
  snapshot_id = result.snapshot_id, content = result.content,
  repairs = result.repair_metrics.repair_count, model = result.performance_metrics.model_identifier,
  total_latency_ms = result.performance_metrics.total_latency_ms,
  provider_latency_ms = result.performance_metrics.provider_latency_ms,
})
