-- genaudit.tokens — exact token counts for OpenAI's o200k_base and
-- cl100k_base encodings (identical ids to tiktoken's encode_ordinary), by the
-- C byte-pair encoder in csrc/ga_bpe.c.
--
--   local tokens = require("genaudit.tokens")
--   tokens.count("Hello, world", "gpt-4o")        --> 4
--   tokens.encode("Hello", "o200k_base")          --> { 13225 }
--   tokens.decode({ 13225 }, "o200k_base")        --> "Hello"
--   tokens.encoding_for("openai/gpt-4o-mini")     --> "o200k_base"
--   tokens.count_messages({ { role = "user", content = "hi" } }, "gpt-4o")
--
-- An encoding is loaded on first use (rank file lua/genaudit/data/
-- tiktoken-<name>.json, the npm tiktoken package's file, unchanged) and then
-- shared by every caller in this Lua state; in OpenResty that is once per
-- worker process (memory per encoding: tokens.memory(name), README "Token
-- counting"). Text is any byte string: ill-formed UTF-8 counts as U+FFFD per
-- maximal ill-formed subpart, which is what tiktoken (npm or Python) counts
-- for the same bytes decoded with replacement. Special-token text such as
-- "<|endoftext|>" is ordinary text.
--
-- Pre-tokenisation (splitting text into the pieces BPE merges) has two
-- implementations giving the same pieces: the hand-written scanner
-- (csrc/ga_bpe_scan.c, the default: faster) and tiktoken's regex run by PCRE2
-- with JIT. GENAUDIT_PRETOKENIZER=pcre2 (or =scanner) picks an encoding's
-- default when it is loaded; enc:count(text, "pcre2") / enc:encode(text,
-- "scanner") / enc:pieces(text, which) choose per call (enc = tokens.load(name)).
local core = require("genaudit.core")

local M = { _VERSION = "0.1.0" }

M.ENCODINGS = { o200k_base = true, cl100k_base = true }

M.PRETOKENIZERS = { scanner = true, pcre2 = true }

local loaded = {} -- name -> genaudit.bpe userdata (immutable once built)

local function data_dir()
  local src = debug.getinfo(1, "S").source
  local moddir = "."
  if src:sub(1, 1) == "@" then moddir = src:sub(2):match("^(.*)/[^/]*$") or "." end
  return moddir .. "/data/"
end

-- tokens.rank_file(name) -> path of the rank file of encoding `name`.
function M.rank_file(name)
  return data_dir() .. "tiktoken-" .. name .. ".json"
end

-- OpenAI model names (after provider prefixes) -> encoding, first match wins.
-- tiktoken's model.py prefixes, for the families genaudit prices.
local MODEL_RULES = {
  { "^gpt%-4o", "o200k_base" }, { "^chatgpt%-4o", "o200k_base" }, { "^gpt%-4%.1", "o200k_base" },
  { "^gpt%-4%.5", "o200k_base" }, { "^gpt%-5", "o200k_base" },
  { "^o1$", "o200k_base" }, { "^o1%-", "o200k_base" }, { "^o3$", "o200k_base" }, { "^o3%-", "o200k_base" },
  { "^o4%-", "o200k_base" },
  { "^gpt%-4$", "cl100k_base" }, { "^gpt%-4%-", "cl100k_base" },
  { "^gpt%-3%.5%-turbo", "cl100k_base" }, { "^gpt%-35%-turbo", "cl100k_base" },
  { "^text%-embedding%-3", "cl100k_base" }, { "^text%-embedding%-ada%-002", "cl100k_base" },
}

-- The bare model name: provider prefixes ("openai/", "azure/",
-- "openrouter/openai/") and a fine-tune wrapper ("ft:gpt-4o-mini:org::id")
-- removed, lower-cased.
local function bare_model(model)
  local m = model:lower():match("([^/]*)$")
  local ft = m:match("^ft:([^:]+)")
  return ft or m
end

-- tokens.encoding_for(model) -> "o200k_base" | "cl100k_base" | nil. An
-- encoding name is returned as is.
function M.encoding_for(model)
  if type(model) ~= "string" then
    error("bad argument #1 to 'encoding_for' (string expected, got " .. type(model) .. ")", 2)
  end
  if M.ENCODINGS[model] then return model end
  local m = bare_model(model)
  for _, rule in ipairs(MODEL_RULES) do
    if m:find(rule[1]) then return rule[2] end
  end
  return nil
end

local function unknown(what)
  return nil, "UNKNOWN_ENCODING: no OpenAI encoding for '" .. tostring(what)
    .. "' (o200k_base, cl100k_base or an OpenAI model name)", "UNKNOWN_ENCODING"
end

-- The default pre-tokeniser: GENAUDIT_PRETOKENIZER ("scanner" when unset or
-- empty) | nil, "CONFIG: ...", "CONFIG" for another value.
function M.default_pretokenizer()
  local v = os.getenv("GENAUDIT_PRETOKENIZER")
  if v == nil or v == "" then return "scanner" end
  if not M.PRETOKENIZERS[v] then
    return nil, "CONFIG: GENAUDIT_PRETOKENIZER must be 'scanner' or 'pcre2', not '" .. v .. "'", "CONFIG"
  end
  return v
end

-- tokens.load(name) -> the shared genaudit.bpe of encoding `name` | nil, err, code
function M.load(name)
  local enc = loaded[name]
  if enc then return enc end
  if not M.ENCODINGS[name] then return unknown(name) end
  local pretok, perr, pcode = M.default_pretokenizer()
  if not pretok then return nil, perr, pcode end
  local path = M.rank_file(name)
  local text, err = core.read_file(path)
  if not text then return nil, err, "IO" end
  local e, lerr, code = core.bpe_load(name, text, pretok)
  if not e then return nil, lerr, code end
  loaded[name] = e
  return e
end

local function resolve(enc_or_model, fname)
  if type(enc_or_model) ~= "string" then
    error("bad argument #2 to '" .. fname .. "' (string expected, got " .. type(enc_or_model) .. ")", 3)
  end
  local name = M.encoding_for(enc_or_model)
  if not name then return unknown(enc_or_model) end
  return M.load(name)
end

local function check_text(text, fname)
  if type(text) ~= "string" then
    error("bad argument #1 to '" .. fname .. "' (string expected, got " .. type(text) .. ")", 3)
  end
end

-- tokens.count(text, enc_or_model) -> n | nil, "CODE: msg", "CODE"
function M.count(text, enc_or_model)
  check_text(text, "count")
  local enc, err, code = resolve(enc_or_model, "count")
  if not enc then return nil, err, code end
  return enc:count(text)
end

-- tokens.encode(text, enc_or_model) -> { ids } | nil, err, code
function M.encode(text, enc_or_model)
  check_text(text, "encode")
  local enc, err, code = resolve(enc_or_model, "encode")
  if not enc then return nil, err, code end
  return enc:encode(text)
end

-- tokens.decode(ids, enc_or_model) -> bytes | nil, err, code (BAD_TOKEN for an
-- id the encoding does not have)
function M.decode(ids, enc_or_model)
  if type(ids) ~= "table" then
    error("bad argument #1 to 'decode' (table expected, got " .. type(ids) .. ")", 2)
  end
  local enc, err, code = resolve(enc_or_model, "decode")
  if not enc then return nil, err, code end
  return enc:decode(ids)
end

-- tokens.memory(name) -> bytes held by the loaded encoding (loads it) | nil, err, code
function M.memory(name)
  local enc, err, code = M.load(name)
  if not enc then return nil, err, code end
  return enc:memory()
end

-- Chat overhead, from OpenAI's cookbook ("How to count tokens with tiktoken",
-- num_tokens_from_messages): every message costs 3 tokens of framing
-- (<|start|>{role}<|message|>...<|end|>) plus its role, content and name as
-- text, a name 1 more, and the reply is primed with 3 (<|start|>assistant
-- <|message|>). gpt-3.5-turbo-0301 alone used 4 per message and -1 for a name.
-- Every chat model encoding_for() knows (gpt-4o*, gpt-4.1*, gpt-4.5*, gpt-5*,
-- o1*, o3*, o4*, chatgpt-4o*, gpt-4*, gpt-3.5-turbo*) uses these figures.
local function overhead(model)
  if bare_model(model):find("^gpt%-3%.5%-turbo%-0301") or bare_model(model):find("^gpt%-35%-turbo%-0301") then
    return 4, -1, 3
  end
  return 3, 1, 3
end

-- The text of a message's content: a string, or the "text" parts of an
-- array of content parts (OpenAI's [{type="text", text=...}]); other parts
-- (images, audio) are not text and are not counted here.
local function content_text(content, i)
  if content == nil or content == core.null then return "" end
  if type(content) == "string" then return content end
  if type(content) == "table" then
    local parts = {}
    for j, part in ipairs(content) do
      if type(part) ~= "table" then
        error("bad argument #1 to 'count_messages' (messages[" .. i .. "].content[" .. j .. "] is not a table)", 3)
      end
      if part.type == "text" or (part.type == nil and type(part.text) == "string") then
        parts[#parts + 1] = tostring(part.text or "")
      end
    end
    return table.concat(parts)
  end
  error("bad argument #1 to 'count_messages' (messages[" .. i .. "].content is a " .. type(content) .. ")", 3)
end

-- tokens.count_messages(messages, model) -> n | nil, err, code. messages is
-- { { role=, content=, name=? }, ... } as the pipeline sends them.
function M.count_messages(messages, model)
  if type(messages) ~= "table" then
    error("bad argument #1 to 'count_messages' (table expected, got " .. type(messages) .. ")", 2)
  end
  local enc, err, code = resolve(model, "count_messages")
  if not enc then return nil, err, code end
  local per_message, per_name, reply = overhead(model)
  local n = 0
  for i, msg in ipairs(messages) do
    if type(msg) ~= "table" then
      error("bad argument #1 to 'count_messages' (messages[" .. i .. "] is a " .. type(msg) .. ")", 2)
    end
    n = n + per_message
    local c, cerr, ccode = enc:count(tostring(msg.role or ""))
    if not c then return nil, cerr, ccode end
    n = n + c
    c, cerr, ccode = enc:count(content_text(msg.content, i))
    if not c then return nil, cerr, ccode end
    n = n + c
    if type(msg.name) == "string" then
      c, cerr, ccode = enc:count(msg.name)
      if not c then return nil, cerr, ccode end
      n = n + c + per_name
    end
  end
  return n + reply
end

return M
