-- genaudit.composer — builds the final prompts from prompt templates (Lua
-- scripts in a directory the host names, one file per template id).
--
-- A template script returns a table:
--   version          string|number   recorded on the snapshot
--   voice_signature  string          baked into the system prompt
--   constraints      {string}        baked into the system prompt
--   platforms        {[platform] = {constraints = {...}, voice_signature = ...}}
--   task             string          first part of the user prompt
--   {{a.b}} placeholders in voice_signature, constraints and task read the
--   context (e.g. {{business.name}}, {{facts.product}}); a missing value is an error.
--   system(ctx, parts) / user(ctx, parts)   optional: full control; `parts`
--                                    holds the default pieces (see below)
-- The user prompt carries the knowledge, the facts and the tone line; the
-- tone line uses ctx.tone_override when given, else ctx.business.tone.
local dto = require("genaudit.dto")
local scripts = require("genaudit.scripts")

local M = {}

local Composer = {}
Composer.__index = Composer

-- A template is read raw (no metamethod of the script's tables runs in host
-- code) into a table of the host's own: strings, lists of strings (numbers
-- written out), the platform overrides and the two functions.
local function string_field(t, f)
  local v = rawget(t, f)
  if v ~= nil and type(v) ~= "string" then return nil, f .. " must be a string" end
  if v and #v > scripts.MAX_STRING_BYTES then
    return nil, ("%s is %d bytes, over the limit of %d bytes"):format(f, #v, scripts.MAX_STRING_BYTES)
  end
  return true, v
end

local function string_list(t, f)
  local v = rawget(t, f)
  if v == nil then return true, nil end
  if type(v) ~= "table" then return nil, f .. " must be a list" end
  local out = {}
  for n = 1, math.huge do
    local c = rawget(v, n)
    if c == nil then break end
    if type(c) == "number" then c = tostring(c) end
    if type(c) ~= "string" then return nil, f .. " must be a list of strings" end
    out[n] = c
  end
  return true, out
end

local function data_fields(t, out)
  for _, f in ipairs({ "voice_signature", "task" }) do
    local ok, v = string_field(t, f)
    if not ok then return nil, v end
    out[f] = v
  end
  local ok, list = string_list(t, "constraints")
  if not ok then return nil, list end
  out.constraints = list
  return out
end

local function validate_template(t)
  if type(t) ~= "table" then return nil, "a template must return a table" end
  local out, err = data_fields(t, {})
  if not out then return nil, err end
  for _, f in ipairs({ "system", "user" }) do
    local fn = rawget(t, f)
    if fn ~= nil and type(fn) ~= "function" then return nil, f .. " must be a function" end
    out[f] = fn
  end
  local version = rawget(t, "version")
  if version ~= nil and type(version) ~= "string" and type(version) ~= "number" then
    return nil, "version must be a string or a number"
  end
  if type(version) == "string" and #version > scripts.MAX_MESSAGE_BYTES then
    return nil, ("version is %d bytes, over the limit of %d bytes"):format(#version, scripts.MAX_MESSAGE_BYTES)
  end
  out.version = version
  local platforms = rawget(t, "platforms")
  if platforms ~= nil then
    if type(platforms) ~= "table" then return nil, "platforms must be a table" end
    out.platforms = {}
    local name, p = next(platforms)
    while name ~= nil do
      if type(name) == "string" then
        if type(p) ~= "table" then return nil, "platforms." .. name .. " must be a table" end
        local copy
        copy, err = data_fields(p, {})
        if not copy then return nil, "platforms." .. name .. ": " .. err end
        out.platforms[name] = copy
      end
      name, p = next(platforms, name)
    end
  end
  return out
end

-- composer.new{ templates = dir, sandbox = true, script_timeout_ms = 1000 } -> composer
function M.new(opts)
  if type(opts) ~= "table" or type(opts.templates) ~= "string" then
    error("bad argument #1 to 'composer' (templates directory expected)", 2)
  end
  return setmetatable({
    dir = opts.templates,
    loader = scripts.loader{ sandbox = opts.sandbox, validate = validate_template, limit_ms = opts.script_timeout_ms },
  }, Composer)
end

-- Reads a dotted path ("business.name") from the context.
local function lookup(ctx, path)
  local v = ctx
  for key in path:gmatch("[^%.]+") do
    if type(v) ~= "table" then return nil end
    v = v[key]
  end
  return v
end

-- Replaces {{path}} placeholders; an unknown path is an error (a silent
-- empty string would ship a broken prompt).
local function render(text, ctx)
  if not text:find("{{", 1, true) then return text end -- no placeholder: the text itself
  local missing
  local out = text:gsub("{{%s*([%w_%.]+)%s*}}", function(path)
    local v = lookup(ctx, path)
    if v == nil or type(v) == "table" then
      missing = missing or path
      return ""
    end
    return tostring(v)
  end)
  if missing then return nil, "placeholder {{" .. missing .. "}} has no value in the context" end
  return out
end

local function bullet_list(items)
  local out = {}
  for _, v in ipairs(items) do out[#out + 1] = "- " .. tostring(v) end
  return table.concat(out, "\n")
end

-- Facts are a map or a list; a map renders sorted by key so prompts are stable.
local function facts_list(facts)
  if #facts > 0 then return bullet_list(facts) end
  local keys = {}
  for k in pairs(facts) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do out[#out + 1] = "- " .. k .. ": " .. tostring(facts[k]) end
  return table.concat(out, "\n")
end

-- The tone line: the override replaces the business context's own tone.
function M.tone_line(ctx)
  local tone = ctx.tone_override or (ctx.business and ctx.business.tone)
  if tone == nil or tone == "" then return nil end
  return "Tone: " .. tone
end

local function default_parts(t, ctx)
  local platform = t.platforms and t.platforms[ctx.platform] or {}
  local constraints = {}
  for _, list in ipairs({ t.constraints or {}, platform.constraints or {} }) do
    for _, c in ipairs(list) do
      local text, cerr = render(c, ctx)
      if not text then return nil, cerr end
      constraints[#constraints + 1] = text
    end
  end
  local task, voice, err
  task, err = render(platform.task or t.task or "", ctx)
  if not task then return nil, err end
  voice, err = render(platform.voice_signature or t.voice_signature or "", ctx)
  if not voice then return nil, err end
  return {
    voice_signature = voice,
    constraints = constraints,
    task = task,
    knowledge = ctx.knowledge or {},
    facts = ctx.facts or {},
    tone_line = M.tone_line(ctx),
  }
end

local function default_system(parts)
  local s = parts.voice_signature
  if #parts.constraints > 0 then
    s = s .. (s ~= "" and "\n\n" or "") .. "Constraints:\n" .. bullet_list(parts.constraints)
  end
  return s
end

local function default_user(parts)
  local sections = {}
  if parts.task ~= "" then sections[#sections + 1] = parts.task end
  if #parts.knowledge > 0 then sections[#sections + 1] = "Knowledge:\n" .. bullet_list(parts.knowledge) end
  if next(parts.facts) then sections[#sections + 1] = "Facts:\n" .. facts_list(parts.facts) end
  if parts.tone_line then sections[#sections + 1] = parts.tone_line end
  return table.concat(sections, "\n\n")
end

local function check_size(id, name, s)
  if #s > scripts.MAX_STRING_BYTES then
    return nil, ("COMPOSE: template '%s' %s prompt is %d bytes, over the limit of %d bytes"):format(id, name, #s,
      scripts.MAX_STRING_BYTES), "COMPOSE"
  end
  return s
end

-- composer:compose_post_generation(ctx) -> Prompt | nil, "COMPOSE: ...", "COMPOSE"
-- ctx is a GenerationContext. Template errors (missing file, bad script, a
-- template function that raises) are expected failures, never crashes.
-- system() and user() each get their own copies of ctx and the parts.
function Composer:compose_post_generation(ctx)
  if type(ctx) ~= "table" then
    error("bad argument #1 to 'compose_post_generation' (table expected, got " .. type(ctx) .. ")", 2)
  end
  local id = ctx.template_id
  if type(id) ~= "string" or not id:match("^[%w][%w_%-%.]*$") or id:find("..", 1, true) then
    return nil, "COMPOSE: invalid template id '" .. tostring(id) .. "'", "COMPOSE"
  end
  local t, err = self.loader:load(self.dir .. "/" .. id .. ".lua")
  if not t then return nil, "COMPOSE: template '" .. id .. "': " .. err, "COMPOSE" end
  local parts
  parts, err = default_parts(t, ctx)
  if not parts then return nil, "COMPOSE: template '" .. id .. "': " .. err, "COMPOSE" end
  local prompt = { system = default_system(parts), user = default_user(parts) }
  for _, name in ipairs({ "system", "user" }) do
    local fn = t[name]
    if fn then
      local ok, res = self.loader:call(fn, scripts.copy(ctx), scripts.copy(parts))
      if not ok then return nil, "COMPOSE: template '" .. id .. "' " .. name .. "(): " .. res, "COMPOSE" end
      if type(res) ~= "string" then
        return nil, "COMPOSE: template '" .. id .. "' " .. name .. "() must return a string", "COMPOSE"
      end
      prompt[name] = res
    end
    local s, serr, code = check_size(id, name, prompt[name])
    if not s then return nil, serr, code end
  end
  return dto.Prompt{ system = prompt.system, user = prompt.user, template_id = id, template_version = t.version }
end

-- composer:template_script(id) -> { path, source, digest[, load_error = true] }
-- of the template a compose of id used (call it after the compose): its
-- active version, else the bytes that failed to load; nil when there was no
-- file to read (or no valid id).
function Composer:template_script(id)
  if type(id) ~= "string" then return nil end
  local path = self.dir .. "/" .. id .. ".lua"
  local active = self.loader:script(path)
  if active then return active end
  local failed = self.loader:failed(path)
  if failed then return { path = failed.path, source = failed.source, digest = failed.digest, load_error = true } end
  return nil
end

-- composer:template_error(id) -> the last load error of a template, if any
function Composer:template_error(id)
  local e = self.loader.cache[self.dir .. "/" .. id .. ".lua"]
  return e and e.error
end

return M
