"""What a request may ask of its model's draft model (speculative decoding): mlx_lm.server's
`draft_model` and `num_draft_tokens`, within what the spec declares. A draft the spec does not
name, or more guesses than it allows, is a 400: never silently ignored."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidRequest


@dataclass(frozen=True)
class Drafting:
    """A model's draft as the spec declares it (`model`: as written; None: no draft)."""

    model: str | None = None
    num_draft_tokens: int = 0

    def asked(self, draft_model: str | None, num_draft_tokens: int | None) -> int | None:
        """The engine's guesses per step for the request (None: the spec's number)."""
        if draft_model is not None and draft_model != self.model:
            declared = f"'{self.model}'" if self.model else "none"
            raise InvalidRequest(
                f"draft_model '{draft_model}' is not this model's draft model "
                f"(the spec declares {declared}); leave draft_model out",
                param="draft_model",
            )
        if num_draft_tokens is None:
            return None
        if num_draft_tokens > self.num_draft_tokens:
            raise InvalidRequest(
                f"num_draft_tokens {num_draft_tokens} is more than this model allows "
                f"({self.num_draft_tokens}); send at most that, or 0 to turn drafting off",
                param="num_draft_tokens",
            )
        return num_draft_tokens if self.model is not None else None
