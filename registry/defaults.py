"""The configuration's defaults and file names as plain constants.

:mod:`registry.config` gives ``StoreConfig`` these defaults, and the hook's fast path
(:mod:`registry.hook`) reads them without importing the config module (which imports pathlib and
datetime) or anything else: this module imports nothing.
"""

CONFIG_FILE_NAME = "ccr-registry.toml"
ENV_CONFIG = "CCR_REGISTRY_CONFIG"
ENV_DATA_DIR = "CCR_DATA_DIR"
DATA_DIR = "~/.ccr"
DB_FILE_NAME = "ccr.db"
BACKEND = "sqlite"
SESSION_TTL_HOURS = 24.0
TOKEN_TTL_HOURS = 24.0
LOCK_TIMEOUT_S = 10.0
MIGRATE_FROM_JSON = True
