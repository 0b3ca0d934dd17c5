-- spec/ed25519_spec.lua
-- Owns: core.ed25519_* (csrc/ga_digest.c), the signatures on published
-- checkpoints: RFC 8032 test vectors, and interoperability both ways with the
-- openssl command-line tool (an implementation genaudit does not call).

local core = require("genaudit.core")
local tmp = require("spec.support.tmp")
local q = require("spec.support.util").q

local function fromhex(h) return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end)) end
local function tohex(s) return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end

local function write(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- Runs a shell command with the libasan preload of `make check` removed (it
-- is for genaudit's own processes); returns its exit status as a boolean.
local function sh(cmd)
  local ok = os.execute("env -u LD_PRELOAD " .. cmd .. " >/dev/null 2>&1")
  return ok == true or ok == 0
end

-- RFC 8032 section 7.1, tests 1, 2 and 3: secret seed, public key, message, signature.
local VECTORS = {
  { "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
      .. "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b" },
  { "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
    "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
      .. "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00" },
  { "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
    "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
    "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
      .. "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a" },
}

describe("core.ed25519", function()
  local dir
  setup(function() dir = tmp.dir() end)
  teardown(function() tmp.rm(dir) end)

  -- The PEM of a raw RFC 8032 seed, made by the openssl tool from the PKCS#8 DER.
  local function private_pem(seed_hex)
    local der = dir .. "/k.der"
    write(der, fromhex("302e020100300506032b657004220420" .. seed_hex))
    assert.is_true(sh("openssl pkey -inform DER -in " .. q(der) .. " -out " .. q(dir .. "/k.pem")))
    return read(dir .. "/k.pem")
  end

  it("gives the RFC 8032 signatures and public keys", function()
    for _, v in ipairs(VECTORS) do
      local sk = private_pem(v[1])
      local pk = assert(core.ed25519_public(sk))
      -- SubjectPublicKeyInfo DER = 12-byte prefix .. the 32 raw public key bytes
      local b64 = pk:match("%-%-%-%-%-BEGIN PUBLIC KEY%-%-%-%-%-\n(.-)\n%-%-%-%-%-END PUBLIC KEY")
      write(dir .. "/pk.b64", b64 .. "\n")
      assert.is_true(sh("openssl base64 -d -in " .. q(dir .. "/pk.b64") .. " -out " .. q(dir .. "/pk.der")))
      assert.equal(v[2], tohex(read(dir .. "/pk.der")):sub(25))
      local sig = assert(core.ed25519_sign(sk, fromhex(v[3])))
      assert.equal(v[4], tohex(sig))
      assert.is_true(core.ed25519_verify(pk, fromhex(v[3]), sig))
    end
  end)

  it("makes keys and signatures the openssl tool accepts, and accepts its", function()
    local sk, pk = core.ed25519_keygen()
    assert.truthy(sk:find("^%-%-%-%-%-BEGIN PRIVATE KEY%-%-%-%-%-\n"))
    assert.truthy(pk:find("^%-%-%-%-%-BEGIN PUBLIC KEY%-%-%-%-%-\n"))
    assert.equal(pk, core.ed25519_public(sk))
    local msg = "genaudit checkpoint\0with a NUL\n" .. string.rep("x", 5000)
    write(dir .. "/sk.pem", sk)
    write(dir .. "/pk.pem", pk)
    write(dir .. "/msg", msg)
    write(dir .. "/sig", assert(core.ed25519_sign(sk, msg)))
    local verify = "openssl pkeyutl -verify -pubin -inkey " .. q(dir .. "/pk.pem") .. " -rawin -in " .. q(dir .. "/msg")
      .. " -sigfile " .. q(dir .. "/sig")
    assert.is_true(sh(verify))
    write(dir .. "/msg", msg .. "!")
    assert.is_false(sh(verify)) -- the tool really checks: one more byte fails
    write(dir .. "/msg", msg)
    assert.is_true(sh("openssl pkeyutl -sign -inkey " .. q(dir .. "/sk.pem") .. " -rawin -in " .. q(dir .. "/msg")
      .. " -out " .. q(dir .. "/sig2")))
    assert.is_true(core.ed25519_verify(pk, msg, read(dir .. "/sig2")))
    assert.is_false(core.ed25519_verify(pk, msg .. "!", read(dir .. "/sig2")))
  end)

  it("refuses a wrong signature, a wrong key and a truncated signature", function()
    local sk, pk = core.ed25519_keygen()
    local _, pk2 = core.ed25519_keygen()
    local sig = core.ed25519_sign(sk, "m")
    assert.is_false(core.ed25519_verify(pk2, "m", sig))
    assert.is_false(core.ed25519_verify(pk, "m", sig:sub(1, 63)))
    assert.is_false(core.ed25519_verify(pk, "m", sig .. "\0"))
    local b = sig:byte(1) -- one bit flipped (no ~ operator under LuaJIT)
    local flipped = string.char(b % 2 == 0 and b + 1 or b - 1) .. sig:sub(2)
    assert.is_false(core.ed25519_verify(pk, "m", flipped))
  end)

  it("refuses what is not an Ed25519 key of the right kind, without prompting or echoing it", function()
    local sk, pk = core.ed25519_keygen()
    assert.same({ nil, "KEY: not an Ed25519 private key in PEM", "KEY" }, { core.ed25519_sign(pk, "m") })
    assert.same({ nil, "KEY: not an Ed25519 public key in PEM", "KEY" },
      { core.ed25519_verify(sk, "m", ("x"):rep(64)) })
    assert.same({ nil, "KEY: not an Ed25519 private key in PEM", "KEY" }, { core.ed25519_public("garbage") })
    assert.is_true(sh("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out " .. q(dir .. "/rsa.pem")))
    local NOT_PRIVATE = { nil, "KEY: not an Ed25519 private key in PEM", "KEY" }
    assert.same(NOT_PRIVATE, { core.ed25519_sign(read(dir .. "/rsa.pem"), "m") })
    -- an encrypted key is refused at once (OpenSSL's default would ask on the TTY)
    assert.is_true(sh("openssl genpkey -algorithm ed25519 -aes256 -pass pass:secret -out " .. q(dir .. "/enc.pem")))
    assert.same(NOT_PRIVATE, { core.ed25519_sign(read(dir .. "/enc.pem"), "m") })
    assert.has_error(function() core.ed25519_sign(sk) end)
    assert.has_error(function() core.ed25519_verify(pk, "m") end)
  end)
end)
