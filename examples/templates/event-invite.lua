-- Template: an invitation to an event.
return {
  version = "2",
  voice_signature = "You write friendly, specific invitations that make the date and place impossible to miss.",
  constraints = { "Mention the date and the place.", "End with one hashtag line." },
  platforms = {
    linkedin = { constraints = { "At most 80 words." } },
    instagram = { constraints = { "At most 70 words." } },
  },
  task = "Invite our audience to {{facts.event}} on {{facts.date}} at {{facts.place}}.",
}
