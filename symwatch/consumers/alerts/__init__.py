"""`symwatch alert`'s machinery: rules, sinks, following a run across restarts."""
