"""coc-mail: the mail system of a Code of Conduct committee."""

from coc_mail.config import Settings, load
from coc_mail.errors import (
    CocMailError,
    ConfigError,
    DeliveryError,
    StorageKeyError,
    StoreUnavailable,
    TemplateProblem,
)

__version__ = "0.1.0"
__all__ = [
    "CocMailError",
    "ConfigError",
    "DeliveryError",
    "Settings",
    "StorageKeyError",
    "StoreUnavailable",
    "TemplateProblem",
    "__version__",
    "load",
]
