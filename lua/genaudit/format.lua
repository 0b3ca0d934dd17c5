-- genaudit.format — output rendering of the CLI and of exports, apart from
-- the computing (genaudit.report): a report result ({ columns, rows }) as an
-- aligned text table, as CSV (RFC 4180) or as JSON; rows as JSON objects and
-- CSV records; numbers without float noise. Every function returns text;
-- none writes.
local core = require("genaudit.core")
local schema = require("genaudit.schema")

local M = {}

-- A scalar as a JSON value (nil -> null); numbers and strings via the exact
-- C encoder, so costs keep every digit and any byte string is escaped.
function M.json_value(v)
  if v == nil then return "null" end
  if type(v) == "boolean" then return v and "true" or "false" end
  local s, err = core.json_encode(v)
  if not s then error(err, 2) end
  return s
end

-- A row as a JSON object with the keys in `columns` order; JSON columns are
-- spliced verbatim when `embed` is true. Always valid UTF-8 JSON, and
-- lossless: a value that is not valid UTF-8 (the TEXT columns keep any bytes)
-- cannot be a JSON string, so it goes out under the key `<column>_base64`
-- instead of `<column>`, as the base64 (RFC 4648) of its exact bytes. NUL
-- bytes are valid JSON (\u0000) and stay in the plain key.
function M.json_object(row, columns, embed)
  local parts = {}
  for i, c in ipairs(columns) do
    local v = row[c]
    if type(v) == "string" and not core.utf8_valid(v) then
      parts[i] = M.json_value(c .. "_base64") .. ':"' .. core.base64(v) .. '"'
    else
      local text
      if embed and schema.DOCUMENTS[c] and type(v) == "string" then text = v else text = M.json_value(v) end
      parts[i] = M.json_value(c) .. ":" .. text
    end
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

local mtype = rawget(math, "type") -- nil on LuaJIT, where every number is a double

