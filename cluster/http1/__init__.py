"""One HTTP/1.1 server core, shared by ypws and hashproxy (issue 13).

``protocol.HTTP1Protocol`` is an asyncio protocol on the httptools (llhttp) parser,
shaped like uvicorn's ``httptools_impl``: the protocol parses, enforces ``Limits``,
re-derives framing (``cluster.framing``), runs one ``Cycle`` per request in
pipelining order, and handles flow control, deadlines, connection caps and
refusals; a service supplies only ``handle_head`` (a cycle for a parsed head).
``refusal.refusal`` writes every protocol-level refusal, so both services answer
the same bad request with the same bytes.
"""

from .limits import Limits
from .protocol import Cycle, HTTP1Protocol
from .refusal import UPGRADE_REFUSAL, refusal

__all__ = ["Cycle", "HTTP1Protocol", "Limits", "UPGRADE_REFUSAL", "refusal"]
