-- spec.support.util — helpers several specs share: a deterministic random
-- generator, the CLI runner, shell quoting and an RFC 4180 reader.
local M = {}

-- Single-quotes a string for sh.
function M.q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- Park-Miller minimal standard generator: the same numbers under Lua 5.4 and
-- LuaJIT (math.random differs between the two), exact in doubles.
function M.lcg(seed)
  local state = seed
  local r = {}
  function r.int(lo, hi)
    state = (state * 48271) % 2147483647
    return lo + state % (hi - lo + 1)
  end
  function r.pick(list) return list[r.int(1, #list)] end
  return r
end

-- Runs `lua5.4 bin/genaudit ARGS` (with `env` assignments before it, and no
-- provider settings inherited); returns stdout, stderr, exit code.
function M.cli(args, env)
  local errfile = os.tmpname()
  local cmd = "env -u GENAUDIT_BASE_URL -u GENAUDIT_API_KEY " .. (env or "") .. " lua5.4 bin/genaudit " .. args
    .. " 2>" .. M.q(errfile) .. '; echo "rc=$?"'
  local p = assert(io.popen(cmd, "r"))
  local all = p:read("*a")
  p:close()
  local f = assert(io.open(errfile, "rb"))
  local err = f:read("*a")
  f:close()
  os.remove(errfile)
  local out, rc = all:match("^(.*)rc=(%d+)\n$")
  return out, err, tonumber(rc)
end

-- An export without the columns that seal each row into its store's hash
-- chain (migration 0008): chain_id, chain_seq, prev_hash, record_hash. A copy
-- writes every row afresh into the destination's own chain, so these differ
-- between source and copy while everything else (the payload digests too)
-- stays byte for byte. jsonl: the text without them; csv: the records
-- (M.parse_csv) without those columns.
local SEAL = { chain_id = true, chain_seq = true, prev_hash = true, record_hash = true }
function M.unsealed(text, format)
  if format == "csv" then
    local records = M.parse_csv(text)
    local keep = {}
    for i, name in ipairs(records[1] or {}) do
      if not SEAL[name] then keep[#keep + 1] = i end
    end
    local out = {}
    for r, rec in ipairs(records) do
      local o = {}
      for j, i in ipairs(keep) do o[j] = rec[i] end
      out[r] = o
    end
    return out
  end
  local n
  text, n = text:gsub('"chain_id":"[0-9A-Z]+","chain_seq":%d+,"prev_hash":"%x+","record_hash":"%x+",', "")
  local lines = select(2, text:gsub("\n", ""))
  assert(n == lines, "unsealed: " .. n .. " sealed rows in " .. lines .. " lines")
  return text
end

-- Reads RFC 4180 CSV (CRLF records, quoted fields) strictly into records.
function M.parse_csv(s)
  local records, record, i, n = {}, {}, 1, #s
  while i <= n do
    local value
    if s:sub(i, i) == '"' then
      local buf, j = {}, i + 1
      while true do
        local q = assert(s:find('"', j, true), "unterminated quoted field")
        buf[#buf + 1] = s:sub(j, q - 1)
        if s:sub(q + 1, q + 1) == '"' then
          buf[#buf + 1] = '"'
          j = q + 2
        else
          i = q + 1
          break
        end
      end
      value = table.concat(buf)
    else
      local j = s:find("[,\r\n]", i) or n + 1
      value = s:sub(i, j - 1)
      assert(not value:find('"', 1, true), "a quote inside an unquoted field")
      i = j
    end
    record[#record + 1] = value
    local d = s:sub(i, i)
    if d == "," then
      i = i + 1
    elseif s:sub(i, i + 1) == "\r\n" then
      records[#records + 1] = record
      record = {}
      i = i + 2
    else
      error("bad CSV at byte " .. i .. ": expected , or CRLF")
    end
  end
  assert(#record == 0, "the last record is not CRLF-terminated")
  return records
end

return M
