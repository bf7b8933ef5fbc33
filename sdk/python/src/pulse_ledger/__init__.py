"""pulse-ledger from Python: plugins that run jobs, and a client that
enqueues and follows them. See sdk/python/README.md."""

from .client import AsyncClient, Budget, Client, Job
from .context import JobContext
from .errors import PulseError
from .keyfile import Key, KeyFileError, load_key
from .plugin import Plugin, Retry

__all__ = [
    "AsyncClient",
    "Budget",
    "Client",
    "Job",
    "JobContext",
    "Key",
    "KeyFileError",
    "Plugin",
    "PulseError",
    "Retry",
    "load_key",
]
__version__ = "0.1.0"
