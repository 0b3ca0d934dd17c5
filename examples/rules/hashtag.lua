-- Rule: the post ends with a hashtag line.
return {
  slug = "missing_hashtag",
  check = function(draft)
    -- the last non-blank line, found from the end: a forward match of
    -- "([^\n]*)%s*$" retries at every line start and is quadratic in the draft
    local last = (draft:reverse():match("^%s*([^\n]*)") or ""):reverse()
    if not last:find("#%w") then
      return { message = "End the post with one hashtag line.", penalty = 15 }
    end
  end,
}
