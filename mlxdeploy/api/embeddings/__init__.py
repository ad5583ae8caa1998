"""POST /v1/embeddings: its wire models and how it is served."""
