-- examples/demo.lua — the main job on the embedded default: runs the example
-- pipeline (examples/templates, examples/rules) for a few dozen generations
-- into ./genaudit.db. `make demo` then prints the cost and repairs reports
-- with the CLI (bin/genaudit).
--
-- Provider: the local server (tools/local_provider.lua) unless GENAUDIT_API_KEY
-- or GENAUDIT_PROVIDER is set; then GENAUDIT_PROVIDER (openai|openrouter|
-- anthropic|gemini|azure|ollama|vllm, default openai), GENAUDIT_BASE_URL and
-- GENAUDIT_MODEL pick the real one (ollama and vllm need no key).
local genaudit = require("genaudit")

local db = arg and arg[1] or "genaudit.db"
local N = tonumber(os.getenv("GENAUDIT_DEMO_N") or "36")

local function provider()
  local key = os.getenv("GENAUDIT_API_KEY")
  local chosen = os.getenv("GENAUDIT_PROVIDER")
  if key == "" then key = nil end
  if key or (chosen and chosen ~= "") then
    local kind = (chosen and chosen ~= "") and chosen or "openai"
    local make = genaudit.providers[kind]
    if not make then error("unknown GENAUDIT_PROVIDER '" .. kind .. "'", 0) end
    local base_url = os.getenv("GENAUDIT_BASE_URL")
    return make{ api_key = key, base_url = base_url ~= "" and base_url or nil,
                 model = os.getenv("GENAUDIT_MODEL") or "gpt-4o-mini" }, nil
  end
  local srv = require("spec.support.provider").start{ api_key = "sk-local-demo" }
  print(("local provider listening on %s (set GENAUDIT_API_KEY to use a real one)"):format(srv.url))
  return genaudit.providers.openai{ base_url = srv.url, api_key = "sk-local-demo", model = "gpt-4o-mini" }, srv
end

local BUSINESSES = {
  { name = "Acme Anvils", tone = "formal" },
  { name = "Nimbus Coffee", tone = "warm" },
  { name = "Orbit Bikes", tone = "energetic" },
}
local JOBS = {
  { template_id = "launch-post", facts = { product = "the Anvil 2" } },
  { template_id = "launch-post", facts = { product = "a cold-brew subscription" } },
  { template_id = "weekly-tips", facts = { topic = "maintenance" } },
  { template_id = "event-invite", facts = { event = "the spring open house", date = "April 12", place = "Lyon" } },
  { template_id = "customer-story", facts = { customer = "Dana's bakery", result = "30% fewer returns" } },
}
local PLATFORMS = { "linkedin", "x", "instagram" }
local TONES = { nil, "playful", nil, "calm" }

local prov, srv = provider()
local store = assert(genaudit.open("sqlite:" .. db))
local pipeline = genaudit.pipeline{
  store = store, provider = prov, templates = "examples/templates", rules = "examples/rules",
  pricing = assert(genaudit.pricing.default()),
}

local ok_count, failed = 0, 0
for i = 1, N do
  local job = JOBS[(i - 1) % #JOBS + 1]
  local platform = PLATFORMS[(i - 1) % #PLATFORMS + 1]
  if job.template_id == "weekly-tips" and platform == "instagram" then platform = "linkedin" end
  local business = BUSINESSES[(i - 1) % #BUSINESSES + 1]
  local result, err, _, id = pipeline:generate{
    org_id = 100 + (i - 1) % #BUSINESSES, user_id = i % 5 + 1, platform = platform,
    template_id = job.template_id, business = business, facts = job.facts,
    knowledge = { business.name .. " was founded in 1998.", "Customers mention reliability most." },
    tone_override = TONES[(i - 1) % #TONES + 1], params = { temperature = 0.7, max_tokens = 400 },
  }
  if result then
    ok_count = ok_count + 1
  else
    failed = failed + 1
    print(("generation %d failed (snapshot %s): %s"):format(i, tostring(id), err))
  end
end
print(("%d generations: %d completed, %d failed -> %s"):format(N, ok_count, failed, db))

pipeline:close()
store:close()
if srv then srv:stop() end
