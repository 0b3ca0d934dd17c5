-- genaudit.copy — copies every snapshot of one store into another (SQLite
-- into PostgreSQL, or any pair), behind `genaudit copy`. Rows stream from the
-- source with store:each (constant memory) and are written with
-- persist_generation, keeping their id and created_at; the metric documents
-- are decoded here (integers stay integers, null stays null) and rebuilt by
-- the C row builder, which gives back the same bytes for documents genaudit
-- wrote. A row whose id the destination already holds is skipped, so a copy
-- can be run again after an interruption.
local core = require("genaudit.core")

local M = {}

local tointeger = rawget(math, "tointeger")

-- ---- JSON text -> Lua, exact enough to rebuild the document ----

local ESCAPES = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local function utf8_char(cp)
  if cp < 0x80 then return string.char(cp) end
  if cp < 0x800 then return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64) end
  if cp < 0x10000 then
    return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
    0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
end

local decode_value

local function skip(s, i) return s:find("[^ \t\r\n]", i) or #s + 1 end

local function decode_string(s, i) -- s:sub(i, i) == '"'
  local parts, j = {}, i + 1
  while true do
    local k = s:find('["\\]', j)
    if not k then error("unterminated string", 0) end
    parts[#parts + 1] = s:sub(j, k - 1)
    if s:sub(k, k) == '"' then return table.concat(parts), k + 1 end
    local e = s:sub(k + 1, k + 1)
    if e == "u" then
      local cp = tonumber(s:sub(k + 2, k + 5), 16)
      if not cp then error("bad \\u escape", 0) end
      j = k + 6
      if cp >= 0xD800 and cp <= 0xDBFF and s:sub(j, j + 1) == "\\u" then
        local lo = tonumber(s:sub(j + 2, j + 5), 16)
        if lo and lo >= 0xDC00 and lo <= 0xDFFF then
          cp = 0x10000 + (cp - 0xD800) * 1024 + (lo - 0xDC00)
          j = j + 6
        end
      end
      parts[#parts + 1] = utf8_char(cp)
    elseif ESCAPES[e] then
      parts[#parts + 1] = ESCAPES[e]
      j = k + 2
    else
      error("bad escape \\" .. e, 0)
    end
  end
end

local function decode_number(s, i)
  local text = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", i)
  if not text or text == "" or text == "-" then error("bad value at byte " .. i, 0) end
  local v = tonumber(text)
  if not v then error("bad number " .. text, 0) end
  -- an integer in the text stays one (Lua 5.4); 2.0 stays a float
  if tointeger and not text:find("[.eE]") then v = tointeger(v) or v end
  return v, i + #text
end

function decode_value(s, i, depth)
  if depth > 64 then error("nested too deep", 0) end
  i = skip(s, i)
  local c = s:sub(i, i)
  if c == "{" then
    local t = {}
    i = skip(s, i + 1)
    if s:sub(i, i) == "}" then return t, i + 1 end
    while true do
      if s:sub(i, i) ~= '"' then error("expected a key at byte " .. i, 0) end
      local k
      k, i = decode_string(s, i)
      i = skip(s, i)
      if s:sub(i, i) ~= ":" then error("expected ':' at byte " .. i, 0) end
      t[k], i = decode_value(s, i + 1, depth + 1)
      i = skip(s, i)
      local d = s:sub(i, i)
      if d == "}" then return t, i + 1 end
      if d ~= "," then error("expected ',' or '}' at byte " .. i, 0) end
      i = skip(s, i + 1)
    end
  elseif c == "[" then
    local t = {}
    i = skip(s, i + 1)
    if s:sub(i, i) == "]" then return t, i + 1 end
    while true do
      t[#t + 1], i = decode_value(s, i, depth + 1)
      i = skip(s, i)
      local d = s:sub(i, i)
      if d == "]" then return t, i + 1 end
      if d ~= "," then error("expected ',' or ']' at byte " .. i, 0) end
      i = i + 1
    end
  elseif c == '"' then
    return decode_string(s, i)
  elseif s:sub(i, i + 3) == "true" then
    return true, i + 4
  elseif s:sub(i, i + 4) == "false" then
    return false, i + 5
  elseif s:sub(i, i + 3) == "null" then
    return core.null, i + 4 -- kept: a null member is written back as null
  end
  return decode_number(s, i)
end

-- M.decode_json(text) -> value | nil, err. Objects and arrays become
-- tables, null becomes genaudit.null, integers stay integers.
function M.decode_json(text)
  local ok, v, i = pcall(decode_value, text, 1, 0)
  if not ok then return nil, v end
  if skip(text, i) <= #text then return nil, "trailing text at byte " .. i end
  return v
end

-- ---- rows ----

local TEXT_COLUMNS = { "id", "created_at", "org_id", "user_id", "platform", "template_id", "template_version",
                       "status", "content", "error", "final_system_prompt", "final_user_prompt", "replay_of" }
local DOCUMENTS = { token_usage = "token_metrics", performance = "performance_metrics",
                    repair_info = "repair_metrics", request_params = "request_params" }

-- M.generation(row) -> the persist_generation table for a stored row | nil, err
function M.generation(row)
  local g = {}
  for _, c in ipairs(TEXT_COLUMNS) do g[c] = row[c] end
  for field, col in pairs(DOCUMENTS) do
    if row[col] ~= nil then
      local v, err = M.decode_json(row[col])
      if v == nil then return nil, col .. ": " .. err end
      g[field] = v
    end
  end
  return g
end

-- M.run(from, to, opts) -> { copied, skipped, failed, errors = { "id: err", ... } }
-- | nil, err, code (the source could not be read). Oldest rows first; opts.max_errors
-- (10) bounds the messages kept; opts.progress(copied, skipped, failed) is
-- called every 1000 rows.
function M.run(from, to, opts)
  if type(from) ~= "table" or type(from.each) ~= "function" then
    error("bad argument #1 to 'copy' (store expected, got " .. type(from) .. ")", 2)
  end
  if type(to) ~= "table" or type(to.persist_generation) ~= "function" then
    error("bad argument #2 to 'copy' (store expected, got " .. type(to) .. ")", 2)
  end
  opts = opts or {}
  local max_errors = opts.max_errors or 10
  local result = { copied = 0, skipped = 0, failed = 0, errors = {} }
  local function failed(id, err)
    result.failed = result.failed + 1
    if #result.errors < max_errors then result.errors[#result.errors + 1] = tostring(id) .. ": " .. tostring(err) end
  end
  local n, err, code = from:each("SELECT * FROM generation_snapshots ORDER BY created_at, id", {}, function(row)
    local present, qerr = to:query("SELECT 1 AS present FROM generation_snapshots WHERE id = ?", { row.id })
    if not present then
      failed(row.id, qerr)
    elseif present[1] then
      result.skipped = result.skipped + 1
    else
      local g, gerr = M.generation(row)
      local id, perr
      if g then id, perr = to:persist_generation(g) else perr = "INVALID: " .. gerr end
      if id then result.copied = result.copied + 1 else failed(row.id, perr) end
    end
    local seen = result.copied + result.skipped + result.failed
    if opts.progress and seen % 1000 == 0 then opts.progress(result.copied, result.skipped, result.failed) end
  end)
  if not n then return nil, err, code end
  return result
end

return M
