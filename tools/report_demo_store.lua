-- tools/report_demo_store.lua — fills a fresh SQLite store with 14 days of
-- demo-like generations (the example templates and rule slugs, two priced
-- models and a local one without a price, repairs, a rule that sometimes
-- raises or times out, a few failed calls), persisted through the store's
-- persist_generation with created_at spread over the days — what
-- tools/report-screenshot.sh renders for docs/report.png. Deterministic: the
-- same rows every run, relative to today.
--
--   lua5.4 tools/report_demo_store.lua PATH.db
local genaudit = require("genaudit")

local path = assert(arg[1], "usage: report_demo_store.lua PATH.db")
for _, suffix in ipairs({ "", "-wal", "-shm" }) do os.remove(path .. suffix) end
local store = assert(genaudit.open("sqlite:" .. path))
local persister = genaudit.persister(store)

local state = 20261204 -- Park-Miller, as spec/support/util.lua: the same numbers on every engine
local function int(lo, hi)
  state = (state * 48271) % 2147483647
  return lo + state % (hi - lo + 1)
end

local TEMPLATES = { "launch-post", "customer-story", "event-invite", "weekly-tips" }
-- per template: posts per day, repairs weight
local WEIGHT = { ["launch-post"] = { 6, 3 }, ["customer-story"] = { 4, 2 }, ["event-invite"] = { 3, 1 },
                 ["weekly-tips"] = { 2, 1 } }
local MODELS = {
  { name = "gpt-4o-mini-2024-07-18", usd_in = 0.15e-6, usd_out = 0.6e-6, ms = 900 },
  { name = "claude-3-5-haiku-20241022", usd_in = 0.8e-6, usd_out = 4e-6, ms = 1400 },
  { name = "local-llama-3.1-8b", ms = 2600 }, -- no price: unpriced
}
local REPAIRS = { "length_exceeded", "missing_hashtag", "banned_word" }
local RULES = { "banned_words", "hashtag", "length" }

local now = os.time()
local n = 0
for day = 13, 0, -1 do
  for _, t in ipairs(TEMPLATES) do
    for _ = 1, WEIGHT[t][1] + int(0, 2) do
      n = n + 1
      local m = MODELS[int(1, 10) <= 5 and 1 or int(1, 10) <= 7 and 2 or 3]
      local failed = int(1, 40) == 1
      local pt, ct = int(300, 1800), int(80, 400)
      local provider_ms = m.ms * (0.5 + int(0, 100) / 100) + int(0, 9) / 10
      local repairs = failed and 0 or math.max(0, int(0, 3 + WEIGHT[t][2]) - 2)
      local types = {}
      for k = 1, math.min(repairs, 2) do types[k] = REPAIRS[(n + k) % #REPAIRS + 1] end
      local rules = {}
      for i, slug in ipairs(RULES) do
        rules[i] = { slug = slug, runs = repairs + 1, fired = i == 3 and repairs or 0,
                     errors = (slug == "hashtag" and int(1, 12) == 1) and 1 or 0,
                     timeouts = (slug == "length" and int(1, 30) == 1) and 1 or 0 }
      end
      local cost = (not failed and m.usd_in) and (pt * m.usd_in + ct * m.usd_out) * (repairs + 1) or nil
      assert(persister:persist_generation{
        org_id = "demo", user_id = "u" .. n % 5, platform = ({ "linkedin", "instagram", "x" })[n % 3 + 1],
        template_id = t, template_version = "1",
        created_at = os.date("!%Y-%m-%d %H:%M:%S", now - day * 86400 - int(0, 80000)) .. ".000",
        final_system_prompt = "You write for Acme Anvils.", final_user_prompt = "Post " .. n,
        token_usage = { prompt_tokens = pt, completion_tokens = ct, estimated_cost = cost,
                        cost_source = cost and "local_estimate" or (failed and "failed_before_usage" or "unpriced") },
        performance = { total_latency_ms = provider_ms * (repairs + 1) + int(2, 40), provider_latency_ms = provider_ms
          * (repairs + 1), model_identifier = m.name },
        repair_info = { repair_count = repairs, repair_types = types, initial_validation_score = int(55, 100),
                        rules = rules },
        status = failed and "failed" or "completed", error = failed and "PROVIDER_ERROR: HTTP 503" or nil,
        content = not failed and ("Post " .. n .. " #acme") or nil,
      })
    end
  end
end
store:close()
print(string.format("%d generations over 14 days -> %s", n, path))
