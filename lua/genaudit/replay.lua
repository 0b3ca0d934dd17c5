-- genaudit.replay — the seed's Auditability Test: re-sends a stored
-- snapshot's final system and user prompts, with its stored request
-- parameters, to a provider and compares the new output with the stored one.
-- The original row is never modified; the replay may be recorded as its own
-- snapshot, linked to the original through replay_of.
local json = require("genaudit.json")
local client_mod = require("genaudit.client")
local store_mod = require("genaudit.store")

local M = {}

local function word_counts(text)
  local counts, n = {}, 0
  for w in tostring(text or ""):lower():gmatch("[%w']+") do
    counts[w] = (counts[w] or 0) + 1
    n = n + 1
  end
  return counts, n
end

-- replay.similarity(a, b) -> 0..1: cosine similarity of the two texts' word
-- counts (1 = same words in the same proportions; 0 = no word in common).
function M.similarity(a, b)
  local ca, na = word_counts(a)
  local cb, nb = word_counts(b)
  if na == 0 and nb == 0 then return 1 end
  if na == 0 or nb == 0 then return 0 end
  local dot, sa, sb = 0, 0, 0
  for w, x in pairs(ca) do
    sa = sa + x * x
    if cb[w] then dot = dot + x * cb[w] end
  end
  for _, y in pairs(cb) do sb = sb + y * y end
  return dot / math.sqrt(sa * sb)
end

-- replay.run(store, id, { provider, pricing, transport, record = true,
--   retries, backoff_ms }) -> result | nil, err, code, replay_snapshot_id
-- result = { original = <stored row>, content = <new output>, similarity,
--            snapshot_id = <the replay's own snapshot, when recorded>,
--            token_metrics, performance_metrics }
function M.run(store, id, opts)
  if type(store) ~= "table" or type(store.query) ~= "function" then
    error("bad argument #1 to 'replay' (store expected, got " .. type(store) .. ")", 2)
  end
  if type(id) ~= "string" then error("bad argument #2 to 'replay' (string expected, got " .. type(id) .. ")", 2) end
  if type(opts) ~= "table" then error("bad argument #3 to 'replay' (table expected, got " .. type(opts) .. ")", 2) end
  local rows, err, code = store:query("SELECT * FROM generation_snapshots WHERE id = ?", { id })
  if not rows then return nil, err, code end
  local original = rows[1]
  if not original then return nil, "NOT_FOUND: no snapshot with id '" .. id .. "'", "NOT_FOUND" end
  -- request parameters go back as sent: integers stay integers
  local params = original.request_params and json.decode(original.request_params) or {}

  local client = client_mod.new(opts)
  local run = client:run()
  local messages = {
    { role = "system", content = original.final_system_prompt or "" },
    { role = "user", content = original.final_user_prompt or "" },
  }
  local text
  text, err, code = client:complete(run, "replay", messages, params)
  local total_ms = run.sw:stop()
  client:close()
  local result = {
    original = original, content = text,
    similarity = text and M.similarity(original.content, text) or nil,
    token_metrics = client:token_metrics(run),
    performance_metrics = client:performance_metrics(run, total_ms),
  }
  if opts.record ~= false then
    local sid, perr, pcode = store_mod.persister(store):persist_generation{
      org_id = original.org_id, user_id = original.user_id, platform = original.platform,
      template_id = original.template_id, template_version = original.template_version,
      final_system_prompt = original.final_system_prompt or "", final_user_prompt = original.final_user_prompt or "",
      token_usage = result.token_metrics, performance = result.performance_metrics,
      repair_info = { repair_count = 0, repair_types = {}, repair_log = {}, similarity = result.similarity },
      request_params = next(params) and params or nil,
      -- a failed replay keeps what an answer without usage held (run.content)
      content = text or run.content, status = text and "completed" or "failed", error = not text and err or nil,
      replay_of = id,
    }
    if not sid then return nil, perr, pcode end
    result.snapshot_id = sid
  end
  if not text then return nil, err, code, result.snapshot_id end
  return result
end

return M
