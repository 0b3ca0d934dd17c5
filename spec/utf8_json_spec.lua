-- spec/utf8_json_spec.lua
-- Owns: JSON output that always parses (issue 11, class 9). The JSON encoder
-- of the core (core.json_encode, the metric documents and request_params)
-- emits only valid UTF-8: each maximal ill-formed subpart becomes U+FFFD
-- (Unicode's "substitution of maximal subparts"). `genaudit export --format
-- jsonl` writes lines a strict parser (python3's json over a strict UTF-8
-- decode) accepts, and keeps TEXT columns that are not UTF-8 byte for byte
-- under `<column>_base64`. SQLite and PostgreSQL (#postgresql).
local cjson = require("cjson")
local core = require("genaudit.core")
local genaudit = require("genaudit")
local report = require("genaudit.report")
local pg = require("spec.support.pg")
local tmp = require("spec.support.tmp")
local util = require("spec.support.util")
local q, cli = util.q, util.cli

local R = "\239\191\189" -- U+FFFD REPLACEMENT CHARACTER in UTF-8

-- { name, input bytes, what the encoder writes for them (inside the quotes) }
local INVALID = {
  { "an overlong 2-byte form of '/'", "a\192\175b", "a" .. R .. R .. "b" },
  { "the overlong lead C1", "\193\191", R .. R },
  { "an overlong 3-byte form", "\224\128\175", R .. R .. R },
  { "an overlong 4-byte form", "\240\128\128\175", R .. R .. R .. R },
  { "a high surrogate U+D800", "x\237\160\128", "x" .. R .. R .. R },
  { "a low surrogate U+DFFF", "\237\191\191y", R .. R .. R .. "y" },
  { "U+110000, above U+10FFFF", "\244\144\128\128", R .. R .. R .. R },
  { "the lead F5 (above U+10FFFF)", "\245\128\128\128", R .. R .. R .. R },
  { "the bytes FE and FF", "\254\255", R .. R },
  { "a lone continuation byte", "\128", R },
  { "a 3-byte sequence truncated at the end", "euro \226\130", "euro " .. R },
  { "a 4-byte sequence truncated before ASCII", "\240\159\154x", R .. "x" },
  { "a 2-byte lead at the end", "\195", R },
  -- The Unicode Standard 15.0, section 3.9, table 3-8
  { "the standard's own example", "a\241\128\128\225\128\194b\128c\128\191d",
    "a" .. R .. R .. R .. "b" .. R .. "c" .. R .. R .. "d" },
  { "invalid bytes past the 8-byte fast path", string.rep("p", 19) .. "\255" .. string.rep("q", 17),
    string.rep("p", 19) .. R .. string.rep("q", 17) },
}

-- Well-formed sequences at the edges of each range: kept exactly.
local VALID = {
  "\194\128", "\223\191", "\224\160\128", "\237\159\191", "\238\128\128", "\239\191\191", "\240\144\128\128",
  "\244\143\191\191", "caf\195\169 \226\130\172 \240\159\154\128", R,
}

-- All invalid inputs, concatenated (one string holding every class).
local ALL_BAD, ALL_BAD_OUT = {}, {}
for i, c in ipairs(INVALID) do ALL_BAD[i], ALL_BAD_OUT[i] = c[2], c[3] end
ALL_BAD, ALL_BAD_OUT = table.concat(ALL_BAD, "|"), table.concat(ALL_BAD_OUT, "|")

-- Parses every line of `path` with python3's json over a strict UTF-8 decode
-- (cjson accepts invalid UTF-8); returns the lines as Lua tables, each
-- `<name>_base64` value replaced by the hex of the bytes it decodes to.
local function strict_jsonl(path)
  local script = table.concat({
    "import base64, json, sys",
    "out = []",
    "for line in open(sys.argv[1], encoding='utf-8', errors='strict'):",
    "    o = json.loads(line)",
    "    for k in [k for k in o if k.endswith('_base64')]:",
    "        o[k] = base64.b64decode(o[k], validate=True).hex()",
    "    out.append(o)",
    "print(json.dumps(out, ensure_ascii=True))",
  }, "\n")
  -- python3 is a foreign tool: not under make check's preloaded sanitizer (whose leak report at exit is its exit code)
  local p = assert(io.popen("env -u LD_PRELOAD python3 -c " .. q(script) .. " " .. q(path) .. " 2>&1; echo \"rc=$?\""))
  local all = p:read("*a")
  p:close()
  local out, rc = all:match("^(.*)rc=(%d+)\n$")
  assert.equal("0", rc, "python3 refused the export: " .. tostring(out))
  return cjson.decode(out) -- pure ASCII: cjson decodes it exactly
end

local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end

-- A snapshot whose nested strings (values and keys) hold every class of
-- invalid UTF-8, and each of the valid edge sequences.
local function nested_row(over)
  local row = {
    org_id = "org-u", user_id = "u-1", platform = "linkedin", template_id = "tpl-utf8",
    final_system_prompt = "system " .. table.concat(VALID, " "), final_user_prompt = "user \226\156\147",
    content = "caf\195\169",
    token_usage = { prompt_tokens = 3, completion_tokens = 2, note = ALL_BAD },
    performance = { total_latency_ms = 2.5, provider_latency_ms = 1.5, model_identifier = "model-\255" },
    repair_info = { repair_count = 1, repair_types = { "slug-\192\175" },
      repair_log = { { feedback = ALL_BAD, ["key-\237\160\128"] = 1 } } },
    request_params = { stop = { "\226\130", "ok" }, nested = { deeper = ALL_BAD },
      ["\244\144\128\128"] = "bad key", valid = table.concat(VALID, " ") },
  }
  for k, v in pairs(over or {}) do row[k] = v end
  return row
end

local DOCS = { "token_metrics", "performance_metrics", "repair_metrics", "request_params" }

-- The checks both stores share: the stored documents are valid UTF-8 and hold
-- the substituted text; `json_path(doc, path)` reads a value with the store's
-- own JSON functions.
local function check_documents(r, json_path)
  for _, d in ipairs(DOCS) do
    assert.is_string(r[d], d)
    assert.is_true(core.utf8_valid(r[d]), d .. " is not valid UTF-8: " .. r[d])
  end
  local function has(doc, text) assert.is_truthy(r[doc]:find(text, 1, true), doc .. ": " .. r[doc]) end
  has("token_metrics", '"note":"' .. ALL_BAD_OUT .. '"')
  has("performance_metrics", '"model_identifier":"model-' .. R .. '"')
  has("repair_metrics", '"repair_types":["slug-' .. R .. R .. '"]')
  has("repair_metrics", '"feedback":"' .. ALL_BAD_OUT .. '"')
  has("repair_metrics", '"key-' .. R .. R .. R .. '":1')
  has("request_params", '"stop":["' .. R .. '","ok"]')
  has("request_params", '"' .. R .. R .. R .. R .. '":"bad key"')
  has("request_params", '"valid":"' .. table.concat(VALID, " ") .. '"')
  assert.same({ ALL_BAD_OUT, "model-" .. R, table.concat(VALID, " ") },
    { json_path("request_params", "nested.deeper"), json_path("performance_metrics", "model_identifier"),
      json_path("request_params", "valid") })
end

-- The strictly parsed export lines, by id.
local function export_lines(db_arg, dir)
  local file = dir .. "/out.jsonl"
  local out, err, rc = cli("--db " .. q(db_arg) .. " export --format jsonl --out " .. q(file))
  assert.same({ "", 0 }, { err, rc }, out)
  local by_id = {}
  for _, o in ipairs(strict_jsonl(file)) do by_id[o.id] = o end
  return by_id
end

-- An exported line keeps the embedded documents as JSON objects.
local function check_exported_documents(o)
  assert.equal(ALL_BAD_OUT, o.token_metrics.note)
  assert.equal("model-" .. R, o.performance_metrics.model_identifier)
  assert.same({ "slug-" .. R .. R }, o.repair_metrics.repair_types)
  assert.equal(ALL_BAD_OUT, o.request_params.nested.deeper)
  assert.same({ R, "ok" }, o.request_params.stop)
end

describe("JSON output is always valid UTF-8", function()
  describe("core.json_encode()", function()
    for _, c in ipairs(INVALID) do
      it("writes U+FFFD for each maximal invalid subpart: " .. c[1], function()
        local s = assert(core.json_encode(c[2]))
        assert.equal('"' .. c[3] .. '"', s)
        assert.is_true(core.utf8_valid(s))
      end)
    end

    it("keeps well-formed sequences at the edges of every range exactly", function()
      for _, v in ipairs(VALID) do assert.equal('"' .. v .. '"', core.json_encode(v)) end
    end)

    it("escapes and substitutes in one string: NUL stays \\u0000, a quote after an invalid byte", function()
      assert.equal('"\\u0000' .. R .. '\\"' .. R .. R .. R .. '\\n"', core.json_encode("\0\255\"\237\160\128\n"))
    end)

    it("substitutes in object keys and nested values too", function()
      assert.equal('{"k' .. R .. '":["' .. R .. R .. '",{"x":"' .. R .. '"}]}',
        core.json_encode({ ["k\255"] = { "\192\175", { x = "\128" } } }))
    end)
  end)

  describe("core.utf8_valid() and core.base64()", function()
    it("tells well-formed UTF-8 (NUL bytes included) from every invalid class", function()
      for _, v in ipairs(VALID) do assert.is_true(core.utf8_valid(v)) end
      assert.is_true(core.utf8_valid("a\0b"))
      assert.is_true(core.utf8_valid(""))
      for _, c in ipairs(INVALID) do assert.is_false(core.utf8_valid(c[2]), c[1]) end
    end)

    it("encodes the RFC 4648 test vectors and any bytes", function()
      assert.same({ "", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy", "AP/+" },
        { core.base64(""), core.base64("f"), core.base64("fo"), core.base64("foo"), core.base64("foob"),
          core.base64("fooba"), core.base64("foobar"), core.base64("\0\255\254") })
    end)
  end)

  describe("report.json_object()", function()
    it("writes a value that is not UTF-8 as <column>_base64, valid UTF-8 and NUL bytes as a string", function()
      assert.equal('{"id":"x","content_base64":"/w==","error":"a\\u0000b","final_user_prompt":"caf\195\169"}',
        report.json_object({ id = "x", content = "\255", error = "a\0b", final_user_prompt = "caf\195\169" },
          { "id", "content", "error", "final_user_prompt" }))
    end)

    it("embeds a JSON document verbatim only when it is valid UTF-8", function()
      assert.equal('{"request_params":{"a":1},"token_metrics_base64":"eyJrIjoi/yJ9"}',
        report.json_object({ request_params = '{"a":1}', token_metrics = '{"k":"\255"}' },
          { "request_params", "token_metrics" }, true))
    end)
  end)

  describe("on SQLite", function()
    local dir, db, store
    before_each(function()
      dir = tmp.dir()
      db = dir .. "/u.db"
      store = assert(genaudit.open("sqlite:" .. db))
    end)
    after_each(function()
      store:close()
      tmp.rm(dir)
    end)

    local function json_path(id)
      return function(doc, path)
        return store:query("SELECT json_extract(" .. doc .. ", ?) AS v FROM generation_snapshots WHERE id = ?",
          { "$." .. path, id })[1].v
      end
    end

    for _, mode in ipairs({ "sync", "async" }) do
      it("stores valid UTF-8 documents that json_valid() accepts (" .. mode .. ")", function()
        if mode == "async" then assert(store:start_async()) end
        local id = assert(store:persist_generation(nested_row()))
        assert(store:flush())
        local r = store:query("SELECT * FROM generation_snapshots WHERE id = ?", { id })[1]
        check_documents(r, json_path(id))
        assert.same({ { a = 1, b = 1, c = 1, d = 1 } }, store:query("SELECT json_valid(token_metrics) AS a,"
          .. " json_valid(performance_metrics) AS b, json_valid(repair_metrics) AS c,"
          .. " json_valid(request_params) AS d FROM generation_snapshots"))
        assert.equal("model-" .. R, r.model_identifier) -- the generated column reads the document
      end)
    end

    it("keeps TEXT columns byte for byte, and exports them as <column>_base64 in lines a strict parser accepts",
      function()
        local nul = "a\0b\0"
        local id1 = assert(store:persist_generation(nested_row{ final_user_prompt = ALL_BAD, content = ALL_BAD .. nul,
          final_system_prompt = nul, platform = "plat\255", template_id = "t\0\255" }))
        local id2 = assert(store:persist_generation(nested_row{ status = "failed",
          error = "PROVIDER_ERROR: \237\160\128 \0" }))
        local r = store:query("SELECT * FROM generation_snapshots WHERE id = ?", { id1 })[1]
        assert.same({ ALL_BAD, ALL_BAD .. nul, nul, "plat\255", "t\0\255" },
          { r.final_user_prompt, r.content, r.final_system_prompt, r.platform, r.template_id })
        local lines = export_lines(db, dir)
        local o1, o2 = lines[id1], lines[id2]
        assert.same({ hex(ALL_BAD), hex(ALL_BAD .. nul), hex("plat\255"), hex("t\0\255") },
          { o1.final_user_prompt_base64, o1.content_base64, o1.platform_base64, o1.template_id_base64 })
        for _, k in ipairs({ "final_user_prompt", "content", "platform", "template_id" }) do
          assert.is_nil(o1[k], k) -- the plain key is replaced, not doubled
        end
        assert.equal(nul, o1.final_system_prompt) -- NUL bytes are valid JSON: \u0000, in the plain key
        assert.same({ hex("PROVIDER_ERROR: \237\160\128 \0"), nil }, { o2.error_base64, o2.error })
        assert.same({ "caf\195\169", "user \226\156\147", "failed" }, { o2.content, o2.final_user_prompt, o2.status })
        check_exported_documents(o1)
        check_exported_documents(o2)
        local out, err, rc = cli("--db " .. q(db) .. " --json show " .. id1) -- the same encoding
        assert.same({ "", 0 }, { err, rc })
        tmp.write(dir .. "/show.json", out)
        assert.same(o1, strict_jsonl(dir .. "/show.json")[1])
      end)

    it("exports a row stored before this release (raw invalid UTF-8 in a document) as <column>_base64", function()
      local id = assert(store:persist_generation(nested_row()))
      local legacy = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
      -- a row of an older release: written without a seal (as before migration 0008)
      tmp.write(dir .. "/legacy.sql", "DROP TRIGGER generation_snapshots_sealed;"
        .. " INSERT INTO generation_snapshots (id, org_id, user_id, platform, template_id,"
        .. " final_system_prompt, final_user_prompt, token_metrics, performance_metrics, repair_metrics) VALUES ('"
        .. legacy .. "', 'o', 'u', 'p', 't', 's', 'u', CAST(X'7b226e223a22ff227d' AS TEXT),"
        .. " '{\"total_latency_ms\":1,\"provider_latency_ms\":1}', '{}');\n")
      local out, ok = pg.sh("sqlite3 " .. q(db) .. " < " .. q(dir .. "/legacy.sql"))
      assert(ok, out)
      local lines = export_lines(db, dir)
      assert.equal(hex('{"n":"\255"}'), lines[legacy].token_metrics_base64)
      assert.is_nil(lines[legacy].token_metrics)
      assert.same({ total_latency_ms = 1, provider_latency_ms = 1 }, lines[legacy].performance_metrics)
      check_exported_documents(lines[id])
    end)
  end)
end)

pg.describe("JSON output is always valid UTF-8 on PostgreSQL #postgresql", function()
  local store, schema, dir
  before_each(function()
    schema = pg.schema()
    store = assert(pg.open(schema))
    dir = tmp.dir()
  end)
  after_each(function()
    store:close()
    tmp.rm(dir)
  end)
  teardown(pg.drop_schemas)

  local function json_path(id)
    return function(doc, path)
      local keys = {}
      for k in path:gmatch("[^.]+") do keys[#keys + 1] = k end
      return store:query("SELECT " .. doc .. " #>> CAST(? AS text[]) AS v FROM generation_snapshots WHERE id = ?",
        { "{" .. table.concat(keys, ",") .. "}", id })[1].v
    end
  end

  for _, mode in ipairs({ "sync", "async" }) do
    it("stores a row whose nested strings hold invalid UTF-8, as valid json (" .. mode .. ")", function()
      if mode == "async" then assert(store:start_async()) end
      local id = assert(store:persist_generation(nested_row()))
      assert(store:flush())
      local r = store:query("SELECT * FROM generation_snapshots WHERE id = ?", { id })[1]
      check_documents(r, json_path(id))
      assert.equal("model-" .. R, r.model_identifier) -- the STORED generated column read the json
    end)
  end

  it("still refuses TEXT that is not UTF-8, and a NUL byte in a document (json's ->> cannot extract \\u0000)",
    function()
      assert.same({ nil, "INVALID: final_user_prompt: PostgreSQL text must be valid UTF-8", "INVALID" },
        { store:persist_generation(nested_row{ final_user_prompt = ALL_BAD }) })
      assert.same({ nil, "INVALID: request_params: PostgreSQL text cannot contain NUL bytes", "INVALID" },
        { store:persist_generation(nested_row{ request_params = { stop = "\0\255" } }) })
      assert.equal(0, store:query("SELECT count(*) AS n FROM generation_snapshots")[1].n)
    end)

  it("exports lines a strict parser accepts", function()
    local id = assert(store:persist_generation(nested_row()))
    local o = export_lines(pg.url_for(schema), dir)[id]
    check_exported_documents(o)
    assert.equal("system " .. table.concat(VALID, " "), o.final_system_prompt)
  end)
end)
