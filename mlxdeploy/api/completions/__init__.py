"""POST /v1/completions: its wire models and how it is served."""
