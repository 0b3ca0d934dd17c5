-- spec/sse_spec.lua
-- Owns: the specs of core.sse_parser, the one server-sent events parser of
-- both transports (csrc/ga_sse.c; issue 15, point 2): the WHATWG HTML
-- examples and rules ("Interpreting an event stream"), chunk boundaries
-- anywhere (every split of an OpenAI and an Anthropic stream, a 4-byte emoji
-- cut at each byte, CR|LF), comments and keep-alives, the BOM, the bound on
-- an event's size, a stream cut inside an event, and misuse raising. The
-- provider streams are the seeds of the fuzzer (fuzz/corpus/sse/), one
-- source for both.
local cjson = require("cjson")
local core = require("genaudit.core")

local EMOJI = "\240\159\152\128" -- U+1F600 in UTF-8: 4 bytes
local BOM = "\239\187\191"

-- A seed of fuzz/corpus/sse/, less the harness's first byte (its bound and split seed).
local function corpus(name)
  local f = assert(io.open("fuzz/corpus/sse/" .. name, "rb"))
  local s = f:read("a")
  f:close()
  return s:sub(2)
end

-- Feeds `chunks` to a new parser: all events, then finish()'s results.
local function parse(chunks, opts)
  local p = core.sse_parser(opts)
  local all = {}
  for _, c in ipairs(chunks) do
    local evs, err, code = p:feed(c)
    assert(evs, err, code)
    for _, e in ipairs(evs) do all[#all + 1] = e end
  end
  local ok, err, code = p:finish()
  p:close()
  return all, ok, err, code
end

local function split_every(s, k)
  local t = {}
  for i = 1, #s, k do t[#t + 1] = s:sub(i, i + k - 1) end
  return t
end

-- Chunks of 0..23 bytes from a linear congruential generator (the same splits
-- under every engine: math.random's sequence differs between them).
local function split_random(s, seed)
  local t, i, r = {}, 1, seed
  while i <= #s do
    r = (r * 1103515245 + 12345) % 2147483648
    local k = r % 24
    t[#t + 1] = s:sub(i, i + k - 1)
    i = i + k
  end
  return t
end

-- The data values of a stream written with "data: " lines and LF endings,
-- read straight off its lines: what the parser must hand back byte for byte.
local function data_lines(s)
  local t = {}
  for v in s:gmatch("data: ([^\n]*)\n") do t[#t + 1] = v end
  return t
end

local function datas(events)
  local t = {}
  for i, e in ipairs(events) do t[i] = e.data end
  return t
end

local function types(events)
  local t = {}
  for i, e in ipairs(events) do t[i] = e.event end
  return t
end

-- Every split: byte at a time, 2 and 3 bytes, each cut into two chunks at
-- every position, 40 random splits; each must give `want` and a clean end.
local function assert_split_invariant(s, want)
  local function same(chunks, how)
    local got, ok, err = parse(chunks)
    assert(ok, how .. ": " .. tostring(err))
    assert.same(want, got, how)
  end
  same({ s }, "one chunk")
  same(split_every(s, 1), "byte at a time")
  same(split_every(s, 2), "2-byte chunks")
  same(split_every(s, 3), "3-byte chunks")
  for cut = 0, #s do same({ s:sub(1, cut), s:sub(cut + 1) }, "cut at " .. cut) end
  for seed = 1, 40 do same(split_random(s, seed), "random split " .. seed) end
end

describe("genaudit.core.sse_parser", function()
  describe("the WHATWG examples", function()
    it("joins the data lines of one event with LF (the stock ticker)", function()
      local evs, ok = parse({ "data: YHOO\ndata: +2\ndata: 10\n\n" })
      assert.same({ { event = "message", data = "YHOO\n+2\n10" } }, evs)
      assert.is_true(ok)
    end)

    it("skips comments; id sets the last event id, a bare id resets it", function()
      local evs = parse({
        ": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
      })
      assert.same({
        { event = "message", data = "first event", id = "1" },
        { event = "message", data = "second event" },
        { event = "message", data = " third event" },
      }, evs)
    end)

    it("dispatches an empty data line, keeps a data-only LF, and drops an unterminated event", function()
      local evs, ok, err, code = parse({ "data\n\ndata\ndata\n\ndata:" })
      assert.same({ { event = "message", data = "" }, { event = "message", data = "\n" } }, evs)
      assert.is_nil(ok)
      assert.equal("SSE: stream ended inside an event", err)
      assert.equal("SSE", code)
    end)

    it("removes one space after the colon, only one", function()
      local evs = parse({ "data:test\n\ndata: test\n\ndata:  test\n\n" })
      assert.same({ "test", "test", " test" }, datas(evs))
    end)
  end)

  describe("fields", function()
    it("event sets the type of one event only; the default type is message", function()
      local evs = parse({ "event: add\ndata: 73857293\n\ndata: next\n\nevent\ndata: x\n\n" })
      assert.same({ "add", "message", "message" }, types(evs))
    end)

    it("keeps the last event id across events; an id holding a NUL is ignored", function()
      local evs = parse({ "id: 7\ndata: a\n\ndata: b\n\nid: 8\0x\ndata: c\n\nid: 9\ndata: d\n\n" })
      assert.same({ "7", "7", "7", "9" }, { evs[1].id, evs[2].id, evs[3].id, evs[4].id })
    end)

    it("dispatches nothing without data, yet keeps the id it set", function()
      local evs = parse({ "event: x\nid: 3\n\n\n\ndata: y\n\n" })
      assert.same({ { event = "message", data = "y", id = "3" } }, evs)
    end)

    it("takes retry only when it is all ASCII digits", function()
      local p = core.sse_parser()
      assert.is_nil(p:retry())
      p:feed("retry: 3000\n")
      assert.equal(3000, p:retry())
      p:feed("retry: 12x\nretry: -5\nretry:\nretry: 1.5\n")
      assert.equal(3000, p:retry())
      p:feed("retry:15\n\n")
      assert.equal(15, p:retry())
      assert.is_true(p:finish())
    end)

    it("ignores unknown fields; names are case- and space-sensitive; no colon means an empty value", function()
      local evs = parse({ "foo: bar\nDATA: no\ndata : no\n data: no\ndata\ndata: yes\n\n" })
      assert.same({ { event = "message", data = "\nyes" } }, evs)
    end)

    it("keeps every byte of a value: NUL, invalid UTF-8, colons", function()
      local evs = parse({ "data: \0\255\254\195: x:y\n\n" })
      assert.equal("\0\255\254\195: x:y", evs[1].data)
    end)
  end)

  describe("line endings", function()
    it("accepts CRLF, LF and CR, mixed", function()
      local evs = parse({ "data: a\r\ndata: b\rdata: c\n\r\n" })
      assert.same({ "a\nb\nc" }, datas(evs))
    end)

    it("treats a CR at a chunk's end and the LF at the next one's start as one line end", function()
      local evs = parse({ "data: x\r", "\ndata: y\r", "\n\r", "\n" })
      assert.same({ "x\ny" }, datas(evs)) -- two events if the split LF counted as a blank line
    end)

    it("takes CR CR split across chunks as a line end and a blank line", function()
      local evs = parse({ "data: x\r", "\rdata: y\r", "\r" })
      assert.same({ "x", "y" }, datas(evs))
    end)
  end)

  describe("chunk boundaries anywhere", function()
    it("an OpenAI chat.completion.chunk stream: every split gives the same events, data: [DONE] last", function()
      local s = corpus("openai_chat")
      local want = parse({ s })
      local lines = data_lines(s)
      assert.equal(#lines, #want)
      assert.same(lines, datas(want))
      assert.equal("[DONE]", want[#want].data)
      for i = 1, #want - 1 do
        assert.equal("chat.completion.chunk", cjson.decode(want[i].data).object)
      end
      assert_split_invariant(s, want)
      assert_split_invariant(corpus("openai_chat_crlf"), want)
    end)

    it("an Anthropic Messages stream with event: lines and pings: every split gives the same events", function()
      local s = corpus("anthropic_messages")
      local want = parse({ s })
      assert.same({
        "message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
        "content_block_delta", "content_block_delta", "ping", "content_block_stop", "message_delta", "message_stop",
      }, types(want))
      assert.same(data_lines(s), datas(want))
      for _, e in ipairs(want) do assert.equal(e.event, cjson.decode(e.data).type) end
      assert_split_invariant(s, want)
      assert_split_invariant(corpus("anthropic_messages_cr"), want)
    end)

    it("a 4-byte emoji cut at each of its bytes comes out whole", function()
      local s = "data: a" .. EMOJI .. "b\n\n"
      local at = #"data: a"
      for cut = at, at + 4 do
        local evs = parse({ s:sub(1, cut), s:sub(cut + 1) })
        assert.equal("a" .. EMOJI .. "b", evs[1].data)
      end
      assert.same({ "a" .. EMOJI .. "b" }, datas(parse(split_every(s, 1))))
      assert.same({ "a" .. EMOJI .. "b" }, datas(parse({ "data: a\240", "\159", "\152", "\128b\n", "\n" })))
    end)

    it("a cut inside the field name, at the colon and inside the value", function()
      assert.same({ "value" }, datas(parse({ "da", "ta", ":", " ", "val", "ue\n", "\n" })))
      assert.same({ "e" }, types(parse({ "eve", "nt: e\nda", "ta: v\n\n" })))
    end)
  end)

  describe("comments and keep-alives", function()
    it("skips ':' lines of every shape between and inside events", function()
      local evs, ok = parse({ ":\n:keep-alive\n: ping\r\n:\r\r\ndata: a\n: inside\ndata: b\n\n:\n" })
      assert.same({ "a\nb" }, datas(evs))
      assert.is_true(ok)
    end)

    it("a keep-alive-only stream dispatches nothing and ends cleanly", function()
      local evs, ok = parse(split_every(": ping\n\n: ping\n\n", 3))
      assert.same({}, evs)
      assert.is_true(ok)
    end)

    it("never buffers a comment: one far longer than max_event_bytes passes", function()
      local p = core.sse_parser({ max_event_bytes = 64 })
      local long = ":" .. ("x"):rep(4096)
      assert.same({}, p:feed(long))
      for _ = 1, 64 do assert.same({}, p:feed(long)) end
      assert.same({ { event = "message", data = "ok" } }, p:feed("\ndata: ok\n\n"))
      assert.is_true(p:finish())
    end)
  end)

  describe("byte order mark", function()
    it("skips a UTF-8 BOM at the start of the stream, split or whole", function()
      assert.same({ "x" }, datas(parse({ BOM .. "data: x\n\n" })))
      assert.same({ "x" }, datas(parse({ "\239", "\187", "\191data: x\n\n" })))
      assert.same({ "x" }, datas(parse({ BOM, ":c\ndata: x\n\n" })))
    end)

    it("keeps a BOM anywhere else (its line's field name is then unknown)", function()
      assert.same({ "x" }, datas(parse({ BOM .. "data: x\n\n" .. BOM .. "data: y\n\n" })))
    end)

    it("keeps the bytes of a BOM prefix that is none", function()
      local evs, ok = parse({ "\239\187", "data: x\n\n" })
      assert.same({}, evs) -- the field is named "\239\187data"
      assert.is_true(ok)
      assert.same({ "\239\187" }, datas(parse({ "data: ", "\239\187", "\n\n" })))
    end)
  end)

  describe("the bound (max_event_bytes)", function()
    it("accepts a line of exactly max_event_bytes and refuses one byte more", function()
      local evs = parse({ "data: 0123456789\n\n" }, { max_event_bytes = 16 })
      assert.same({ "0123456789" }, datas(evs))
      local p = core.sse_parser({ max_event_bytes = 16 })
      local res, err, code = p:feed("data: 01234567890\n\n")
      assert.is_nil(res)
      assert.equal("SSE: over-long event (more than 16 bytes buffered)", err)
      assert.equal("SSE", code)
    end)

    it("refuses before the line ends: an endless line never grows the parser", function()
      local p = core.sse_parser({ max_event_bytes = 1000 })
      local fed, res, err = 0
      repeat
        res, err = p:feed("data: " .. ("y"):rep(94))
        fed = fed + 100
      until not res or fed > 100000
      assert.equal(1100, fed) -- the chunk that would pass 1000 buffered bytes
      assert.equal("SSE: over-long event (more than 1000 bytes buffered)", err)
    end)

    it("counts the data of all the event's lines, not only the current one", function()
      local p = core.sse_parser({ max_event_bytes = 40 })
      local line = "data: 0123456789\n" -- 16 bytes, 11 kept
      assert.same({}, p:feed(line .. line))
      local res, err, code, before = p:feed("data: x\n\ndata: z\n" .. line:rep(4))
      assert.is_nil(res)
      assert.equal("SSE: over-long event (more than 40 bytes buffered)", err)
      assert.equal("SSE", code)
      assert.same({ "0123456789\n0123456789\nx" }, datas(before)) -- what was dispatched before the error
    end)

    it("stays refused until finish(), which reports it and starts a new stream", function()
      local p = core.sse_parser({ max_event_bytes = 8 })
      assert.is_nil(p:feed("data: 123456789"))
      local res, err = p:feed("\n\ndata: ok\n\n")
      assert.is_nil(res)
      assert.equal("SSE: over-long event (more than 8 bytes buffered)", err)
      local ok, ferr, code = p:finish()
      assert.is_nil(ok)
      assert.equal("SSE: over-long event (more than 8 bytes buffered)", ferr)
      assert.equal("SSE", code)
      assert.same({ { event = "message", data = "ok" } }, p:feed("data: ok\n\n"))
      assert.is_true(p:finish())
    end)

    it("defaults to 1 MiB", function()
      local mib = 1024 * 1024
      local fits = "data: " .. ("a"):rep(mib - 6)
      assert.equal(mib - 6, #parse({ fits .. "\n\n" })[1].data)
      local p = core.sse_parser()
      local res, err = p:feed(fits .. "a\n\n")
      assert.is_nil(res)
      assert.equal("SSE: over-long event (more than 1048576 bytes buffered)", err)
      p:close()
    end)
  end)

  describe("finish()", function()
    it("returns true at the end of a stream between events", function()
      local _, ok = parse({ "data: a\n\n: trailing comment" })
      assert.is_true(ok)
    end)

    it("reports a stream cut inside a line, after a field line or after an event type", function()
      for _, s in ipairs({ "data: {\"choi", "data: x\n", "event: message_delta\n", "data: a\n\nid: 4\n", "\239" }) do
        local evs, ok, err, code = parse({ s })
        assert.is_nil(ok, s)
        assert.equal("SSE: stream ended inside an event", err)
        assert.equal("SSE", code)
        assert.equal(s:match("\n\n") and 1 or 0, #evs)
      end
    end)

    it("a cut OpenAI stream is reported and its complete events are kept", function()
      local s = corpus("openai_chat_cut")
      local evs, ok, err = parse(split_every(s, 7))
      assert.is_nil(ok)
      assert.equal("SSE: stream ended inside an event", err)
      assert.is_true(#evs > 0)
      assert.same(data_lines(s:match("^(.*\n\n)")), datas(evs))
    end)

    it("leaves the parser ready for a new stream with the last event id (an EventSource reconnection)", function()
      local p = core.sse_parser()
      p:feed("id: 41\ndata: a\n\ndata: cut")
      assert.is_nil(p:finish())
      assert.same({ { event = "message", data = "b", id = "41" } }, p:feed(BOM .. "data: b\n\n"))
      assert.is_true(p:finish())
    end)
  end)

  describe("misuse", function()
    it("raises on options that are not a table or a bad max_event_bytes", function()
      assert.has_error(function() core.sse_parser("x") end)
      for _, v in ipairs({ 0, -1, 1.5, "10", true }) do
        local ok, err = pcall(core.sse_parser, { max_event_bytes = v })
        assert.is_false(ok)
        assert.matches("max_event_bytes must be a positive integer", err, 1, true)
      end
    end)

    it("raises when feed is given anything but a string", function()
      local p = core.sse_parser()
      for _, v in ipairs({ 42, {}, true }) do
        local ok, err = pcall(p.feed, p, v)
        assert.is_false(ok)
        assert.matches("string expected, got " .. type(v), err, 1, true)
      end
      local ok, err = pcall(p.feed, p)
      assert.is_false(ok)
      assert.matches("string expected, got no value", err, 1, true)
      assert.has_error(function() p.feed("data: x\n\n") end)
      assert.has_error(function() p.finish({}) end)
    end)

    it("close() is idempotent; a closed parser raises on use and says so", function()
      local p = core.sse_parser()
      p:feed("data: pending")
      assert.matches("^genaudit.sse_parser %(", tostring(p))
      assert.is_true(p:close())
      assert.is_true(p:close())
      assert.equal("genaudit.sse_parser (closed)", tostring(p))
      assert.has_error(function() p:feed("x") end, "attempt to use a closed sse_parser")
      assert.has_error(function() p:finish() end, "attempt to use a closed sse_parser")
      assert.has_error(function() p:retry() end, "attempt to use a closed sse_parser")
    end)

    it("is closed by a to-be-closed variable (Lua 5.4)", function()
      if _VERSION ~= "Lua 5.4" then return end
      local chunk = assert(load([[
        local core = ...
        local keep
        do
          local p <close> = core.sse_parser()
          keep = p
          p:feed("data: x")
        end
        return tostring(keep)
      ]]))
      assert.equal("genaudit.sse_parser (closed)", chunk(core))
    end)
  end)
end)