-- A report value as JSON text: a computed float (a sum, an average, a rate)
-- with at most 15 significant digits — a double's precision, so that sums
-- print 0.0037059, not 0.0037059000000000003; an integer exactly; a map
-- (top_repair_types) as an object with sorted keys; anything else as
-- json_value. Exports and show keep stored values exact (json_value).
function M.report_value(v)
  if type(v) == "number" then
    local integral
    if mtype then integral = mtype(v) == "integer" else integral = v % 1 == 0 and math.abs(v) < 2 ^ 53 end
    if not integral and v == v and v ~= math.huge and v ~= -math.huge then
      local s = string.format("%.15g", v)
      if not s:find("[.eE]") then s = s .. ".0" end
      return s
    end
  elseif type(v) == "table" then
    if next(v) == nil then return "{}" end
    local keys, parts = {}, {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    for i, k in ipairs(keys) do parts[i] = M.json_value(k) .. ":" .. M.report_value(v[k]) end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return M.json_value(v)
end

-- What a report counted (result.counted), as one line of text without its
-- newline: "counted: completed generations, replays excluded (12 rows)".
function M.counted_line(c)
  local what = c.status == "all" and "all generations (completed and failed)" or (c.status .. " generations")
  return string.format("counted: %s, replays %s (%d row%s)", what, c.replays, c.rows, c.rows == 1 and "" or "s")
end

-- A report result as {"counted":{...},"columns":[...],"rows":[{...}]}
-- (counted only when the result has it); absent values -> null.
function M.json(result)
  local cols, rows = {}, {}
  for i, c in ipairs(result.columns) do cols[i] = M.json_value(c) end
  for i, r in ipairs(result.rows) do
    local parts = {}
    for j, c in ipairs(result.columns) do parts[j] = M.json_value(c) .. ":" .. M.report_value(r[c]) end
    rows[i] = "{" .. table.concat(parts, ",") .. "}"
  end
  local counted = ""
  if result.counted then
    local c = result.counted
    counted = '"counted":{"status":' .. M.json_value(c.status) .. ',"replays":' .. M.json_value(c.replays)
      .. ',"rows":' .. M.json_value(c.rows) .. "},"
  end
  return "{" .. counted .. '"columns":[' .. table.concat(cols, ",") .. '],"rows":[' .. table.concat(rows, ",") .. "]}"
end

-- One RFC 4180 field: quoted when it holds , " CR or LF (quotes doubled);
-- nil -> empty; numbers in their exact shortest form, or as report_value
-- when `rounded` (report output); a table as its JSON object.
function M.csv_field(v, rounded)
  if v == nil then return "" end
  local s
  if type(v) == "table" or (rounded and type(v) == "number") then s = M.report_value(v)
  elseif type(v) == "number" then s = M.json_value(v)
  else s = tostring(v) end
  if s:find('[,"\r\n]') then return '"' .. s:gsub('"', '""') .. '"' end
  return s
end

-- One CSV record (CRLF-terminated): row's values in `columns` order
-- (`rounded`: numbers as report_value).
function M.csv_record(row, columns, rounded)
  local parts = {}
  for i, c in ipairs(columns) do parts[i] = M.csv_field(row[c], rounded) end
  return table.concat(parts, ",") .. "\r\n"
end
-- ---- text table ----

-- Display width in characters (UTF-8), for aligning columns.
function M.width(s)
  return select(2, s:gsub("[^\128-\191]", ""))
end

-- A value as a table cell: integral numbers without a fraction, others with
-- 6 significant digits; control characters flattened; NULL as "-".
function M.cell(v)
  if v == nil then return "-" end
  if type(v) == "table" then -- top_repair_types: "slug×n, ..." by count, then slug
    local list = {}
    for k, n in pairs(v) do list[#list + 1] = { tostring(k), n } end
    table.sort(list, function(a, b)
      if a[2] ~= b[2] then return a[2] > b[2] end
      return a[1] < b[1]
    end)
    for i, e in ipairs(list) do list[i] = e[1] .. "×" .. string.format("%d", e[2]) end
    return table.concat(list, ", ")
  end
  if type(v) == "number" then
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return string.format("%d", v) end
    if math.abs(v) >= 1e6 then return string.format("%.1f", v) end
    return string.format("%.6g", v)
  end
  return (tostring(v):gsub("%c", " "))
end

-- A report result as an aligned text table: a header row, numbers
-- right-aligned, each line ending in "\n"; first the counted line when the
-- result says what it counted.
function M.table(result)
  local width = M.width
  local cols, widths, numeric, cells = result.columns, {}, {}, {}
  for j, c in ipairs(cols) do widths[j], numeric[j] = width(c), true end
  for i, row in ipairs(result.rows) do
    cells[i] = {}
    for j, c in ipairs(cols) do
      local v = row[c]
      if v ~= nil and type(v) ~= "number" then numeric[j] = false end
      cells[i][j] = M.cell(v)
      if width(cells[i][j]) > widths[j] then widths[j] = width(cells[i][j]) end
    end
  end
  local lines = {}
  local function line(vals)
    local parts = {}
    for j, v in ipairs(vals) do
      local pad = string.rep(" ", widths[j] - width(v))
      parts[j] = numeric[j] and (pad .. v) or (v .. pad)
    end
    lines[#lines + 1] = (table.concat(parts, "  "):gsub("%s+$", "")) .. "\n"
  end
  if result.counted then lines[1] = M.counted_line(result.counted) .. "\n" end
  line(cols)
  for _, r in ipairs(cells) do line(r) end
  return table.concat(lines)
end

-- A report result as CSV: a header record, then the rows with numbers as
-- report_value.
function M.csv(result)
  local header = {}
  for _, c in ipairs(result.columns) do header[c] = c end
  local records = { M.csv_record(header, result.columns) }
  for _, r in ipairs(result.rows) do records[#records + 1] = M.csv_record(r, result.columns, true) end
  return table.concat(records)
end

return M
