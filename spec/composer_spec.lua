local composer = require("genaudit.composer")
local dto = require("genaudit.dto")
local tmp = require("spec.support.tmp")

describe("genaudit.composer", function()
  local dir, c

  local function ctx(over)
    local t = {
      org_id = 42, user_id = 7, platform = "linkedin", template_id = "launch",
      business = { name = "Acme", tone = "formal" },
      knowledge = { "Acme makes anvils.", "Founded 1949." },
      facts = { product = "Anvil 2", price = "99 EUR" },
    }
    for k, v in pairs(over or {}) do t[k] = v end
    return assert(dto.GenerationContext(t))
  end

  before_each(function()
    dir = tmp.dir()
    tmp.write(dir .. "/launch.lua", [[
      return {
        version = "3",
        voice_signature = "You are {{business.name}}'s voice.",
        constraints = { "No hype." },
        platforms = { linkedin = { constraints = { "At most 80 words." } } },
        task = "Announce {{facts.product}}.",
      }]])
    c = composer.new{ templates = dir }
  end)
  after_each(function() tmp.rm(dir) end)

  describe("compose_post_generation()", function()
    it("bakes the voice signature and constraints into the system string", function()
      local p = assert(c:compose_post_generation(ctx()))
      assert.equal("You are Acme's voice.\n\nConstraints:\n- No hype.\n- At most 80 words.", p.system)
    end)

    it("puts the task, knowledge, facts and tone line in the user string", function()
      local p = assert(c:compose_post_generation(ctx()))
      assert.equal(table.concat({
        "Announce Anvil 2.",
        "Knowledge:\n- Acme makes anvils.\n- Founded 1949.",
        "Facts:\n- price: 99 EUR\n- product: Anvil 2",
        "Tone: formal",
      }, "\n\n"), p.user)
    end)

    it("replaces the business tone with the override (the seed's Immutability Test)", function()
      local p = assert(c:compose_post_generation(ctx{ tone_override = "playful" }))
      assert.truthy(p.user:find("Tone: playful", 1, true))
      assert.falsy(p.user:find("formal", 1, true))
    end)

    it("records the template id and version on the Prompt", function()
      local p = assert(c:compose_post_generation(ctx()))
      assert.same({ "launch", "3" }, { p.template_id, p.template_version })
    end)

    it("lets a template build the user string itself from the default parts", function()
      tmp.write(dir .. "/custom.lua", [[
        return { version = 1, task = "T", user = function(ctx, parts)
          return parts.task .. "|" .. ctx.platform .. "|" .. (parts.tone_line or "") end }]])
      local p = assert(c:compose_post_generation(ctx{ template_id = "custom" }))
      assert.equal("T|linkedin|Tone: formal", p.user)
    end)

    it("returns nil, err for an unknown template", function()
      local p, err, code = c:compose_post_generation(ctx{ template_id = "nope" })
      assert.is_nil(p)
      assert.equal("COMPOSE", code)
      assert.truthy(err:find("^COMPOSE: template 'nope': SCRIPT: cannot stat"))
    end)

    it("refuses template ids that would leave the directory", function()
      local p, err = c:compose_post_generation(ctx{ template_id = "../etc/passwd" })
      assert.is_nil(p)
      assert.equal("COMPOSE: invalid template id '../etc/passwd'", err)
    end)

    it("returns nil, err when a placeholder has no value", function()
      tmp.write(dir .. "/gap.lua", [[return { task = "About {{facts.missing}}" }]])
      local p, err = c:compose_post_generation(ctx{ template_id = "gap" })
      assert.is_nil(p)
      assert.equal("COMPOSE: template 'gap': placeholder {{facts.missing}} has no value in the context", err)
    end)

    it("returns nil, err when a template function raises", function()
      tmp.write(dir .. "/boom.lua", [[return { user = function() error("kaput", 0) end }]])
      local p, err = c:compose_post_generation(ctx{ template_id = "boom" })
      assert.is_nil(p)
      assert.equal("COMPOSE: template 'boom' user(): kaput", err)
    end)

    it("picks up an edited template on the next call", function()
      assert(c:compose_post_generation(ctx()))
      tmp.write(dir .. "/launch.lua", [[return { version = "4", task = "New {{facts.product}}." }]])
      local p = assert(c:compose_post_generation(ctx()))
      assert.equal("4", p.template_version)
      assert.truthy(p.user:find("^New Anvil 2%."))
    end)

    it("keeps the last good version when the edited template is broken", function()
      assert(c:compose_post_generation(ctx()))
      tmp.write(dir .. "/launch.lua", "return { task = ")
      local p = assert(c:compose_post_generation(ctx()))
      assert.equal("3", p.template_version)
      assert.truthy(c:template_error("launch"):find("^SCRIPT: .*launch%.lua"))
    end)

    it("returns nil, err for a template function that loops forever", function()
      tmp.write(dir .. "/loop.lua", [[return { user = function() local t = {} while true do t[1] = 1 end end }]])
      local lc = composer.new{ templates = dir, script_timeout_ms = 50 }
      local p, err = lc:compose_post_generation(ctx{ template_id = "loop" })
      assert.is_nil(p)
      assert.equal("COMPOSE: template 'loop' user(): script exceeded its time limit (50 ms)", err)
    end)

    it("runs templates without io, os.execute or require", function()
      tmp.write(dir .. "/escape.lua", [[
        return { task = tostring(io) .. tostring(os.execute) .. tostring(require) }]])
      local p = assert(c:compose_post_generation(ctx{ template_id = "escape" }))
      assert.truthy(p.user:find("^nilnilnil"))
    end)

    it("raises on a non-table context", function()
      assert.has_error(function() c:compose_post_generation("x") end,
        "bad argument #1 to 'compose_post_generation' (table expected, got string)")
    end)
  end)
end)
