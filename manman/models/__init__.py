"""The wire types of docs/spec.md, validated once at the edge (msgspec), by area:
`types` (shared field types), `spec` (a server's spec), `status` (what is observed, and a
server as answered), `api` (request and answer bodies), `fleet` (host <-> worker)."""

from manman.models.api import *  # noqa: F403
from manman.models.fleet import *  # noqa: F403
from manman.models.spec import *  # noqa: F403
from manman.models.status import *  # noqa: F403
from manman.models.types import *  # noqa: F403
