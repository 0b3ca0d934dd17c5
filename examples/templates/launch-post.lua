-- Template: a product launch post. See README "Writing templates".
return {
  version = "3",
  voice_signature = "You write for {{business.name}}'s social channels: concrete, warm, no hype words.",
  constraints = {
    "Stay under the platform's word limit.",
    "End with exactly one hashtag line.",
    "Never invent numbers that are not in the facts.",
  },
  platforms = {
    linkedin = { constraints = { "At most 80 words." } },
    x = { constraints = { "At most 60 words.", "No more than two emojis." } },
    instagram = { constraints = { "At most 70 words.", "Open with a hook sentence." } },
  },
  task = "Write a launch post announcing {{facts.product}} for {{business.name}}.",
}
