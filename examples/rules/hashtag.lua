-- Rule: the post ends with a hashtag line.
return {
  slug = "missing_hashtag",
  check = function(draft)
    local last = draft:match("([^\n]*)%s*$") or ""
    if not last:find("#%w") then
      return { message = "End the post with one hashtag line.", penalty = 15 }
    end
  end,
}
