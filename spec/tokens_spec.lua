-- spec/tokens_spec.lua
-- Owns: genaudit.tokens (lua/genaudit/tokens.lua over csrc/ga_bpe.c): exact
-- token ids against OpenAI's tokenizer. Three sources of truth:
--   * spec/fixtures/tokens/golden.json, written by tiktoken itself (npm
--     `tiktoken` 1.0.22, WASM: tools/tiktoken-golden.js golden) — no node needed;
--   * random inputs generated here, compared with live tiktoken through node
--     (tools/tiktoken-node.sh installs it into build/node-tiktoken; the spec FAILS when
--     it cannot);
--   * every Unicode scalar value in letter/case/digit contexts: chunk digests
--     by tiktoken in spec/fixtures/tokens/unicode.json (tools/tiktoken-golden.js
--     unicode; catches Unicode-table differences between PCRE2 and Rust's regex).
-- Plus the API (model -> encoding, chat overhead, errors) and a 1 MB run of
-- one character (it must finish; bench/tokens.lua shows the rate).
-- The two pre-tokenisers (the hand-written scanner, csrc/ga_bpe_scan.c, the
-- default, and the patterns run by PCRE2) are held to each other too: same ids
-- on the golden corpus, the live inputs and the Unicode sweep, same pieces on
-- random inputs and on every scalar value in many contexts, and the scanner's
-- committed tables equal to what tools/bpe-tables.c derives from this PCRE2.
local core = require("genaudit.core")
local cjson = require("cjson")
local tokens = require("genaudit.tokens")

local ENCODINGS = { "o200k_base", "cl100k_base" }

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- node + the tiktoken package, installed on demand; errors (fails the test)
-- when that is impossible.
local node_dir
local function tiktoken_dir()
  if node_dir then return node_dir end
  local p = assert(io.popen("env -u LD_PRELOAD sh tools/tiktoken-node.sh 2>&1"))
  local out = p:read("*a")
  local ok = p:close()
  local dir = out:match("([^\n]+)\n?$")
  if not ok or not dir or not dir:find("node") then
    error("cannot install/locate the npm tiktoken package (sh tools/tiktoken-node.sh):\n" .. out)
  end
  node_dir = dir
  return dir
end

-- ids per encoding from live tiktoken for each input (byte strings)
local function tiktoken_ids(inputs)
  local dir = tiktoken_dir()
  local tmp = os.tmpname()
  local f = assert(io.open(tmp, "wb"))
  for _, s in ipairs(inputs) do f:write(cjson.encode({ b64 = core.base64(s) }), "\n") end
  f:close()
  local p = assert(io.popen("env -u LD_PRELOAD NODE_PATH=" .. dir .. "/node_modules node tools/tiktoken-golden.js"
    .. " encode < " .. tmp))
  local out = p:read("*a")
  local ok = p:close()
  os.remove(tmp)
  assert(ok, "node tools/tiktoken-golden.js encode failed")
  local res = {}
  for line in out:gmatch("[^\n]+") do res[#res + 1] = cjson.decode(line) end
  assert(#res == #inputs, "tiktoken answered " .. #res .. " of " .. #inputs .. " inputs")
  return res
end

-- first index where two id lists differ, or nil
local function first_diff(a, b)
  for i = 1, math.max(#a, #b) do
    if a[i] ~= b[i] then return i end
  end
  return nil
end

local function show(s)
  return (s:sub(1, 80):gsub("[^\32-\126]", function(c) return string.format("\\x%02x", c:byte()) end))
end

describe("genaudit.tokens", function()
  describe("golden corpus (tiktoken's own ids)", function()
    local golden = cjson.decode(read("spec/fixtures/tokens/golden.json"))

    it("holds the cases the issue lists", function()
      local names = {}
      for _, c in ipairs(golden) do names[c.name] = true end
      for _, want in ipairs({ "emoji", "combining", "cjk", "special_tokens_text", "spaces_10000", "digits_10000",
                              "punct_run_10000", "invalid_truncated", "invalid_surrogates", "all_bytes" }) do
        assert.is_true(names[want], want)
      end
    end)

    for _, enc in ipairs(ENCODINGS) do
      it("encode() and count() equal tiktoken on every case, " .. enc, function()
        for _, c in ipairs(golden) do
          local text = core.base64_decode(c.b64)
          local want = c[enc]
          local ids = assert(tokens.encode(text, enc))
          assert.are.equal(want.count, #ids, c.name)
          assert.are.equal(want.count, tokens.count(text, enc), c.name)
          if want.ids then
            local d = first_diff(ids, want.ids)
            assert.is_nil(d, c.name .. ": first differing id at " .. tostring(d))
          else
            assert.are.equal(want.ids_sha256, core.sha256(table.concat(ids, ",")), c.name)
          end
          -- the other pre-tokeniser: the same ids
          local e = assert(tokens.load(enc))
          local pids = assert(e:encode(text, "pcre2"))
          assert.is_nil(first_diff(ids, pids), c.name .. ": pcre2 differs from the scanner")
          assert.are.equal(want.count, e:count(text, "pcre2"), c.name)
        end
      end)
    end

    it("decode(encode(x)) == x for every valid UTF-8 case", function()
      for _, c in ipairs(golden) do
        local text = core.base64_decode(c.b64)
        if core.utf8_valid == nil or core.utf8_valid(text) then
          if not c.name:find("^invalid") and c.name ~= "all_bytes" and c.name ~= "random_bytes_1k" then
            for _, enc in ipairs(ENCODINGS) do
              assert.are.equal(text, tokens.decode(tokens.encode(text, enc), enc), c.name)
            end
          end
        end
      end
    end)
  end)

  describe("against live tiktoken (node)", function()
    -- random strings from pieces the pre-tokeniser treats differently
    local ATOMS = {
      " ", "  ", "\t", "\n", "\r\n", "\r", "\u{a0}", "\u{3000}", "\u{2028}", "\u{85}", "\u{180e}", "\u{200b}",
      "a", "Z", "hello", "World", "HTTP", "é", "ß", "ſ", "Ǆ", "ǅ", "ﬁ", "\u{301}", "\u{308}", "\u{93f}", "\u{e34}",
      "1", "42", "2024", "٣", "²", "Ⅻ", "½",
      "!", "?", ".", ",", "'", "'s", "'T", "'ll", "'RE", "\"", "/", "//", "\\", "-", "_", "(", ")", "{", "}", "$", "#",
      "<|endoftext|>", "<|fim_prefix|>",
      "我", "的", "日本", "한", "ع", "ש", "क", "ก", "🎉", "👍🏽", "🇫🇷", "‍", "❤️", "\0", "\x01", "\x7f",
      "\xff", "\x80", "\xc3", "\xe2\x82", "\xed\xa0\x80", "\xf0\x9f", "\xf4\x90\x80\x80", "\xc0\xaf",
    }
    local function random_input(rng_n)
      local parts = {}
      for i = 1, rng_n do parts[i] = ATOMS[math.random(#ATOMS)] end
      if math.random(4) == 1 then -- a run
        parts[#parts + 1] = string.rep(ATOMS[math.random(#ATOMS)], math.random(50, 400))
      end
      return table.concat(parts)
    end

    it("random inputs: same ids for both encodings", function()
      local seed = tonumber(os.getenv("GENAUDIT_TOKENS_SEED") or "") or os.time()
      math.randomseed(seed)
      local inputs = {}
      for i = 1, 400 do inputs[i] = random_input(math.random(1, 60)) end
      for _ = 1, 40 do -- raw random bytes too
        local b = {}
        for j = 1, math.random(1, 200) do b[j] = string.char(math.random(0, 255)) end
        inputs[#inputs + 1] = table.concat(b)
      end
      local want = tiktoken_ids(inputs)
      for i, text in ipairs(inputs) do
        for _, enc in ipairs(ENCODINGS) do
          local ids = assert(tokens.encode(text, enc))
          local d = first_diff(ids, want[i][enc])
          assert.is_nil(d, ("seed %d input %d (%s) %s: first differing id at %s"):format(seed, i, show(text), enc,
            tostring(d)))
          assert.are.equal(#want[i][enc], tokens.count(text, enc))
          d = first_diff(assert(tokens.load(enc)):encode(text, "pcre2"), want[i][enc])
          assert.is_nil(d, ("seed %d input %d (%s) %s, pcre2: first differing id at %s"):format(seed, i, show(text),
            enc, tostring(d)))
        end
      end
    end)

  end)

  describe("every Unicode scalar value (tiktoken's ids, spec/fixtures/tokens/unicode.json)", function()
    local function utf8_char(cp)
      if cp < 0x80 then return string.char(cp) end
      if cp < 0x800 then return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64) end
      if cp < 0x10000 then
        return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
      end
      return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
        0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
    end
    it("same ids in letter, case and digit contexts, chunk by chunk", function()
      local chunks = cjson.decode(read("spec/fixtures/tokens/unicode.json"))
      assert.are.equal(34, #chunks)
      for _, c in ipairs(chunks) do
        local parts = {}
        for cp = c.first, c.last do
          if cp < 0xD800 or cp > 0xDFFF then
            local ch = utf8_char(cp)
            parts[#parts + 1] = ch .. "'s a" .. ch .. "A 1" .. ch .. ch .. "1 "
          end
        end
        local text = table.concat(parts)
        assert.are.equal(c.bytes, #text)
        for _, enc in ipairs(ENCODINGS) do
          for _, pretok in ipairs({ "scanner", "pcre2" }) do
            local ids = assert(assert(tokens.load(enc)):encode(text, pretok))
            assert.are.equal(c[enc].count, #ids, ("%s %s U+%04X..U+%04X"):format(enc, pretok, c.first, c.last))
            assert.are.equal(c[enc].ids_sha256, core.sha256(table.concat(ids, ",")),
              ("%s %s U+%04X..U+%04X"):format(enc, pretok, c.first, c.last))
          end
        end
      end
    end)
  end)

  describe("the two pre-tokenisers (scanner and PCRE2) split identically", function()
    local provider = require("spec.support.provider")
    local function utf8_char(cp) -- works on 5.4 and LuaJIT
      if cp < 0x80 then return string.char(cp) end
      if cp < 0x800 then return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64) end
      if cp < 0x10000 then
        return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
      end
      return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
        0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
    end
    local function esc(s)
      return (s:gsub("[^\32-\126]", function(ch) return string.format("\\x%02x", ch:byte()) end))
    end
    -- nil, or a message naming the first piece that differs
    local function differs(e, text)
      local i, a, b = e:diff_pretokenizers(text)
      if i == nil then return nil end
      local fixed = table.concat(e:pieces(text, "scanner"))
      local function piece(r) return r[1] and esc(fixed:sub(r[1] + 1, r[2])) or "(none)" end
      return ("%s: piece %d: scanner '%s' vs pcre2 '%s' in '%s'"):format(e:name(), i, piece(a), piece(b),
        esc(text:sub(1, 120)))
    end

    it("the default is the scanner; each object and call can choose", function()
      for _, enc in ipairs(ENCODINGS) do
        local e = assert(tokens.load(enc))
        assert.are.equal("scanner", e:pretokenizer())
        local p = assert(core.bpe_load(enc, read(tokens.rank_file(enc)), "pcre2"))
        assert.are.equal("pcre2", p:pretokenizer())
        local text = "Hello, world! It's 2024: 你好 👍🏽\n\n  x"
        assert.are.same(e:encode(text), p:encode(text))
        assert.are.same(e:encode(text, "pcre2"), p:encode(text, "scanner"))
        assert.are.same(e:pieces(text), p:pieces(text))
        assert.are.equal(#e:pieces(text), e:count_pieces(text, "pcre2"))
        assert.has_error(function() e:count(text, "re2") end)
        assert.has_error(function() core.bpe_load(enc, "{}", "re2") end)
        p:close()
      end
    end)

    it("GENAUDIT_PRETOKENIZER picks the default (and a bad value is a CONFIG error)", function()
      local build = os.getenv("GENAUDIT_BUILD") or "build/lua54"
      local script = "package.path='./lua/?.lua;'..package.path; package.cpath='./" .. build
        .. "/?.so;'..package.cpath; local t=require('genaudit.tokens'); local e,err,code=t.load('cl100k_base');"
        .. " io.write(e and e:pretokenizer() or (code .. ' ' .. err))"
      for value, want in pairs({ pcre2 = "^pcre2$", scanner = "^scanner$", [""] = "^scanner$",
                                 PCRE = "^CONFIG CONFIG: GENAUDIT_PRETOKENIZER must be" }) do
        local p = assert(io.popen("GENAUDIT_PRETOKENIZER='" .. value .. "' " .. provider.interpreter() .. " -e \""
          .. script .. "\" 2>&1"))
        local out = p:read("*a")
        p:close()
        assert.is_truthy(out:find(want), value .. ": " .. out)
      end
    end)

    it("same pieces on random inputs (invalid UTF-8, long runs, emoji, marks, CJK, every class)", function()
      local seed = tonumber(os.getenv("GENAUDIT_TOKENS_SEED") or "") or os.time()
      math.randomseed(seed)
      local ATOMS = {
        " ", "  ", "\t", "\n", "\r\n", "\r", "\v", "\f", "\u{a0}", "\u{3000}", "\u{2028}", "\u{85}", "\u{180e}",
        "\u{200b}", "a", "Z", "hello", "World", "HTTP", "é", "ß", "ſ", "Ǆ", "ǅ", "ﬁ", "ʰ", "ー", "\u{301}", "\u{308}",
        "\u{93f}", "\u{e34}", "\u{20dd}", "1", "42", "2024", "٣", "²", "Ⅻ", "½", "!", "?", ".", ",", "'", "'s", "'S",
        "'ſ", "'T", "'ll", "'lL", "'RE", "'Ve", "'m", "'D", "\"", "/", "//", "\\", "-", "_", "(", "$", "#",
        "<|endoftext|>",
        "我", "的", "日本", "한", "ع", "ש", "क", "ก", "🎉", "👍🏽", "🇫🇷", "\u{200d}", "❤️", "\0", "\x01", "\x7f",
        "\xff", "\x80", "\xc3", "\xe2\x82", "\xed\xa0\x80", "\xf0\x9f", "\xf4\x90\x80\x80", "\xc0\xaf",
        -- Unicode 15-16 additions (listed in the classes): a letter, a digit, marks
        "\u{1C89}", "\u{1C8A}", "\u{10D40}", "\u{113B8}", "\u{16D40}", "\u{1E5F1}",
      }
      for _, enc in ipairs(ENCODINGS) do
        local e = assert(tokens.load(enc))
        for i = 1, 3000 do
          local parts = {}
          for j = 1, math.random(1, 24) do parts[j] = ATOMS[math.random(#ATOMS)] end
          if i % 10 == 0 then parts[#parts + 1] = string.rep(ATOMS[math.random(#ATOMS)], math.random(50, 600)) end
          local text = table.concat(parts)
          local d = differs(e, text)
          assert.is_nil(d, ("seed %d input %d: %s"):format(seed, i, tostring(d)))
        end
        for i = 1, 300 do -- raw random bytes
          local b = {}
          for j = 1, math.random(1, 300) do b[j] = string.char(math.random(0, 255)) end
          local d = differs(e, table.concat(b))
          assert.is_nil(d, ("seed %d bytes %d: %s"):format(seed, i, tostring(d)))
        end
      end
    end)

    it("same pieces for every Unicode scalar value in letter, case, mark, digit, space and quote contexts", function()
      local function ctx(ch)
        -- (the Unicode sweep above has ch's a ch A 1 ch ch 1 already)
        return "A" .. ch .. "a\u{301}" .. ch .. "中" .. ch .. "A'" .. ch .. ch .. " \n" .. ch .. "!"
      end
      for _, enc in ipairs(ENCODINGS) do
        local e = assert(tokens.load(enc))
        for base = 0, 0x10FFFF, 0x8000 do
          local parts = {}
          for cp = base, math.min(base + 0x7FFF, 0x10FFFF) do
            if cp < 0xD800 or cp > 0xDFFF then parts[#parts + 1] = ctx(utf8_char(cp)) end
          end
          local d = differs(e, table.concat(parts))
          assert.is_nil(d, ("U+%04X..: %s"):format(base, tostring(d)))
        end
      end
    end)

    it("the scanner's tables are what tools/bpe-tables.c derives from this PCRE2 (and its Unicode version)", function()
      local p = assert(io.popen("env -u LD_PRELOAD make -s build/tools/bpe-tables >/dev/null 2>&1"
        .. " && env -u LD_PRELOAD build/tools/bpe-tables"))
      local out = p:read("*a")
      local ok = p:close()
      assert.is_true(ok and #out > 0, "make build/tools/bpe-tables failed")
      assert.is_true(out == read("csrc/ga_bpe_tables.h"),
        "csrc/ga_bpe_tables.h is stale for this PCRE2: run make bpe-tables")
      local info = core.bpe_scanner_info()
      assert.are.equal(out:match('GA_BPE_TABLES_UNICODE "([^"]+)"'), info.unicode)
      assert.are.equal(tonumber(out:match("GA_BPE_TABLES_BYTES (%d+)")), info.table_bytes)
    end)

    it("long runs of the class pairs the scanner gives back characters over", function()
      -- o200k: "中" is upper and lower, "A" upper only: [UP]*[LO]+ takes the
      -- run, gives back to the last 中; the rest is the next piece.
      for _, unit in ipairs({ "中AAAA", "\u{301}AAAA", " \t", "A\u{301}", "a'", "'s" }) do
        local s = string.rep(unit, math.floor(200000 / #unit))
        for _, enc in ipairs(ENCODINGS) do
          local e = assert(tokens.load(enc))
          assert.is_nil(differs(e, s), unit)
          assert.are.equal(e:count(s, "pcre2"), e:count(s, "scanner"), unit)
        end
      end
    end)
  end)

  describe("API", function()
    it("encoding_for(): OpenAI families, provider prefixes, others nil", function()
      local o, c = "o200k_base", "cl100k_base"
      local cases = {
        ["gpt-4o"] = o, ["gpt-4o-mini-2024-07-18"] = o, ["openai/gpt-4o-mini"] = o, ["azure/gpt-4.1"] = o,
        ["gpt-4.5-preview"] = o, ["gpt-5"] = o, ["gpt-5.2-pro"] = o, ["o1"] = o, ["o1-pro"] = o, ["o3-mini"] = o,
        ["o4-mini"] = o, ["chatgpt-4o-latest"] = o, ["openrouter/openai/gpt-5-mini"] = o,
        ["ft:gpt-4o-mini-2024-07-18:org::abc"] = o,
        ["gpt-4"] = c, ["gpt-4-turbo"] = c, ["gpt-4-0613"] = c, ["gpt-3.5-turbo"] = c, ["gpt-3.5-turbo-0125"] = c,
        ["azure/gpt-35-turbo"] = c, ["text-embedding-3-small"] = c, ["text-embedding-ada-002"] = c,
        o200k_base = o, cl100k_base = c,
      }
      for model, want in pairs(cases) do assert.are.equal(want, tokens.encoding_for(model), model) end
      local others = { "claude-3-5-sonnet", "anthropic/claude-opus-4", "gemini-2.5-pro", "llama-3", "x", "" }
      for _, model in ipairs(others) do
        assert.is_nil(tokens.encoding_for(model), model)
      end
    end)

    it("count() by model name equals count() by encoding", function()
      local text = "Hello, world! Ünïcödé 你好"
      assert.are.equal(tokens.count(text, "o200k_base"), tokens.count(text, "openai/gpt-4o"))
      assert.are.equal(tokens.count(text, "cl100k_base"), tokens.count(text, "gpt-4"))
      assert.are.equal(3, tokens.count("Hello, world", "gpt-4o"))
      assert.are.equal(0, tokens.count("", "gpt-4o"))
    end)

    it("unknown model or encoding -> nil, UNKNOWN_ENCODING", function()
      for _, fn in ipairs({ "count", "encode" }) do
        local v, err, code = tokens[fn]("hi", "claude-3-opus")
        assert.is_nil(v)
        assert.are.equal("UNKNOWN_ENCODING", code)
        assert.matches("^UNKNOWN_ENCODING: ", err)
      end
      local v, _, code = tokens.decode({ 1 }, "p50k_base")
      assert.is_nil(v)
      assert.are.equal("UNKNOWN_ENCODING", code)
      v, _, code = tokens.count_messages({ { role = "user", content = "hi" } }, "gemini-2.5-pro")
      assert.is_nil(v)
      assert.are.equal("UNKNOWN_ENCODING", code)
    end)

    it("decode(): special ids and bad ids", function()
      assert.are.equal("<|endoftext|>", tokens.decode({ 199999 }, "o200k_base"))
      assert.are.equal("<|endoftext|>", tokens.decode({ 100257 }, "cl100k_base"))
      local v, err, code = tokens.decode({ 1, 300000 }, "o200k_base")
      assert.is_nil(v)
      assert.are.equal("BAD_TOKEN", code)
      assert.matches("ids%[2%]", err)
      assert.are.equal("", tokens.decode({}, "gpt-4o"))
    end)

    it("special-token text is ordinary text", function()
      local ids = tokens.encode("<|endoftext|>", "o200k_base")
      assert.is_true(#ids > 1)
      for _, id in ipairs(ids) do assert.is_true(id < 199998) end
    end)

    it("programmer misuse raises", function()
      assert.has_error(function() tokens.count(nil, "gpt-4o") end)
      assert.has_error(function() tokens.count("x", nil) end)
      assert.has_error(function() tokens.decode("x", "gpt-4o") end)
      assert.has_error(function() tokens.count_messages("x", "gpt-4o") end)
    end)

    it("count_messages(): the cookbook's 3 per message, +1 per name, +3 reply priming", function()
      local msgs = {
        { role = "system", content = "You are a helpful, pattern-following assistant." },
        { role = "user", name = "example_user", content = "New synergies will help drive top-line growth." },
        { role = "assistant", content = "Things working well together will increase revenue." },
      }
      for _, model in ipairs({ "gpt-4o", "gpt-4", "gpt-3.5-turbo-0613", "openai/gpt-4o-mini" }) do
        local want = 3
        for _, m in ipairs(msgs) do
          want = want + 3 + tokens.count(m.role, model) + tokens.count(m.content, model)
          if m.name then want = want + 1 + tokens.count(m.name, model) end
        end
        assert.are.equal(want, tokens.count_messages(msgs, model), model)
      end
      -- the cookbook's printed figure for these messages' first three (gpt-4o family)
      assert.are.equal(3 + 3 + tokens.count("user", "gpt-4o") + tokens.count("hi", "gpt-4o"),
        tokens.count_messages({ { role = "user", content = "hi" } }, "gpt-4o"))
      -- content parts: text parts count, others do not
      assert.are.equal(tokens.count_messages({ { role = "user", content = "ab" } }, "gpt-4o"),
        tokens.count_messages({ { role = "user", content = { { type = "text", text = "a" }, { type = "image_url" },
          { type = "text", text = "b" } } } }, "gpt-4o"))
      assert.are.equal(3, tokens.count_messages({}, "gpt-4o"))
    end)

    it("encodings are loaded once and shared; memory per encoding is reported", function()
      local a = assert(tokens.load("o200k_base"))
      assert.are.equal(a, tokens.load("o200k_base"))
      local mo, mc = tokens.memory("o200k_base"), tokens.memory("cl100k_base")
      assert.is_true(mo > 2e6 and mo < 20e6, tostring(mo))
      assert.is_true(mc > 1e6 and mc < 10e6, tostring(mc))
    end)

    it("rejects a broken rank file", function()
      local v, err, code = core.bpe_load("o200k_base", '{"bpe_ranks":"! 0 IQ== !!!"}')
      assert.is_nil(v)
      assert.are.equal("BAD_RANKS", code)
      assert.is_string(err)
      local _
      v, _, code = core.bpe_load("p50k_base", "{}")
      assert.is_nil(v)
      assert.are.equal("BAD_RANKS", code)
    end)
  end)

  describe("long runs", function()
    it("a 1 MB run of one character finishes (spaces, letters, digits, punctuation, CJK)", function()
      for _, unit in ipairs({ " ", "a", "7", "!", "\n", "的", "\xff" }) do
        local s = string.rep(unit, math.floor(1000000 / #unit))
        for _, enc in ipairs(ENCODINGS) do
          local n = assert(tokens.count(s, enc))
          assert.is_true(n > 0 and n <= #s)
          assert.are.equal(n, #tokens.encode(s, enc))
        end
      end
    end)
  end)
end)
