-- genaudit.replay — the seed's Auditability Test, comparing like with like:
-- re-sends a stored snapshot's initial request (its final system and user
-- prompts, with its stored request parameters) and compares the new first
-- draft with the stored first draft (repair_metrics.drafts[1].text; for a row
-- written before drafts were kept, the content when it was never repaired,
-- else "unknown" — never a number computed against the repaired text). With
-- `full`, today's rules and repair policy judge the new draft and repair it
-- (the real validator, repair calls through the same client), and the final
-- text is compared with the stored final content.
-- The original row is never modified; the replay may be recorded as its own
-- snapshot, linked to the original through replay_of.
local json = require("genaudit.json")
local client_mod = require("genaudit.client")
local store_mod = require("genaudit.store")
local dto = require("genaudit.dto")
local validator_mod = require("genaudit.validator")
local report = require("genaudit.report")
local core = require("genaudit.core")
local redact_mod = require("genaudit.redact")

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

local function decode_doc(text)
  if type(text) ~= "string" then return {} end
  local doc = json.decode(text)
  return type(doc) == "table" and doc or {}
end

local function num(v) return type(v) == "number" and v or nil end

-- replay.first_draft(row) -> text, source | nil, reason: the stored first
-- draft of a snapshot row. source: "repair_metrics.drafts[1]" or "content"
-- (a row without drafts that was never repaired); reason says why it is not
-- known (a repaired row written before drafts were kept).
function M.first_draft(row)
  local rm = decode_doc(row.repair_metrics)
  local drafts = dto.stored_drafts(row)
  if drafts and drafts[1] and type(drafts[1].text) == "string" then
    return drafts[1].text, type(row.drafts) == "string" and "drafts[1]" or "repair_metrics.drafts[1]"
  end
  if drafts and drafts[1] and row.purged_at ~= nil then return nil, "the original's drafts were purged" end
  local repairs = num(row.repair_count) or num(rm.repair_count)
  if repairs == 0 then
    if type(row.content) == "string" then return row.content, "content" end
    return nil, "the original stores no drafts and no content"
  end
  if repairs == nil then return nil, "the original stores no drafts and no repair_count" end
  return nil, ("the original was repaired %d time(s) before drafts were stored: its first draft is not kept"):format(
    repairs)
end

local function call_of(calls, kind)
  if type(calls) ~= "table" then return nil end
  for _, c in ipairs(calls) do
    if type(c) == "table" and c.kind == kind then return c end
  end
  return nil
end

local function diff(new, old)
  if type(new) ~= "number" or type(old) ~= "number" then return nil end
  return new - old
end

