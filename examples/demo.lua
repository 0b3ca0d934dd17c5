-- examples/demo.lua — the main job on the embedded default: runs the example
-- pipeline (examples/templates, examples/rules) for a few dozen generations
-- into ./genaudit.db. `make demo` then prints the cost and repairs reports
-- with the CLI (bin/genaudit).
--
-- Provider: the local server (tools/local_provider.lua) unless GENAUDIT_PROVIDER
-- or GENAUDIT_API_KEY is set; then GENAUDIT_PROVIDER (openai|openrouter|
-- anthropic|gemini|azure|ollama|vllm, default openai), GENAUDIT_BASE_URL and GENAUDIT_MODEL
-- pick the real one (ollama and vllm need no key).
-- Store: appends to an existing file; DEMO_FRESH=1 starts a fresh one.
-- DEMO_STREAM=1 streams every model call and prints its text as it arrives
-- (README "Streaming"). Exits 1
-- when every generation failed, 2 (one line) for a bad provider setting.
local genaudit = require("genaudit")

local db = arg and arg[1] or "genaudit.db"
local N = tonumber(os.getenv("GENAUDIT_DEMO_N") or "36")
local KEYLESS = { ollama = true, vllm = true }

local function env(name)
  local v = os.getenv(name)
  if v == "" then return nil end
  return v
end

local function usage_error(msg)
  io.stderr:write("demo: ", msg, "\n")
  os.exit(2)
end

local function provider()
  local key, kind = env("GENAUDIT_API_KEY"), env("GENAUDIT_PROVIDER")
  if key or kind then
    kind = kind or "openai"
    local make = rawget(genaudit.providers, kind)
    if type(make) ~= "function" then
      local known = {}
      for name, v in pairs(genaudit.providers) do
        if type(v) == "function" then known[#known + 1] = name end
      end
      table.sort(known)
      usage_error("unknown GENAUDIT_PROVIDER '" .. kind .. "' (one of: " .. table.concat(known, ", ") .. ")")
    end
    if not key and not KEYLESS[kind] then
      usage_error("GENAUDIT_PROVIDER=" .. kind .. " needs GENAUDIT_API_KEY (ollama and vllm run without one)")
    end
    print(("provider: %s%s"):format(kind, env("GENAUDIT_BASE_URL") and (" at " .. env("GENAUDIT_BASE_URL")) or ""))
    return make{ api_key = key, base_url = env("GENAUDIT_BASE_URL"), model = env("GENAUDIT_MODEL") or "gpt-4o-mini" },
      nil
  end
  local srv = require("spec.support.provider").start{ api_key = "sk-local-demo" }
  print(("local provider listening on %s (set GENAUDIT_PROVIDER or GENAUDIT_API_KEY to use a real one)")
    :format(srv.url))
  return genaudit.providers.openai{ base_url = srv.url, api_key = "sk-local-demo", model = "gpt-4o-mini" }, srv
end

-- Says whether the run appends to an existing store or starts a fresh one.
local function open_store()
  local fresh = os.getenv("DEMO_FRESH") == "1"
  if fresh then
    for _, suffix in ipairs({ "", "-wal", "-shm" }) do os.remove(db .. suffix) end
  end
  local f = io.open(db, "rb")
  if f then f:close() end
  local store = assert(genaudit.open("sqlite:" .. db))
  if f then
    local n = assert(store:query("SELECT count(*) AS n FROM generation_snapshots"))[1].n
    print(("appending to %s (%d snapshots already there; DEMO_FRESH=1 starts fresh)"):format(db, n))
  else
    print(("starting a fresh %s%s"):format(db, fresh and " (DEMO_FRESH=1)" or ""))
  end
  return store
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
local store = open_store()
local pipeline = genaudit.pipeline{
  store = store, provider = prov, templates = "examples/templates", rules = "examples/rules",
  pricing = assert(genaudit.pricing.default()),
}

-- DEMO_STREAM=1: each text delta is printed as it arrives (a repair's under its own heading)
local STREAM = os.getenv("DEMO_STREAM") == "1"
local function stream_opts(i)
  if not STREAM then return nil end
  local kind
  return { on_chunk = function(text, info)
    if info.kind ~= kind then
      kind = info.kind
      io.write(("\n[%d %s] "):format(i, kind))
    end
    io.write(text)
    io.flush()
  end }
end

local ok_count, failed, unpriced = 0, 0, {}
for i = 1, N do
  local job = JOBS[(i - 1) % #JOBS + 1]
  local platform = PLATFORMS[(i - 1) % #PLATFORMS + 1]
  if job.template_id == "weekly-tips" and platform == "instagram" then platform = "linkedin" end
  local business = BUSINESSES[(i - 1) % #BUSINESSES + 1]
  local result, err, _, id = pipeline:generate({
    org_id = 100 + (i - 1) % #BUSINESSES, user_id = i % 5 + 1, platform = platform,
    template_id = job.template_id, business = business, facts = job.facts,
    knowledge = { business.name .. " was founded in 1998.", "Customers mention reliability most." },
    tone_override = TONES[(i - 1) % #TONES + 1], params = { temperature = 0.7, max_tokens = 400 },
  }, stream_opts(i))
  if STREAM then
    io.write("\n")
    if result then
      print(("[%d] time to first token %s ms, %s ms in all"):format(i,
        tostring(result.performance_metrics.time_to_first_token_ms), result.performance_metrics.total_latency_ms))
    end
  end
  if result then
    ok_count = ok_count + 1
    if result.token_metrics.estimated_cost == nil then
      unpriced[tostring(result.performance_metrics.model_identifier)] = true
    end
  else
    failed = failed + 1
    print(("generation %d failed (snapshot %s): %s"):format(i, tostring(id), err))
  end
end
print(("%d generations: %d completed, %d failed -> %s"):format(N, ok_count, failed, db))
for model in pairs(unpriced) do
  io.stderr:write("demo: warning: model '", model, "' has no price in ", (genaudit.pricing.default_path()),
    "; its estimated cost is stored as null\n")
end

pipeline:close()
store:close()
if srv then srv:stop() end
if N > 0 and ok_count == 0 then
  io.stderr:write("demo: every generation failed\n")
  os.exit(1)
end
