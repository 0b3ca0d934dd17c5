-- genaudit.pricing — price maps in LiteLLM's model_prices_and_context_window.json
-- format (USD per token): loads a file or a Lua table into the C price table,
-- which holds every price as exact integer picodollars, and resolves the model
-- names providers report ("openai/gpt-4o-mini-2024-07-18") to the map's keys.
local core = require("genaudit.core")
local json = require("genaudit.json")

local M = {}

-- The price fields genaudit uses, with LiteLLM's names (the C meter's list,
-- csrc/ga_price.c, written once). Others are ignored.
M.PRICE_FIELDS = {}
for i, name in ipairs(core.price_fields) do M.PRICE_FIELDS[i] = name end

-- The price map shipped with the module, in genaudit/data/ beside this file
-- (checkout, make install and the rock alike; see lua/genaudit/data/README.md).
M.DEFAULT_FILE = "litellm-model-prices-2026-07.json"
M.DEFAULT_SOURCE = "LiteLLM model_prices_and_context_window.json (synced by Wei-Shaw/model-price-repo), July 2026"

local Pricing = {}
Pricing.__index = Pricing

local function fail(msg)
  return nil, "PRICING: " .. msg, "PRICING"
end

local function has_price(entry)
  for _, field in ipairs(M.PRICE_FIELDS) do
    local v = entry[field]
    if v ~= nil and v ~= json.null then return true end
  end
  return false
end

-- Builds the pricing object from a { model = entry } table: entries with no
-- price field (LiteLLM's "sample_spec" documentation entry among them) are
-- skipped; a bad price fails the whole load with nil, "PRICING: ...".
local function build(map, source)
  local names = {}
  for model, entry in pairs(map) do
    if type(model) ~= "string" then
      return fail(source .. ": model names must be strings, got a " .. type(model))
    end
    if type(entry) ~= "table" then
      return fail(source .. ": model '" .. model .. "': entry must be an object, got a " .. type(entry))
    end
    if model ~= "sample_spec" and has_price(entry) then names[#names + 1] = model end
  end
  table.sort(names) -- the first bad entry reported is the same on every run
  local pt = core.price_table()
  local keys = {}
  for _, model in ipairs(names) do
    local ok, err = pt:set(model, map[model])
    if not ok then
      pt:close()
      return fail(source .. ": model '" .. model .. "': " .. err:gsub("^INVALID: ", ""))
    end
    keys[model] = true
  end
  return setmetatable({ source = source, _pt = pt, _keys = keys, _count = #names, _resolved = {} }, Pricing)
end

-- pricing.load(path_or_table) -> pricing object, or nil, "PRICING: ...", "PRICING"
-- when the file is missing or unreadable, is not a JSON object, or a price is
-- negative or not a number (or a decimal string). Raises on other argument types.
function M.load(src)
  if type(src) == "table" then return build(src, "price table") end
  if type(src) ~= "string" then
    error("bad argument #1 to 'load' (string or table expected, got " .. type(src) .. ")", 2)
  end
  local text, err = core.read_file(src)
  if not text then return fail((err:gsub("^IO: ", ""))) end
  local map, jerr = json.decode(text)
  if map == nil then return fail("invalid JSON in " .. src .. ": " .. tostring(jerr):gsub("^INVALID: ", "")) end
  if type(map) ~= "table" then return fail(src .. " does not hold a JSON object of models") end
  return build(map, src)
end

-- pricing.default_path() -> $GENAUDIT_PRICES, else the price map shipped
-- beside this module (<dir of pricing.lua>/data/), and as a second value
-- "GENAUDIT_PRICES" or "shipped" saying which.
function M.default_path()
  local env = os.getenv("GENAUDIT_PRICES")
  if env and env ~= "" then return env, "GENAUDIT_PRICES" end
  local src = debug.getinfo(1, "S").source
  local moddir = "."
  if src:sub(1, 1) == "@" then moddir = src:sub(2):match("^(.*)/[^/]*$") or "." end
  return moddir .. "/data/" .. M.DEFAULT_FILE, "shipped"
end

-- pricing.default() -> pricing object for default_path(), or nil, err. Loads
-- the file on every call: keep the result.
function M.default()
  return M.load((M.default_path()))
end

-- ---- resolving a reported model name to a key of the map ----

-- model, then model without each leading "provider/" segment in turn
local function prefix_forms(model)
  local out, rest = { model }, model
  while true do
    local tail = rest:match("^[^/]+/(.+)$")
    if not tail then return out end
    out[#out + 1] = tail
    rest = tail
  end
end

-- "claude-3.5-sonnet:beta" -> "claude-3.5-sonnet". OpenRouter's ":free" models
-- cost nothing, so the paid price would be wrong: those stay unresolved.
local function strip_variant(s)
  local base, variant = s:match("^(.+):([^:/]*)$")
  if base and variant ~= "free" then return base end
  return nil
end

-- "gpt-4o-mini-2024-07-18", "claude-3-5-sonnet-20241022", Vertex's "…@20240620"
local function strip_date(s)
  return s:match("^(.+)%-%d%d%d%d%-%d%d%-%d%d$") or s:match("^(.+)%-20%d%d[01]%d[0-3]%d$")
    or s:match("^(.+)@20%d%d[01]%d[0-3]%d$")
end

-- OpenRouter writes versions with dots ("claude-3.5-sonnet") where LiteLLM's
-- Anthropic keys use hyphens ("claude-3-5-sonnet"); "gpt-4.1" keeps its dot
-- because exact forms are tried first.
local function dots_to_hyphens(s)
  local out = s
  repeat
    local prev = out
    out = out:gsub("(%d)%.(%d)", "%1-%2")
  until out == prev
  if out ~= s then return out end
  return nil
end

local TRANSFORMS = {
  function(s) return s end,
  strip_variant,
  strip_date,
  function(s)
    local v = strip_variant(s)
    return v and strip_date(v)
  end,
  dots_to_hyphens,
  function(s)
    local v = strip_variant(s)
    return v and dots_to_hyphens(v)
  end,
  function(s)
    local d = strip_date(s)
    return d and dots_to_hyphens(d)
  end,
  function(s)
    local v = strip_variant(s)
    local d = v and strip_date(v)
    return d and dots_to_hyphens(d)
  end,
}

-- pricing_obj:resolve(model) -> the key of the map that prices `model`, or nil.
-- Tries, in order: the name as given, then without provider prefixes; each
-- again without a ":variant" suffix, without a date suffix, both, and with
-- digit.digit written digit-digit. Results (misses too) are cached per name.
function Pricing:resolve(model)
  if type(model) ~= "string" then
    error("bad argument #1 to 'resolve' (string expected, got " .. type(model) .. ")", 2)
  end
  local hit = self._resolved[model]
  if hit ~= nil then return hit or nil end
  local forms = prefix_forms(model)
  for _, transform in ipairs(TRANSFORMS) do
    for _, form in ipairs(forms) do
      local key = transform(form)
      if key and self._keys[key] then
        self._resolved[model] = key
        return key
      end
    end
  end
  self._resolved[model] = false
  return nil
end

-- pricing_obj:price_table() -> the genaudit.price_table userdata (for
-- meter:add_call{ model = pricing_obj:resolve(m), prices = ... })
function Pricing:price_table()
  return self._pt
end

-- pricing_obj:prices(model) -> { <price field> = USD per token, ... } for the
-- resolved key, or nil when the model is not priced
function Pricing:prices(model)
  local key = self:resolve(model)
  if not key then return nil end
  return self._pt:get(key)
end

-- pricing_obj:count() -> number of priced models
function Pricing:count()
  return self._count
end

return M