-- The deltas (new minus stored) of tokens, cost (USD), total and provider
-- latency (ms), like with like: with `full`, the whole replay against the
-- whole original generation; else the replay's one call against the
-- original's initial call (and the total latency only when the original had
-- no repairs, as its total covers them). A value is nil (unknown) when
-- either side is; `unknown` lists those names.
local function deltas(original, tm, pm, full)
  local d = { basis = full and "generation" or "initial_call", unknown = {} }
  if full then
    d.tokens = diff(tm.total_tokens, num(original.total_tokens))
    d.cost_usd = diff(tm.estimated_cost, num(original.estimated_cost))
    d.total_latency_ms = diff(pm.total_latency_ms, num(original.total_latency_ms))
    d.provider_latency_ms = diff(pm.provider_latency_ms, num(original.provider_latency_ms))
  else
    local stm, spm = decode_doc(original.token_metrics), decode_doc(original.performance_metrics)
    -- the original's first call: "initial" for a generation, "replay" for a replay
    local old_call = call_of(stm.calls, "initial") or call_of(stm.calls, "replay") or {}
    local new_call = call_of(tm.calls, "replay") or {}
    d.tokens = diff(num(new_call.total_tokens), num(old_call.total_tokens))
    d.cost_usd = diff(num(new_call.cost), num(old_call.cost))
    local old_http = call_of(spm.calls, "initial") or call_of(spm.calls, "replay") or {}
    local new_http = call_of(pm.calls, "replay") or {}
    d.provider_latency_ms = diff(num(new_http.wait_ms), num(old_http.wait_ms))
    if num(original.repair_count) == 0 then
      d.total_latency_ms = diff(pm.total_latency_ms, num(original.total_latency_ms))
    end
  end
  for _, k in ipairs({ "tokens", "cost_usd", "total_latency_ms", "provider_latency_ms" }) do
    if d[k] == nil then d.unknown[#d.unknown + 1] = k end
  end
  return d
end

-- Whether the rule set changed since the original: true/false, or
-- "unknown" with the reason (no rules directory, a validator without
-- rule_set(), an original without repair_metrics.scripts.rule_set_digest).
local function rule_set_change(original, validator)
  local rm = decode_doc(original.repair_metrics)
  local stored = type(rm.scripts) == "table" and rm.scripts.rule_set_digest or nil
  if type(stored) ~= "string" then stored = nil end
  local out = { stored_rule_set_digest = stored }
  if not validator then
    out.changed, out.reason = "unknown", "no rules directory given"
  elseif type(validator.rule_set) ~= "function" then
    out.changed, out.reason = "unknown", "this genaudit has no validator:rule_set()"
  else
    local rs = validator:rule_set()
    local current = type(rs) == "table" and type(rs.rule_set_digest) == "string" and rs.rule_set_digest or nil
    out.rule_set_digest = current
    if not current then
      out.changed, out.reason = "unknown", "the rules directory gave no rule-set digest"
    elseif not stored then
      out.changed, out.reason = "unknown", "the original records no rule-set digest"
    else
      out.changed = current ~= stored
    end
  end
  return out
end

-- The GenerationContext the rules see: what the row stores (ids, platform,
-- template, request parameters). business, knowledge and facts are not
-- stored on a snapshot, so rules get them empty.
local function context_of(original, params)
  return dto.GenerationContext{
    org_id = original.org_id, user_id = original.user_id, platform = original.platform,
    template_id = original.template_id, params = params,
  }
end

-- The rule set that judged a full replay's drafts (repair_metrics.scripts,
-- without a template: none ran, the stored prompts were re-sent), once the
-- validator pins it (rr.scripts, rr.script_sources): every source is put in
-- the scripts table before the row names its digest; one the store could
-- not take is listed in `unstored`, as the pipeline does.
local function pinned_scripts(store, rr)
  if type(rr) ~= "table" or type(rr.scripts) ~= "table" then return nil end
  local text_safe = require("genaudit.pipeline").text_safe
  local rec = { rules = rr.scripts.rules, policy = rr.scripts.policy, rule_set_digest = rr.scripts.rule_set_digest }
  local unstored = {}
  for _, src in ipairs(rr.script_sources or {}) do
    local digest, err
    if type(store.put_script) == "function" then
      digest, err = store:put_script(text_safe(src.path), src.source)
    else
      err = "SCRIPTS: the store has no put_script"
    end
    if not digest then unstored[#unstored + 1] = { digest = src.digest, error = text_safe(tostring(err)) } end
  end
  if #unstored > 0 then rec.unstored = unstored end
  return rec
end

local function config_error(msg) return nil, "CONFIG: " .. msg, "CONFIG" end

local function check_opts(opts)
  local p = opts.provider
  if type(p) ~= "table" or type(p.request) ~= "function" then
    error("bad argument #3 to 'replay' (provider expected)", 3)
  end
  if p.needs_key and not p.has_key then
    return config_error(("the %s provider needs an API key and has none (nothing was sent or stored)"):format(
      tostring(p.name)))
  end
  if opts.full and type(opts.rules) ~= "string" then
    return config_error("a full replay needs opts.rules, the rules directory (nothing was sent or stored)")
  end
  if opts.rules ~= nil then
    if type(opts.rules) ~= "string" then return config_error("opts.rules must be a directory path") end
    local listed, lerr = core.listdir(opts.rules)
    if not listed then return config_error("rules directory: " .. tostring(lerr):gsub("^IO: ", "")) end
  end
  return true
end

-- replay.run(store, id, { provider, pricing, transport, record = true,
--   full = false, rules = dir, sandbox, script_timeout_ms, retries,
--   backoff_ms }) -> result | nil, err, code, replay_snapshot_id
-- result = { original = <stored row>, content = <new final text>,
--   first_draft = <new first draft>, stored_first_draft, compared_with,
--   similarity_initial (nil = unknown, see similarity_unknown), similarity
--   (the same), similarity_final (full only), full, repair_metrics (full),
--   rule_set = { changed = true|false|"unknown", reason, rule_set_digest,
--   stored_rule_set_digest }, deltas = { basis, tokens, cost_usd,
--   total_latency_ms, provider_latency_ms, unknown = {names} },
--   snapshot_id = <the replay's own snapshot, when recorded>, token_metrics,
--   performance_metrics }
-- A provider that needs an API key and has none, or full without rules:
-- nil, "CONFIG: ...", "CONFIG", before anything is sent or stored.
function M.run(store, id, opts)
  if type(store) ~= "table" or type(store.query) ~= "function" then
    error("bad argument #1 to 'replay' (store expected, got " .. type(store) .. ")", 2)
  end
  if type(id) ~= "string" then error("bad argument #2 to 'replay' (string expected, got " .. type(id) .. ")", 2) end
  if type(opts) ~= "table" then error("bad argument #3 to 'replay' (table expected, got " .. type(opts) .. ")", 2) end
  local ok, err, code = check_opts(opts)
  if not ok then return nil, err, code end
  local rows
  rows, err, code = store:query("SELECT * FROM generation_snapshots WHERE id = ?", { id })
  if not rows then return nil, err, code end
  local original = rows[1]
  if not original then return nil, "NOT_FOUND: no snapshot with id '" .. id .. "'", "NOT_FOUND" end
  if original.purged_at ~= nil then
    return nil, "PURGED: snapshot '" .. id .. "' was purged (" .. original.purged_at .. " UTC): its prompts are gone",
      "PURGED"
  end
  -- a replay is stored like a generation: redacted by the same script (the
  -- rules directory's redact.lua, or opts.redact); an original that was
  -- stored redacted is not replayed into an unredacted row
  local redactor
  local rpath = opts.redact or (opts.rules and (opts.rules .. "/" .. redact_mod.FILE))
  if opts.record ~= false and rpath and core.file_version(rpath) then
    redactor = redact_mod.new{ path = rpath, sandbox = opts.sandbox, script_timeout_ms = opts.script_timeout_ms }
  end
  if opts.record ~= false and not redactor and decode_doc(original.repair_metrics).redaction ~= nil then
    return nil, "CONFIG: snapshot '" .. id .. "' was stored redacted: give the rules directory with its redact.lua"
      .. " (--rules DIR) so the replay is redacted too, or do not record it (--no-record)", "CONFIG"
  end
  -- request parameters go back as sent: integers stay integers
  local params = original.request_params and json.decode(original.request_params) or {}
  if type(params) ~= "table" then params = {} end
  local validator = opts.rules and validator_mod.new{ rules = opts.rules, sandbox = opts.sandbox,
                                                      script_timeout_ms = opts.script_timeout_ms }
  local ctx
  if opts.full then
    ctx, err, code = context_of(original, params)
    if not ctx then return nil, err, code end
  end

  local client = client_mod.new(opts)
  local run = client:run()
  local messages = {
    { role = "system", content = original.final_system_prompt or "" },
    { role = "user", content = original.final_user_prompt or "" },
  }
  local draft, final, rr
  draft, err, code = client:complete(run, "replay", messages, params)
  final = draft
  if draft and opts.full then
    -- today's rules and policy, through the real validator; each repair is a
    -- metered call of this replay, as in a generation
    rr, final = validator:validate_and_repair(draft, ctx, function(feedback, previous)
      local conversation = {
        messages[1], messages[2],
        { role = "assistant", content = previous }, { role = "user", content = feedback },
      }
      local text, e, c = client:complete(run, "repair", conversation, params)
      if text then run.content = text end
      return text, e, c
    end)
    if rr.stop_reason == "repair_failed" then err, code, final = rr.error, rr.error_code, nil end
  end
  local total_ms = run.sw:stop()
  client:close()

  local stored_first, source = M.first_draft(original)
  local result = {
    original = original, content = final, first_draft = draft, full = opts.full and true or false,
    stored_first_draft = stored_first, compared_with = stored_first and source or nil,
    similarity_unknown = not stored_first and source or nil,
    token_metrics = client:token_metrics(run),
    performance_metrics = client:performance_metrics(run, total_ms),
    rule_set = rule_set_change(original, validator),
    repair_metrics = rr,
  }
  if draft and stored_first then result.similarity_initial = M.similarity(stored_first, draft) end
  result.similarity = result.similarity_initial
  if final and opts.full then result.similarity_final = M.similarity(original.content, final) end
  result.deltas = deltas(original, result.token_metrics, result.performance_metrics, opts.full)

  if opts.record ~= false then
    local null = json.null
    local rs = result.rule_set
    local replay_doc = {
      of = id, kind = opts.full and "full" or "initial",
      compared_with = result.compared_with or null,
      similarity_initial = result.similarity_initial or null,
      similarity_unknown = result.similarity_unknown,
      similarity_final = opts.full and (result.similarity_final or null) or nil,
      rule_set_changed = rs.changed, rule_set_unknown = rs.reason,
      rule_set_digest = rs.rule_set_digest, stored_rule_set_digest = rs.stored_rule_set_digest,
    }
    local info
    local texts, meta
    if rr then
      texts, meta = dto.split_drafts(rr.drafts)
    else
      texts, meta = dto.split_drafts(draft and { { text = draft } })
    end
    if rr then
      info = dto.repair_info(rr, meta, pinned_scripts(store, rr))
    else
      info = { repair_count = 0, repair_types = {}, repair_log = {}, drafts = meta }
    end
    info.replay = replay_doc
    local row = {
      org_id = original.org_id, user_id = original.user_id, platform = original.platform,
      template_id = original.template_id, template_version = original.template_version,
      final_system_prompt = original.final_system_prompt or "", final_user_prompt = original.final_user_prompt or "",
      token_usage = result.token_metrics, performance = result.performance_metrics,
      repair_info = info,
      request_params = next(params) and params or nil,
      drafts = texts,
      -- a failed replay keeps what an answer without usage held (run.content)
      content = final or run.content, status = final and "completed" or "failed", error = not final and err or nil,
      replay_of = id,
    }
    local red = redactor and redactor:apply(row, ctx or { org_id = original.org_id, user_id = original.user_id,
      platform = original.platform, template_id = original.template_id })
    if red then
      info.redaction = { script = red.script, digest = red.digest, changed = red.changed, errors = red.errors }
      if red.source and type(store.put_script) == "function" then
        store:put_script(red.source.path, red.source.source)
      end
    end
    local sid, perr, pcode = store_mod.persister(store):persist_generation(row)
    if not sid then return nil, perr, pcode end
    result.snapshot_id = sid
  end
  if not final then return nil, err, code, result.snapshot_id end
  return result
end

-- ---- batch: a drift summary over a random sample ----

local SINCE = {
  sqlite = { ago = "created_at >= strftime('%Y-%m-%d %H:%M:%f', 'now', ?)",
             ago_arg = function(s) return string.format("-%d seconds", s) end,
             at = "created_at >= ?", at_arg = function(t) return t .. ".000" end },
  postgresql = { ago = "created_at >= now() - CAST(? AS interval)",
                 ago_arg = function(s) return string.format("%d seconds", s) end,
                 at = "created_at >= CAST(? AS timestamptz)", at_arg = function(t) return t .. "+00" end },
}

-- replay.sample_ids(store, { n, template, since }) -> ids | nil, err, code:
-- up to n random ids of completed, non-replay snapshots (of that template,
-- created since then: 7d, 24h, or a UTC date / date-time as the reports
-- take it).
function M.sample_ids(store, opts)
  local n = opts.n
  if type(n) ~= "number" or n % 1 ~= 0 or n < 1 or n > 1e6 then
    return nil, "REPORT: --sample must be a positive integer, got '" .. tostring(opts.n) .. "'", "REPORT"
  end
  local conds, params = { "status = 'completed'", "replay_of IS NULL" }, {}
  if opts.template ~= nil then
    conds[#conds + 1] = "template_id = ?"
    params[#params + 1] = tostring(opts.template)
  end
  if opts.since ~= nil then
    local t, err, code = report.parse_time(opts.since, false)
    if not t then return nil, err, code end
    local d = SINCE[store.backend or "sqlite"] or SINCE.sqlite
    if t.ago then
      conds[#conds + 1], params[#params + 1] = d.ago, d.ago_arg(t.ago)
    else
      conds[#conds + 1], params[#params + 1] = d.at, d.at_arg(t.at)
    end
  end
  params[#params + 1] = math.floor(n)
  local rows, err, code = store:query("SELECT id FROM generation_snapshots WHERE " .. table.concat(conds, " AND ")
    .. " ORDER BY random() LIMIT ?", params)
  if not rows then return nil, err, code end
  local ids = {}
  for i, r in ipairs(rows) do ids[i] = r.id end
  return ids
end

-- min / p50 (nearest rank: the ceil(n/2)-th smallest) / mean of a list, or nil
local function stats(list)
  if #list == 0 then return nil end
  table.sort(list)
  local sum = 0
  for _, v in ipairs(list) do sum = sum + v end
  return { min = list[1], p50 = list[math.ceil(#list / 2)], mean = sum / #list }
end

-- replay.sample(store, { n, template, since, provider | provider_for =
-- fn(row) -> provider | nil, err, code, <replay.run options> }) ->
-- summary | nil, err, code. Replays n random completed non-replay snapshots
-- and summarises the drift per template:
--   summary = { replays = { {id, template_id, result | error, code} ... },
--     templates = { { template_id, n, replayed, failed, unknown,
--       similarity_initial = {min, p50, mean} | nil,
--       similarity_final = {min, p50, mean} | nil (full only) }, ... } }
-- sorted by template_id. n counts the sampled snapshots; unknown those whose
-- first draft is not known (no similarity); failed the replays that failed.
-- A CONFIG error (no key, full without rules) stops before anything is sent.
function M.sample(store, opts)
  if type(opts) ~= "table" then error("bad argument #2 to 'sample' (table expected, got " .. type(opts) .. ")", 2) end
  local ids, err, code = M.sample_ids(store, opts)
  if not ids then return nil, err, code end
  -- every replay's provider is made and checked before the first is sent
  local per = {}
  for i, id in ipairs(ids) do
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    if opts.provider_for then
      local rows
      rows, err, code = store:query("SELECT * FROM generation_snapshots WHERE id = ?", { id })
      if not rows then return nil, err, code end
      local p, perr, pcode = opts.provider_for(rows[1])
      if not p then return nil, perr or "CONFIG: no provider for snapshot " .. id, pcode or "CONFIG" end
      o.provider = p
    end
    local ok, cerr, ccode = check_opts(o)
    if not ok then return nil, cerr, ccode end
    per[i] = o
  end
  if #ids == 0 and not opts.provider_for then
    local ok, cerr, ccode = check_opts(opts)
    if not ok then return nil, cerr, ccode end
  end
  local by, order, replays = {}, {}, {}
  for i, id in ipairs(ids) do
    local r, rerr, rcode = M.run(store, id, per[i])
    local tid
    if r then
      tid = r.original.template_id
    else
      local row = store:query("SELECT template_id FROM generation_snapshots WHERE id = ?", { id })
      tid = row and row[1] and row[1].template_id or "?"
    end
    replays[#replays + 1] = { id = id, template_id = tid, result = r, error = not r and rerr or nil,
                              code = not r and rcode or nil }
    local g = by[tid]
    if not g then
      g = { template_id = tid, n = 0, replayed = 0, failed = 0, unknown = 0, initial = {}, final = {} }
      by[tid] = g
      order[#order + 1] = tid
    end
    g.n = g.n + 1
    if not r then
      g.failed = g.failed + 1
    else
      g.replayed = g.replayed + 1
      if r.similarity_initial then g.initial[#g.initial + 1] = r.similarity_initial else g.unknown = g.unknown + 1 end
      if r.similarity_final then g.final[#g.final + 1] = r.similarity_final end
    end
  end
  table.sort(order)
  local templates = {}
  for i, tid in ipairs(order) do
    local g = by[tid]
    templates[i] = { template_id = tid, n = g.n, replayed = g.replayed, failed = g.failed, unknown = g.unknown,
                     similarity_initial = stats(g.initial), similarity_final = opts.full and stats(g.final) or nil }
  end
  return { replays = replays, templates = templates, full = opts.full and true or false }
end

return M
