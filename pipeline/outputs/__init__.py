"""What a run does with scored clips: events, media, sinks, state, metrics and the review page."""
