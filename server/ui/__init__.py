"""The web page served at ``/ui/``: static HTML, JavaScript and CSS (no build step, nothing fetched
from elsewhere), speaking only the public APIs: REST, ``stream=true`` and the Realtime WebSocket."""

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
