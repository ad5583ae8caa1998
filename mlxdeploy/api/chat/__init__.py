"""POST /v1/chat/completions: its wire models and how it is served."""
