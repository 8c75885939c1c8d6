"""The configuration's defaults, file names and backend names as plain constants.

The one place each is spelled: :mod:`registry.config` gives ``StoreConfig`` these defaults,
:mod:`registry.factory` keys its backends by :data:`BACKEND_NAMES`, the command line offers them
as choices, and the hook's fast path (:mod:`registry.hook`) reads them without importing the
config module (which imports pathlib and datetime) or anything else: this module imports nothing
at import time (:func:`host_id` imports os when called).
"""

CONFIG_FILE_NAME = "ccr-registry.toml"
ENV_CONFIG = "CCR_REGISTRY_CONFIG"
ENV_DATA_DIR = "CCR_DATA_DIR"
ENV_HOST_ID = "CCR_HOST_ID"
DATA_DIR = "~/.ccr"
DB_FILE_NAME = "ccr.db"
# The built-in backends, in the order error messages and ``--help`` list them. A dual store's
# two sides are any two different ones of SIDE_NAMES.
BACKEND_NAMES = ("json", "sqlite", "dual")
SIDE_NAMES = ("json", "sqlite")
BACKEND = "sqlite"
SESSION_TTL_HOURS = 24.0
TOKEN_TTL_HOURS = 24.0
LOCK_TIMEOUT_S = 10.0
MIGRATE_FROM_JSON = True
INBOX_LEASE_S = 60.0
INBOX_MAX_ATTEMPTS = 10
INBOX_RETENTION_HOURS = 24.0
# What a command left pending by a removed session says (SPEC 3.4).
SESSION_REMOVED = "session removed"
DUAL_PRIMARY = "json"
DUAL_SECONDARY = "sqlite"
DUAL_COMPARE_READS = True
DUAL_STRICT = False
POSTGRES_SCHEMA = "ccr"
# Backends that come from entry points (group ccr_registry.backends) but that this
# distribution provides itself, with the extra that installs their driver.
PLUGIN_EXTRAS = {"postgres": "ccr-registry[postgres]"}


def host_id() -> str:
    """The default ``host_id``: ``$CCR_HOST_ID`` if set and not empty, else the hostname."""
    import os

    value = os.environ.get(ENV_HOST_ID)
    if value:
        return value
    # socket.gethostname() is gethostname(2), which on POSIX is uname's nodename; importing
    # socket (with selectors and array) cost the hook's fast path about 2 to 4 ms.
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()
