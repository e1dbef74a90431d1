"""The OpenAI Realtime API's transcription sessions over WebSocket (``/v1/realtime``), for browsers
and OpenAI clients, on the same streaming engine as gRPC ``StreamingRecognize``."""
