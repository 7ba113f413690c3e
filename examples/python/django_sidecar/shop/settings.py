"""Settings of the sidecar example: one database for the app's events and its read models.

`SHOP_DATABASE` picks it: a SQLite file path (default `shop.sqlite3` here), or a PostgreSQL URL
`postgresql://USER[:PASSWORD]@HOST[:PORT]/NAME`.
"""

import os
from pathlib import Path
from urllib.parse import urlparse

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "example-only"
DEBUG = True
INSTALLED_APPS = ["shop"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_url = os.environ.get("SHOP_DATABASE", str(BASE_DIR / "shop.sqlite3"))
if _url.startswith(("postgres://", "postgresql://")):
    _u = urlparse(_url)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _u.path.lstrip("/"),
            "USER": _u.username or "",
            "PASSWORD": _u.password or "",
            "HOST": _u.hostname or "",
            "PORT": str(_u.port or ""),
        }
    }
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": _url}}
