"""POST /v1/responses and GET / DELETE /v1/responses/{id}: OpenAI's Responses API."""
