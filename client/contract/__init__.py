"""rbd's contract: what the client and the daemon share, owned by neither.

It holds the wire protocol (`protocol`), the message shapes (`schema`), where
rbd keeps its files (`paths`), who is at the other end of a socket (`peer`),
the errors both sides raise (`errors`) and the version. It imports nothing
from `rbd.client` or `rbd.daemon` (tests/test_layout.py checks), so either
side can be read, changed and tested against it alone, as pueue's client and
daemon share `pueue_lib`.

It lives in the `client/` folder because the project's top-level folders are
fixed (pyproject.toml maps it to `rbd.contract`); the client imports it the
same way the daemon does.
"""

__version__ = "0.1.0"
