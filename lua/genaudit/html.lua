-- genaudit.html — `genaudit report html`: one self-contained HTML page (no
-- script, no network: styles inline, charts as inline SVG) over the reports
-- of genaudit.report — cost per template per day, top templates by repairs
-- with their repair types, latency percentiles (provider vs own time) by
-- model, rule errors, unpriced generations. Every chart is a <figure> with a
-- <figcaption> and a <table> holding the same numbers, formatted as the CLI's
-- text tables format them (genaudit.format.cell); each numeric cell also
-- carries its value at full report precision in data-value. No aggregation
-- happens here: the numbers are report.lua's.
--
-- Every piece of user data (template ids, model names, rule slugs, filters)
-- is HTML-escaped; bytes that are not valid UTF-8 become U+FFFD.
local report = require("genaudit.report")
local format = require("genaudit.format")
local core = require("genaudit.core")

local M = {}

-- How many templates the repairs section ranks.
M.TOP = 10

-- ---- text ----

local ESC = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }

-- s with every invalid UTF-8 byte replaced by U+FFFD (a page must be UTF-8).
local function utf8_clean(s)
  if core.utf8_valid(s) then return s end
  local out, i, n = {}, 1, #s
  while i <= n do
    local c = s:byte(i)
    local len = c < 0x80 and 1 or (c >= 0xC2 and c <= 0xDF) and 2 or (c >= 0xE0 and c <= 0xEF) and 3
      or (c >= 0xF0 and c <= 0xF4) and 4 or 0
    local piece = len > 0 and s:sub(i, i + len - 1) or nil
    if piece and #piece == len and core.utf8_valid(piece) then
      out[#out + 1] = piece
      i = i + len
    else
      out[#out + 1] = "\239\191\189"
      i = i + 1
    end
  end
  return table.concat(out)
end

-- M.escape(v) -> v as HTML text (also safe inside a quoted attribute):
-- & < > " ' escaped, control characters as spaces, invalid UTF-8 as U+FFFD.
function M.escape(v)
  local s = utf8_clean((tostring(v):gsub("%c", " ")))
  return (s:gsub("[&<>\"']", ESC))
end
local esc = M.escape

-- A value as the CLI's text tables show it.
local function cell(v) return format.cell(v) end

-- ---- charts (inline SVG) ----

local COLORS = { "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                 "#9c755f", "#bab0ac" }
local function color(i) return COLORS[(i - 1) % #COLORS + 1] end

local function num(x) return string.format("%.1f", x) end

-- At most n characters (UTF-8) of s, with an ellipsis when cut.
local function clip(s, n)
  local chars = {}
  for ch in s:gmatch("[^\128-\191][\128-\191]*") do
    chars[#chars + 1] = ch
    if #chars > n then
      chars[n] = "…"
      return table.concat(chars, "", 1, n)
    end
  end
  return s
end

local function label_of(v) return v == nil and "(none)" or cell(v) end

-- The legend: one swatch and name per series, as SVG at y.
local function legend(parts, series, x, y)
  for i, s in ipairs(series) do
    local lx = x + ((i - 1) % 3) * 200
    local ly = y + math.floor((i - 1) / 3) * 18
    parts[#parts + 1] = string.format('<rect class="swatch" x="%s" y="%s" width="12" height="12" fill="%s"/>',
      num(lx), num(ly), s.color)
    parts[#parts + 1] = string.format('<text x="%s" y="%s">%s</text>', num(lx + 16), num(ly + 10),
      esc(clip(s.name, 26)))
  end
  return y + math.ceil(#series / 3) * 18
end

local function svg_open(parts, id, width, height)
  table.insert(parts, 1, string.format('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %d %d" width="%d"'
    .. ' height="%d" role="img" aria-labelledby="%s-caption" class="chart">', width, height, width, height, id))
  parts[#parts + 1] = "</svg>"
  return table.concat(parts)
end

-- Horizontal grouped bars: one group per row (its label on the left), one
-- bar per series (series[i].value(row) -> number or nil: no bar).
local function hbars(id, rows, series, unit)
  local W, LEFT, BAR, GAP = 720, 200, 12, 10
  local plot = W - LEFT - 90
  local max = 0
  for _, r in ipairs(rows) do
    for _, s in ipairs(series) do
      local v = s.value(r.row)
      if v and v > max then max = v end
    end
  end
  local parts, y = {}, 8
  if #series > 1 then y = legend(parts, series, LEFT, y) + 6 end
  for _, r in ipairs(rows) do
    local group_h = #series * BAR
    parts[#parts + 1] = string.format('<text class="label" x="%d" y="%s" text-anchor="end">%s</text>', LEFT - 8,
      num(y + group_h / 2 + 4), esc(clip(r.label, 30)))
    for i, s in ipairs(series) do
      local v = s.value(r.row)
      local by = y + (i - 1) * BAR
      if v then
        local w = max > 0 and math.max(v, 0) / max * plot or 0 -- a negative value (bad data) draws no bar
        parts[#parts + 1] = string.format('<rect class="bar" x="%d" y="%s" width="%s" height="%d" fill="%s">'
          .. "<title>%s, %s: %s%s</title></rect>", LEFT, num(by), num(w), BAR - 2, s.color, esc(r.label),
          esc(s.name), esc(cell(v)), unit)
        parts[#parts + 1] = string.format('<text class="value" x="%s" y="%s">%s</text>', num(LEFT + w + 4),
          num(by + BAR - 3), esc(cell(v)))
      end
    end
    y = y + group_h + GAP
  end
  parts[#parts + 1] = string.format('<line class="axis" x1="%d" y1="0" x2="%d" y2="%s"/>', LEFT, LEFT, num(y))
  return svg_open(parts, id, W, math.ceil(y))
end

-- Vertical stacked columns: one column per x key, one segment per series
-- (value(x, series_key) -> number or nil).
local function stacked_columns(id, xs, series, value, unit)
  local W, LEFT, TOP = 720, 90, 8
  local parts = {}
  local plot_top = legend(parts, series, LEFT, TOP) + 10
  local H, plot_h = plot_top + 220, 180
  local base = plot_top + plot_h
  local max = 0
  for _, x in ipairs(xs) do
    local t = 0
    for _, s in ipairs(series) do t = t + (value(x, s.key) or 0) end
    if t > max then max = t end
  end
  local step = (W - LEFT - 10) / math.max(#xs, 1)
  local bw = math.max(math.min(step * 0.7, 60), 2)
  local every = math.max(1, math.ceil(#xs / 12)) -- at most ~12 x labels
  parts[#parts + 1] = string.format('<line class="axis" x1="%d" y1="%s" x2="%d" y2="%s"/>', LEFT, num(base),
    W - 10, num(base))
  parts[#parts + 1] = string.format('<line class="grid" x1="%d" y1="%s" x2="%d" y2="%s"/>', LEFT, num(plot_top),
    W - 10, num(plot_top))
  parts[#parts + 1] = string.format('<text class="tick" x="%d" y="%s" text-anchor="end">%s</text>', LEFT - 6,
    num(plot_top + 4), esc(cell(max)))
  parts[#parts + 1] = string.format('<text class="tick" x="%d" y="%s" text-anchor="end">0</text>', LEFT - 6,
    num(base + 4))
  for i, x in ipairs(xs) do
    local cx = LEFT + (i - 1) * step + (step - bw) / 2
    local top = base
    for _, s in ipairs(series) do
      local v = value(x, s.key)
      if v then
        local h = max > 0 and math.max(v, 0) / max * plot_h or 0
        top = top - h
        parts[#parts + 1] = string.format('<rect class="bar" x="%s" y="%s" width="%s" height="%s" fill="%s">'
          .. "<title>%s, %s: %s%s</title></rect>", num(cx), num(top), num(bw), num(h), s.color, esc(x),
          esc(s.name), esc(cell(v)), unit)
      end
    end
    if (i - 1) % every == 0 then
      parts[#parts + 1] = string.format('<text class="tick" x="%s" y="%s" text-anchor="middle">%s</text>',
        num(cx + bw / 2), num(base + 16), esc(x))
    end
  end
  return svg_open(parts, id, W, H)
end

-- ---- tables ----

local HEADINGS = { total_cost = "total_cost (USD)", avg_cost = "avg_cost (USD)", p50_cost = "p50_cost (USD)",
                   p95_cost = "p95_cost (USD)" }

-- A report result as a <table>: the report's columns, cells as the CLI shows
-- them; numbers right-aligned with their full value in data-value.
local function data_table(id, result)
  local out = { '<div class="scroll"><table id="' .. id .. '-table" class="data"><thead><tr>' }
  for _, c in ipairs(result.columns) do
    out[#out + 1] = '<th scope="col" data-column="' .. esc(c) .. '">'
      .. esc(HEADINGS[c] or c) .. "</th>"
  end
  out[#out + 1] = "</tr></thead><tbody>"
  for _, r in ipairs(result.rows) do
    out[#out + 1] = "<tr>"
    for j, c in ipairs(result.columns) do
      local v = r[c]
      local tag = j == 1 and "th" or "td"
      local attrs = j == 1 and ' scope="row"' or ""
      if type(v) == "number" then
        attrs = attrs .. ' class="num" data-value="' .. esc(format.report_value(v)) .. '"'
      elseif v == nil then
        attrs = attrs .. ' class="null"'
      end
      out[#out + 1] = "<" .. tag .. attrs .. ">" .. esc(cell(v)) .. "</" .. tag .. ">"
    end
    out[#out + 1] = "</tr>"
  end
  out[#out + 1] = "</tbody></table></div>"
  return table.concat(out)
end

-- ---- the sections ----

-- report cost_daily's rows as a grid: the days (oldest first), the
-- templates (bytewise) and the row of each day "\0" template.
local function by_day(result)
  local days, templates, seen_d, seen_t, at = {}, {}, {}, {}, {}
  for _, r in ipairs(result.rows) do
    local d, t = cell(r.day), r.template_id == nil and "(none)" or tostring(r.template_id)
    if not seen_d[d] then seen_d[d], days[#days + 1] = true, d end
    if not seen_t[t] then seen_t[t], templates[#templates + 1] = true, t end
    at[d .. "\0" .. t] = r
  end
  table.sort(templates)
  return days, templates, at
end

-- Each section: id, title, the report function and its extra options, a
-- caption, chart(id, result) -> SVG text and, when the table is not the
-- report's own columns, table(id, result) -> its <table>.
local SECTIONS = {
  {
    id = "cost-daily", title = "Cost per template per day", run = "cost_daily",
    caption = "Total cost (USD) of the priced generations, per UTC day and template (-: generations, none"
      .. " priced; empty: no generations).",
    chart = function(id, result)
      local days, templates, at = by_day(result)
      local series = {}
      for i, t in ipairs(templates) do series[i] = { key = t, name = t, color = color(i) } end
      return stacked_columns(id, days, series, function(d, t)
        local r = at[d .. "\0" .. t]
        return r and r.total_cost
      end, " USD")
    end,
    table = function(id, result)
      local days, templates, at = by_day(result)
      local out = { '<div class="scroll"><table id="' .. id .. '-table" class="data"><thead><tr>'
        .. '<th scope="col" data-column="day">day</th>' }
      for _, t in ipairs(templates) do
        out[#out + 1] = '<th scope="col" data-column="template">' .. esc(t) .. "</th>"
      end
      out[#out + 1] = "</tr></thead><tbody>"
      for _, d in ipairs(days) do
        out[#out + 1] = '<tr><th scope="row">' .. esc(d) .. "</th>"
        for _, t in ipairs(templates) do
          local r = at[d .. "\0" .. t]
          if not r then
            out[#out + 1] = '<td class="none" title="no generations"></td>'
          elseif r.total_cost == nil then
            out[#out + 1] = '<td class="null" title="' .. esc(cell(r.posts)) .. ' generations, none priced">-</td>'
          else
            out[#out + 1] = '<td class="num" data-value="' .. esc(format.report_value(r.total_cost)) .. '" title="'
              .. esc(cell(r.priced_posts)) .. " of " .. esc(cell(r.posts)) .. ' generations priced">'
              .. esc(cell(r.total_cost)) .. "</td>"
          end
        end
        out[#out + 1] = "</tr>"
      end
      out[#out + 1] = "</tbody></table></div>"
      return table.concat(out)
    end,
  },
  {
    id = "repairs", title = "Top templates by repairs", run = "repairs",
    options = function() return { top = M.TOP } end,
    caption = "Repairs summed per template (the " .. M.TOP .. " with the most), with the posts that needed one;"
      .. " the table lists each template's most common repair types.",
    chart = function(id, result)
      local rows = {}
      for i, r in ipairs(result.rows) do rows[i] = { label = label_of(r.template_id), row = r } end
      return hbars(id, rows, {
        { name = "repairs", color = color(1), value = function(r) return r.repairs end },
        { name = "repaired_posts", color = color(2), value = function(r) return r.repaired_posts end },
      }, "")
    end,
  },
  {
    id = "latency", title = "Latency by model: provider vs own time", run = "latency",
    options = function() return { by = "model" } end,
    caption = "p50, p95 and p99 of the time spent waiting for the provider and of genaudit's own time"
      .. " (total - provider), in ms, per model.",
    chart = function(id, result)
      local rows = {}
      for i, r in ipairs(result.rows) do rows[i] = { label = label_of(r.model_identifier), row = r } end
      local series = {}
      for _, m in ipairs({ { "provider", "provider" }, { "overhead", "own" } }) do
        for _, p in ipairs({ 50, 95, 99 }) do
          local col = "p" .. p .. "_" .. m[1] .. "_ms"
          series[#series + 1] = { name = m[2] .. " p" .. p, color = color(#series + 1),
                                  value = function(r) return r[col] end }
        end
      end
      return hbars(id, rows, series, " ms")
    end,
  },
  {
    id = "rules", title = "Rule errors", run = "rules",
    caption = "Per rule: the drafts on which it raised an error or ran out of time (the table also has the"
      .. " drafts it judged and the times it fired).",
    chart = function(id, result)
      local rows = {}
      for i, r in ipairs(result.rows) do rows[i] = { label = label_of(r.slug), row = r } end
      return hbars(id, rows, {
        { name = "errors", color = color(3), value = function(r) return r.errors end },
        { name = "timeouts", color = color(2), value = function(r) return r.timeouts end },
      }, "")
    end,
  },
  {
    id = "unpriced", title = "Unpriced generations", run = "unpriced",
    caption = "Counted generations whose cost is unknown (left out of every cost sum), per template, model and"
      .. " cost_source.",
    chart = function(id, result)
      local rows = {}
      for i, r in ipairs(result.rows) do
        rows[i] = { label = label_of(r.template_id) .. " / " .. label_of(r.model_identifier) .. " / "
          .. label_of(r.cost_source), row = r }
      end
      return hbars(id, rows, {
        { name = "unpriced_posts", color = color(3), value = function(r) return r.unpriced_posts end },
      }, "")
    end,
  },
}

-- M.validate(opts) -> true | nil, "REPORT: ...", "REPORT": the filters
-- (since, until, org, template, status, include_replays), checked without a store.
function M.validate(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #1 to 'validate' (table expected, got " .. type(opts) .. ")", 2)
  end
  for _, s in ipairs(SECTIONS) do
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    for k, v in pairs(s.options and s.options() or {}) do o[k] = v end
    local ok, err, code = report.validate(s.run, o)
    if not ok then return nil, err, code end
  end
  return true
end

-- M.sections(store, opts) -> { { id, title, caption, result } ... } | nil,
-- err, code: every section's report under the same filters (opts as
-- report.cost takes them, minus by).
function M.sections(store, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #2 to 'sections' (table expected, got " .. type(opts) .. ")", 2)
  end
  local out = {}
  for i, s in ipairs(SECTIONS) do
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    for k, v in pairs(s.options and s.options() or {}) do o[k] = v end
    local result, err, code = report[s.run](store, o)
    if not result then return nil, err, code end
    out[i] = { id = s.id, title = s.title, caption = s.caption, result = result, chart = s.chart, table = s.table }
  end
  return out
end

local STYLE = [[
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #1d232a;
  margin: 0 auto; max-width: 1000px; padding: 16px 24px; }
h1 { font-size: 22px; margin: 8px 0 4px; }
h2 { font-size: 17px; margin: 28px 0 6px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
.meta, .counted { color: #57606a; margin: 2px 0; }
.nodata, .empty { background: #f6f8fa; border: 1px solid #d0d7de; padding: 10px 14px; }
figure { margin: 8px 0 16px; }
figcaption { font-weight: 600; margin-bottom: 6px; }
svg.chart { max-width: 100%; height: auto; display: block; margin-bottom: 8px; }
svg text { font: 11px "DejaVu Sans", sans-serif; fill: #1d232a; }
svg .axis { stroke: #8c959f; stroke-width: 1; }
svg .grid { stroke: #d0d7de; stroke-dasharray: 3 3; }
.scroll { overflow-x: auto; }
table.data { border-collapse: collapse; font-size: 12px; margin-top: 4px; }
table.data th, table.data td { border: 1px solid #d0d7de; padding: 3px 6px; text-align: left; vertical-align: top; }
table.data thead th { background: #f6f8fa; }
table.data .num { text-align: right; font-variant-numeric: tabular-nums; }
table.data .null { color: #8c959f; }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  nav.toc { display: none; }
  .scroll { overflow: visible; }
  table.data { font-size: 8pt; }
  h2 { break-after: avoid; }
  figure, table.data tr { break-inside: avoid; }
  svg.chart, .swatch, .bar { print-color-adjust: exact; -webkit-print-color-adjust: exact; }
}
]]

local FILTER_NAMES = { "since", "until", "org", "template", "status" }

-- The filters in effect, as text.
local function filter_text(opts)
  local parts = {}
  for _, k in ipairs(FILTER_NAMES) do
    if opts[k] ~= nil then parts[#parts + 1] = "--" .. k .. " " .. tostring(opts[k]) end
  end
  if opts.include_replays then parts[#parts + 1] = "--include-replays" end
  return #parts > 0 and table.concat(parts, " ") or "none (every row)"
end

-- M.render(sections, opts, generated_at) -> the page (a string): sections as
-- M.sections returns them, opts the filters they were run with (shown in the
-- header), generated_at a "YYYY-MM-DD HH:MM:SS" UTC time (default: now).
function M.render(sections, opts, generated_at)
  if type(sections) ~= "table" then
    error("bad argument #1 to 'render' (table expected, got " .. type(sections) .. ")", 2)
  end
  opts = opts or {}
  generated_at = generated_at or os.date("!%Y-%m-%d %H:%M:%S")
  local out = {
    "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
    -- nothing may load: no script, no remote style, font or image
    "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline';"
      .. " img-src data:\">\n",
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
    "<title>genaudit report</title>\n<style>\n", STYLE, "</style>\n</head>\n<body>\n",
    "<header>\n<h1>genaudit report</h1>\n",
    '<p class="meta">Generated ', esc(generated_at), " UTC by genaudit ", esc(require("genaudit")._VERSION),
    ". Filters: ", esc(filter_text(opts)), ".</p>\n</header>\n<main>\n",
  }
  local any = false
  for _, s in ipairs(sections) do
    if s.result.counted and s.result.counted.rows > 0 then any = true end
  end
  if not any then
    out[#out + 1] = '<p class="nodata" id="nodata">No data: no generations match these filters'
      .. " (the store is empty, or every row is outside them).</p>\n"
  else
    out[#out + 1] = '<nav class="toc"><p>'
    for i, s in ipairs(sections) do
      out[#out + 1] = (i > 1 and " · " or "") .. '<a href="#' .. s.id .. '">' .. esc(s.title) .. "</a>"
    end
    out[#out + 1] = "</p></nav>\n"
    for _, s in ipairs(sections) do
      out[#out + 1] = '<section id="' .. s.id .. '" aria-labelledby="' .. s.id .. '-title">\n<h2 id="' .. s.id
        .. '-title">' .. esc(s.title) .. "</h2>\n"
      if s.result.counted then
        out[#out + 1] = '<p class="counted">' .. esc(format.counted_line(s.result.counted)) .. "</p>\n"
      end
      if #s.result.rows == 0 then
        out[#out + 1] = '<p class="empty">No rows.</p>\n'
      else
        out[#out + 1] = '<figure id="' .. s.id .. '-figure">\n<figcaption id="' .. s.id .. '-caption">'
          .. esc(s.caption) .. "</figcaption>\n" .. s.chart(s.id, s.result) .. "\n"
          .. (s.table or data_table)(s.id, s.result) .. "\n</figure>\n"
      end
      out[#out + 1] = "</section>\n"
    end
  end
  out[#out + 1] = "</main>\n</body>\n</html>\n"
  return table.concat(out)
end

-- M.report(store, opts) -> the page | nil, err, code (bad filters: "REPORT";
-- a store failure as the store returned it).
function M.report(store, opts)
  local sections, err, code = M.sections(store, opts)
  if not sections then return nil, err, code end
  return M.render(sections, opts)
end

return M
