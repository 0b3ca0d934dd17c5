-- Rule: the draft must fit the platform's word limit.
local LIMITS = { linkedin = 80, x = 60, instagram = 70 }

return {
  slug = "length_exceeded",
  check = function(draft, ctx)
    local limit = LIMITS[ctx.platform] or 80
    local words = select(2, draft:gsub("%S+", ""))
    if words > limit then
      return {
        message = ("The post has %d words; the limit on %s is %d."):format(words, ctx.platform, limit),
        penalty = 30,
      }
    end
  end,
}
