"""Utilities every layer may use: crash-safe file writing (:mod:`.io`), named registries
(:mod:`.registry`), one HTTP client (:mod:`.http`) and zip archives (:mod:`.archives`)."""
