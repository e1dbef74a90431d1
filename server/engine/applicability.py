"""Which decoding options the served backbone can honour: the rest is refused, never ignored.

Transports call :func:`check_options` before queueing a request, so a field that cannot apply
(``prompt`` on a CTC model, a translation on an English-only backbone) is an error naming that field.
"""

from __future__ import annotations

from ..decoding import DecodingOptions
from ..errors import InvalidInput


def check_options(backbone: object | None, options: DecodingOptions) -> None:
    """Raise :class:`InvalidInput` (with ``param``) for an option ``backbone`` cannot honour.

    ``backbone`` None (still loading): nothing to check yet; the engine answers "not ready".
    """
    if backbone is None:
        return
    name = getattr(backbone, "name", "the backbone")
    if options.task == "translate" and not getattr(backbone, "multilingual", False):
        raise InvalidInput(f"backbone {name!r} is English-only: it cannot translate. Translation needs a "
                           "multilingual backbone (e.g. splitasr serve --backbone base)", param="model")
    if _is_ctc(backbone):
        if options.prompt:
            raise InvalidInput(f"prompt does not apply to backbone {name!r} (a CTC model has no text "
                               "decoder to condition); leave it out", param="prompt")
        if options.temperature > 0:
            raise InvalidInput(f"temperature does not apply to backbone {name!r} (a CTC model decodes "
                               "greedily); leave it out or send 0", param="temperature")
        if options.logprobs:
            raise InvalidInput(f"include[]=logprobs is not available on backbone {name!r} (a CTC model has no "
                               "token log-probabilities of Whisper's kind); leave it out", param="include[]")


def _is_ctc(backbone: object) -> bool:
    from ..backbones.ctc import CTCBackbone

    return isinstance(backbone, CTCBackbone)
