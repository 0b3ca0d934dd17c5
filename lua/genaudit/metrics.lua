-- genaudit.metrics — the store's figures as Prometheus metrics (text
-- exposition format 0.0.4), behind `genaudit metrics`: for node_exporter's
-- textfile collector or any scraper. Names follow the OpenTelemetry GenAI
-- semantic conventions mapped the Prometheus way (gen_ai.client.token.usage
-- -> gen_ai_client_token_usage, with its bucket boundaries), plus genaudit's
-- own families. Every figure is aggregated in SQL (one scan per family), so
-- memory does not grow with the table. Labels stay low-cardinality: template,
-- model, provider, status, repair type, rule — never org or user ids.
-- Its families, label formatting, numbers and histogram rendering are shared
-- with genaudit.nginx_metrics (the same families counted live in nginx), so
-- dashboards work on both.
local report = require("genaudit.report")
local core = require("genaudit.core")

local M = {}

local unpack = rawget(table, "unpack") or _G.unpack

-- The OpenTelemetry GenAI semconv's explicit bucket boundaries.
M.TOKEN_BUCKETS = { 1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864 }
M.DURATION_BUCKETS = { 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92 }

local T = "generation_snapshots"

-- name -> { type, help } of every family this module writes (genaudit.nginx_metrics
-- writes them too, with the same help).
M.FAMILIES = {
  genaudit_generations_total = { "counter",
    "Generations recorded, by status and template (replays are genaudit_replays_total)." },
  genaudit_replays_total = { "counter", "Replays recorded (rows with replay_of), by status and template." },
  genaudit_cost_usd_total = { "counter",
    "Estimated cost in USD of every generation and replay with a known cost, by template and model." },
  genaudit_unpriced_generations_total = { "counter",
    "Generations whose cost is unknown (an unpriced model, no usage), by template and model." },
  genaudit_repairs_total = { "counter", "Repair calls, by template." },
  genaudit_repair_types_total = { "counter",
    "Generations repaired for each issue type (repair_metrics.repair_types), by template and type." },
  genaudit_rule_errors_total = { "counter",
    "Rule runs that raised or returned garbage (kind error) or timed out (kind timeout), by rule slug." },
  gen_ai_client_token_usage = { "histogram",
    "Tokens per model call (gen_ai.client.token.usage), by token type (input, output)." },
  gen_ai_client_operation_duration_seconds = { "histogram",
    "The provider's wait per model call, retries included (gen_ai.client.operation.duration), in seconds." },
  genaudit_generation_duration_seconds = { "histogram",
    "Total time of a generation (prompts, every call, validation, repairs), by template, in seconds." },
}

