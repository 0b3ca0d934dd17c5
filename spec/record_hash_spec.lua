-- spec/record_hash_spec.lua
-- Owns: core.record_hash / core.record_fields (csrc/ga_chain.c), the
-- canonical record encoding, checked against a second implementation written
-- from the README's definition in Python (hashlib, no genaudit code).

local core = require("genaudit.core")
local tmp = require("spec.support.tmp")
local q = require("spec.support.util").q

local function tohex(s) return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end

-- The README's definition, in Python: fields arrive as name=hex lines (or
-- name=~ for NULL), payload fields as their bytes; prints hash and encoding.
local PY = [[
import hashlib, sys
PAYLOAD = {"final_system_prompt", "final_user_prompt", "content", "drafts"}
ORDER = ["id", "chain_id", "chain_seq", "prev_hash", "created_at", "org_id", "user_id", "platform",
         "template_id", "template_version", "status", "error", "replay_of", "request_params",
         "token_metrics", "performance_metrics", "repair_metrics", "final_system_prompt",
         "final_user_prompt", "content", "drafts"]
given = {}
for line in open(sys.argv[1]):
    name, _, v = line.rstrip("\n").partition("=")
    given[name] = None if v == "~" else bytes.fromhex(v)
enc = b"genaudit-record/1\n"
for name in ORDER:
    v = given.get(name)
    if name in PAYLOAD:
        name += ".sha256"
        if v is not None:
            v = hashlib.sha256(v).hexdigest().encode()
    enc += name.encode() + b"=" + (b"~" if v is None else str(len(v)).encode() + b":" + v) + b"\n"
print(hashlib.sha256(enc).hexdigest())
print(enc.hex())
]]

describe("core.record_hash", function()
  local dir
  setup(function()
    dir = tmp.dir()
    local f = assert(io.open(dir .. "/ref.py", "wb"))
    f:write(PY)
    f:close()
  end)
  teardown(function() tmp.rm(dir) end)

  local function python(t)
    local f = assert(io.open(dir .. "/in", "wb"))
    for _, d in ipairs(core.record_fields()) do
      local v = t[d.name]
      f:write(d.name, "=", v == nil and "~" or tohex(tostring(v)), "\n")
    end
    f:close()
    local p = assert(io.popen("env -u LD_PRELOAD python3 " .. q(dir .. "/ref.py") .. " " .. q(dir .. "/in")))
    local out = p:read("a")
    p:close()
    local h, e = out:match("^(%x+)\n(%x+)\n$")
    return h, e
  end

  it("lists the fields in the documented order, payloads marked", function()
    local names, payloads = {}, {}
    for i, d in ipairs(core.record_fields()) do
      names[i] = d.name
      if d.payload then payloads[#payloads + 1] = d.name end
    end
    assert.same({ "id", "chain_id", "chain_seq", "prev_hash", "created_at", "org_id", "user_id", "platform",
                  "template_id", "template_version", "status", "error", "replay_of", "request_params",
                  "token_metrics", "performance_metrics", "repair_metrics", "final_system_prompt",
                  "final_user_prompt", "content", "drafts" }, names)
    assert.same({ "final_system_prompt", "final_user_prompt", "content", "drafts" }, payloads)
  end)

  it("equals the independent implementation, NULLs, NUL bytes and non-UTF-8 included", function()
    local cases = {
      {},
      { id = "01J0000000000000000000000A", chain_id = "01J0000000000000000000000B", chain_seq = "1",
        prev_hash = ("0"):rep(64), created_at = "2026-12-02 10:00:00.123", org_id = "org", user_id = "42",
        platform = "linkedin", template_id = "launch-post", template_version = "7", status = "completed",
        token_metrics = '{"estimated_cost":0.000266}', performance_metrics = "{}", repair_metrics = "{}",
        final_system_prompt = "You are\0 a writer.", final_user_prompt = "caf\233 \255\254",
        content = ("long "):rep(20000), drafts = '["a","b"]' },
      { error = "", content = "", status = "failed", replay_of = "x=1:2\n~" },
    }
    for _, t in ipairs(cases) do
      local h, enc = core.record_hash(t)
      local ph, penc = python(t)
      assert.equal(penc, tohex(enc))
      assert.equal(ph, h)
      assert.equal(core.sha256(enc), h)
    end
  end)

  it("takes a payload as its bytes or as its digest, with the same hash", function()
    local t = { id = "x", content = "the post", final_user_prompt = "u" }
    local h = core.record_hash(t)
    assert.equal(h, (core.record_hash{ id = "x", content_sha256 = core.sha256("the post"),
                                       final_user_prompt_sha256 = core.sha256("u") }))
    assert.are_not.equal(h, (core.record_hash{ id = "x", content = "the post!", final_user_prompt = "u" }))
    -- NULL and empty differ; a field's bytes cannot slide into the next field
    assert.are_not.equal(core.record_hash{ error = "" }, core.record_hash{})
    assert.are_not.equal(core.record_hash{ org_id = "a", user_id = "bc" },
      core.record_hash{ org_id = "ab", user_id = "c" })
    assert.equal(core.record_hash{ chain_seq = 12 }, core.record_hash{ chain_seq = "12" })
  end)

  it("raises on misuse", function()
    assert.has_error(function() core.record_hash() end)
    assert.has_error(function() core.record_hash{ content = "a", content_sha256 = core.sha256("a") } end)
    assert.has_error(function() core.record_hash{ content_sha256 = "ABC" } end)
    assert.has_error(function() core.record_hash{ org_id = {} } end)
    assert.has_error(function() core.record_hash{ chain_seq = 1.5 } end)
    assert.has_error(function() core.record_hash{ chain_seq = 0 } end)
  end)
end)

-- verify() reads payload digests from the database: SQLite's
-- genaudit_sha256() (csrc/ga_store.c) must be the same SHA-256 as core.sha256
-- over the stored bytes, NUL bytes, multi-byte text and blobs included.
describe("genaudit_sha256() on SQLite", function()
  it("is core.sha256 of the value's bytes, NULL for NULL", function()
    local store = assert(require("genaudit").open("sqlite::memory:"))
    for _, v in ipairs({ "", "abc", "d\195\169j\195\160 \240\159\152\128", ("x"):rep(100000) }) do
      assert.equal(core.sha256(v), store:query("SELECT genaudit_sha256(?) AS h", { v })[1].h)
    end
    local r = store:query("SELECT genaudit_sha256(x'610062') AS b, genaudit_sha256(NULL) AS n")[1]
    assert.equal(core.sha256("a\0b"), r.b)
    assert.is_nil(r.n)
    store:close()
  end)
end)
