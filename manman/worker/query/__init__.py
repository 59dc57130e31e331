"""Game queries: how many players a server has, asked the way its game answers.

Each protocol is a pure encoder/parser (no I/O, fuzzable) with a thin trio probe on top; a probe
returns a QueryResult and never raises for what a server sends.
"""

from manman.worker.query.a2s import query_a2s
from manman.worker.query.console import PlayerCounter
from manman.worker.query.probe import NETWORK_TYPES, QueryType, query, query_tcp
from manman.worker.query.result import ParseError, QueryResult
from manman.worker.query.slp import query_minecraft

__all__ = ["NETWORK_TYPES", "ParseError", "PlayerCounter", "QueryResult", "QueryType",
           "query", "query_a2s", "query_minecraft", "query_tcp"]