-- A label value as the text format writes it: backslash, quote and newline escaped.
local function esc(v)
  return (tostring(v == nil and "" or v):gsub("[\\\"\n]", { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

-- metrics.labels{ name1, value1, name2, value2, ... } -> '{name1="value1",...}'
-- (values escaped; "" for none at all).
local function labels(pairs_list)
  if #pairs_list == 0 then return "" end
  local out = {}
  for i = 1, #pairs_list, 2 do out[#out + 1] = pairs_list[i] .. '="' .. esc(pairs_list[i + 1]) .. '"' end
  return "{" .. table.concat(out, ",") .. "}"
end
M.labels = labels

-- A sample value: integers as integers, other numbers with every digit Go's
-- ParseFloat needs.
local function num(v)
  v = tonumber(v) or 0
  if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return string.format("%d", v) end
  for digits = 15, 16 do -- the shortest text that reads back as v
    local s = string.format("%." .. digits .. "g", v)
    if tonumber(s) == v then return s end
  end
  return string.format("%.17g", v)
end
M.number = num

-- metrics.family(out, name [, type, help]): the HELP and TYPE lines of a
-- family (type and help from M.FAMILIES when not given).
local function family(out, name, kind, help)
  local f = M.FAMILIES[name]
  out[#out + 1] = "# HELP " .. name .. " " .. (help or f[2])
  out[#out + 1] = "# TYPE " .. name .. " " .. (kind or f[1])
end
M.family = family

local function query(store, sql)
  local rows, err, code = store:query(sql, {})
  if not rows then error({ err = err, code = code }, 0) end
  return rows
end

-- SELECT list of the cumulative bucket counts of expression v, then its count and sum.
local function bucket_sql(v, bounds, scale)
  local cols = {}
  for i, b in ipairs(bounds) do
    cols[i] = "sum(CASE WHEN " .. v .. " <= " .. num(b * (scale or 1)) .. " THEN 1 ELSE 0 END) AS b" .. i
  end
  cols[#cols + 1] = "count(" .. v .. ") AS n"
  cols[#cols + 1] = "sum(" .. v .. ") AS s"
  return table.concat(cols, ", ")
end

-- metrics.histogram(out, name, rows, bounds, label_cols [, scale]): the
-- series of a histogram family, one per row whose count n > 0. A row holds
-- the cumulative bucket counts b1..b#bounds, the count n and the sum s (in
-- units of 1/scale); label_cols = { { name [, fn(row) -> value] }, ... } (the
-- value is row[name] unless fn; nil is written as "").
local function histogram(out, name, rows, bounds, label_cols, scale)
  for _, r in ipairs(rows) do
    if tonumber(r.n) and tonumber(r.n) > 0 then
      local base = {}
      for _, c in ipairs(label_cols) do
        local v
        if c[2] then v = c[2](r) else v = r[c[1]] end
        base[#base + 1] = c[1]
        base[#base + 1] = v == nil and "" or v -- unknown (a failed call's model): the empty value
      end
      for i, b in ipairs(bounds) do
        local l = { unpack(base) }
        l[#l + 1], l[#l + 2] = "le", num(b)
        out[#out + 1] = name .. "_bucket" .. labels(l) .. " " .. num(r["b" .. i])
      end
      local l = { unpack(base) }
      l[#l + 1], l[#l + 2] = "le", "+Inf"
      out[#out + 1] = name .. "_bucket" .. labels(l) .. " " .. num(r.n)
      out[#out + 1] = name .. "_sum" .. labels(base) .. " " .. num((tonumber(r.s) or 0) / (scale or 1))
      out[#out + 1] = name .. "_count" .. labels(base) .. " " .. num(r.n)
    end
  end
end
M.histogram = histogram

-- metrics.exposition(store) -> text | nil, err, code: every family, from the
-- whole table (counters since the store began; a scraper takes rates).
function M.exposition(store)
  if type(store) ~= "table" or type(store.query) ~= "function" then
    error("bad argument #1 to 'exposition' (store expected, got " .. type(store) .. ")", 2)
  end
  local SQL = report.dialect(store)
  local out = {}
  local ok, e = pcall(function()
    family(out, "genaudit_generations_total")
    local gens = query(store, "SELECT status, template_id, CASE WHEN replay_of IS NULL THEN 0 ELSE 1 END AS replay,"
      .. " count(*) AS n FROM " .. T .. " GROUP BY status, template_id, replay ORDER BY 3, 1, 2")
    local replays = {}
    for _, r in ipairs(gens) do
      if tonumber(r.replay) == 0 then
        out[#out + 1] = "genaudit_generations_total" .. labels{ "status", r.status, "template", r.template_id }
          .. " " .. num(r.n)
      else
        replays[#replays + 1] = r
      end
    end
    family(out, "genaudit_replays_total")
    for _, r in ipairs(replays) do
      out[#out + 1] = "genaudit_replays_total" .. labels{ "status", r.status, "template", r.template_id } .. " "
        .. num(r.n)
    end

    local cost = query(store, "SELECT template_id, model_identifier, CAST(sum(estimated_cost_picousd) AS TEXT) AS pico,"
      .. " count(*) - count(estimated_cost_picousd) AS unpriced FROM " .. T
      .. " GROUP BY template_id, model_identifier ORDER BY 1, 2")
    family(out, "genaudit_cost_usd_total")
    for _, r in ipairs(cost) do
      if r.pico ~= nil then
        out[#out + 1] = "genaudit_cost_usd_total" .. labels{ "template", r.template_id, "model", r.model_identifier }
          .. " " .. num(core.usd_from_picousd(r.pico))
      end
    end
    family(out, "genaudit_unpriced_generations_total")
    for _, r in ipairs(cost) do
      if tonumber(r.unpriced) > 0 then
        out[#out + 1] = "genaudit_unpriced_generations_total"
          .. labels{ "template", r.template_id, "model", r.model_identifier } .. " " .. num(r.unpriced)
      end
    end

    family(out, "genaudit_repairs_total")
    for _, r in ipairs(query(store, "SELECT template_id, sum(repair_count) AS n FROM " .. T
      .. " WHERE repair_count > 0 GROUP BY template_id ORDER BY 1")) do
      out[#out + 1] = "genaudit_repairs_total" .. labels{ "template", r.template_id } .. " " .. num(r.n)
    end
    family(out, "genaudit_repair_types_total")
    for _, r in ipairs(query(store, "SELECT b.template_id, j.value AS type, count(*) AS n FROM " .. T .. " b, "
      .. SQL.repair_types .. " GROUP BY b.template_id, j.value ORDER BY 1, 2")) do
      out[#out + 1] = "genaudit_repair_types_total" .. labels{ "template", r.template_id, "type", r.type } .. " "
        .. num(r.n)
    end

    family(out, "genaudit_rule_errors_total")
    for _, r in ipairs(query(store, "SELECT " .. SQL.rule_text("slug") .. " AS rule, sum(" .. SQL.rule_int("errors")
      .. ") AS errors, sum(" .. SQL.rule_int("timeouts") .. ") AS timeouts FROM " .. T .. " b, " .. SQL.rules_each
      .. " GROUP BY 1 ORDER BY 1")) do
      if r.rule ~= nil then
        out[#out + 1] = "genaudit_rule_errors_total" .. labels{ "rule", r.rule, "kind", "error" } .. " "
          .. num(r.errors)
        out[#out + 1] = "genaudit_rule_errors_total" .. labels{ "rule", r.rule, "kind", "timeout" } .. " "
          .. num(r.timeouts)
      end
    end

    -- per model call: tokens and the provider wait, as the GenAI semconv defines them
    local provider = SQL.doc_text("performance_metrics", "provider")
    family(out, "gen_ai_client_token_usage")
    local lab = { { "gen_ai_operation_name", function() return "chat" end }, { "gen_ai_provider_name" },
                  { "gen_ai_response_model" } }
    for _, tt in ipairs({ { "input", "prompt_tokens" }, { "output", "completion_tokens" } }) do
      local rows = query(store, "SELECT " .. provider .. " AS gen_ai_provider_name, " .. SQL.rule_text("served_model")
        .. " AS gen_ai_response_model, " .. bucket_sql(SQL.rule_int(tt[2]), M.TOKEN_BUCKETS) .. " FROM " .. T .. " b, "
        .. SQL.calls_each("token_metrics") .. " GROUP BY 1, 2 ORDER BY 1, 2")
      local l2 = { lab[1], lab[2], lab[3], { "gen_ai_token_type", function() return tt[1] end } }
      histogram(out, "gen_ai_client_token_usage", rows, M.TOKEN_BUCKETS, l2)
    end
    family(out, "gen_ai_client_operation_duration_seconds")
    local wait = SQL.rule_num("wait_ms")
    histogram(out, "gen_ai_client_operation_duration_seconds", query(store, "SELECT " .. provider
      .. " AS gen_ai_provider_name, b.model_identifier AS gen_ai_response_model, "
      .. bucket_sql(wait, M.DURATION_BUCKETS, 1000) .. " FROM " .. T .. " b, " .. SQL.calls_each("performance_metrics")
      .. " GROUP BY 1, 2 ORDER BY 1, 2"), M.DURATION_BUCKETS, lab, 1000)
    family(out, "genaudit_generation_duration_seconds")
    histogram(out, "genaudit_generation_duration_seconds", query(store, "SELECT template_id, "
      .. bucket_sql("b.total_latency_ms", M.DURATION_BUCKETS, 1000) .. " FROM " .. T
      .. " b WHERE b.replay_of IS NULL GROUP BY template_id ORDER BY 1"), M.DURATION_BUCKETS, { { "template",
        function(r) return r.template_id end } }, 1000)
  end)
  if not ok then
    if type(e) == "table" then return nil, e.err, e.code end
    error(e, 0)
  end
  return table.concat(out, "\n") .. "\n"
end

return M
