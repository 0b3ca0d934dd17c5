-- genaudit.redact — the optional redaction script (README, "Redaction before
-- storage"): masks personal data in the prompts, drafts and content of a
-- snapshot before they are hashed and stored. A script like the rules:
-- sandboxed, time-limited, reloaded when the file changes. It returns
--   function(text, field, ctx) -> text        or   { redact = function ... }
-- field: "final_system_prompt", "final_user_prompt", "content" or "drafts";
-- ctx: a copy of the generation context. The caller of generate() still
-- gets the model's own text; only what is stored is redacted.
-- Fails closed: a script that exists but has never loaded, raises, times out
-- or returns something that is not a string stores REDACTION_FAILED in
-- place of that text (never the unredacted text), and says so on the row.
local core = require("genaudit.core")
local scripts = require("genaudit.scripts")

local M = {}

M.FILE = "redact.lua"
M.FAILED = "[genaudit: redaction failed; text not stored]"

local Redactor = {}
Redactor.__index = Redactor

local function validate(v)
  if type(v) == "function" then return { redact = v } end
  if type(v) == "table" and type(rawget(v, "redact")) == "function" then return { redact = rawget(v, "redact") } end
  return nil, "a redaction script must return a function or { redact = function }"
end

-- redact.new{ path, sandbox = true, script_timeout_ms } -> redactor
function M.new(opts)
  return setmetatable({
    path = opts.path,
    loader = scripts.loader{ sandbox = opts.sandbox, validate = validate, limit_ms = opts.script_timeout_ms },
  }, Redactor)
end

-- redactor:apply(row, ctx) -> info | nil (no script: nothing done). Replaces
-- row.final_system_prompt, final_user_prompt, content and each row.drafts[i]
-- by their redacted text. info = { script, digest, changed = { field, ... },
-- errors = { "field: error", ... } (absent when none), source = { path,
-- source, digest } (to pin) }.
function Redactor:apply(row, ctx)
  if not core.file_version(self.path) then return nil end
  local r, lerr = self.loader:load(self.path)
  local src = r and self.loader:script(self.path) or self.loader:failed(self.path)
  local info = { script = self.path, digest = src and src.digest or nil, changed = {}, source = src }
  local errors = {}
  if lerr then errors[#errors + 1] = "load: " .. scripts.text(lerr) end
  local cctx = scripts.copy(ctx)
  local function one(field, text, label)
    if type(text) ~= "string" then return text end
    if not r then return M.FAILED end
    local ok, res = self.loader:call(r.redact, text, field, scripts.copy(cctx))
    if not ok or type(res) ~= "string" then
      local why = ok and ("returned " .. type(res) .. ", not a string") or scripts.text(res)
      errors[#errors + 1] = label .. ": " .. why
      return M.FAILED
    end
    if res ~= text then info.changed[#info.changed + 1] = label end
    return res
  end
  for _, f in ipairs({ "final_system_prompt", "final_user_prompt", "content" }) do row[f] = one(f, row[f], f) end
  if type(row.drafts) == "table" then
    for i, d in ipairs(row.drafts) do row.drafts[i] = one("drafts", d, "drafts[" .. i .. "]") end
  end
  if #errors > 0 then info.errors = errors end
  return info
end

return M
