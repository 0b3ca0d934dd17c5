-- Template: a weekly tips post built from the knowledge list.
return {
  version = 1,
  voice_signature = "You are a patient expert who explains one practical idea at a time.",
  constraints = { "Give exactly three tips.", "Stay under the platform's word limit.", "End with one hashtag line." },
  platforms = { linkedin = { constraints = { "At most 80 words." } }, x = { constraints = { "At most 60 words." } } },
  task = "Write this week's tips post on {{facts.topic}} for {{business.name}}.",
}
