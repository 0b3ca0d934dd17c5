-- genaudit.json — the one JSON codec of the Lua layer, both halves in C:
-- decode is core.json_decode (integers stay integers — lua-cjson reads 42 as
-- 42.0 on Lua 5.4 — and null is genaudit.null, the same value as cjson.null),
-- encode is core.json_encode (exact numbers, valid UTF-8 out; Debian's
-- lua-cjson rounds to 14 digits).
local core = require("genaudit.core")

local M = {}

M.null = core.null

-- json.decode(text [, raw_depth]) -> value | nil, "INVALID: ...", "INVALID".
-- With raw_depth, objects and arrays nested deeper stay JSON text (a
-- genaudit.rawjson value the encoder writes back as it is).
function M.decode(text, raw_depth)
  if type(text) ~= "string" then return nil, "INVALID: JSON text expected, got " .. type(text), "INVALID" end
  return core.json_decode(text, raw_depth)
end

-- json.encode(value) -> text | nil, err, code
M.encode = core.json_encode

local tointeger = rawget(math, "tointeger") -- nil on LuaJIT, where every number is a double

-- json.integer(v) -> v as an integer when it is an integral number (5.4:
-- 42.0 -> 42; LuaJIT: v itself), else v unchanged.
function M.integer(v)
  if type(v) == "number" and tointeger then return tointeger(v) or v end
  return v
end

return M
