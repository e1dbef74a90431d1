"""LoRB N-best rescoring: a frozen BERT-style text encoder with LoRA and a scoring head.

``encoder`` (the offline, sha256-pinned MiniLM), ``model`` (LoRA bank + per-slot heads, score fusion),
``fileformat`` (validated rescorer files), ``losses`` (MWER, correlation regularizer), ``data``
(N-best lists and their cache), ``textonly`` (lists from domain text), ``train``, ``efficiency``
(LoRA versus full fine-tuning), ``stage`` and ``service`` (the second pass in the CLI and the server).
"""
