"""Round exchanges: how one round's train (and evaluate) messages travel, and how replies become an aggregate.

The strategy samples and aggregates; the stage says what a round asks for; the exchange carries it.
:class:`MessageExchange` is the plain Message-API exchange. A new way to carry a round (SecAgg+, a
vectorised simulator) is a new :class:`RoundExchange` registered in :data:`EXCHANGES`.
"""

from fedtrain.federation.exchange.base import EXCHANGES, RoundExchange, RoundRequest, TrainReplies, build_exchange
from fedtrain.federation.exchange.message import MessageExchange
from fedtrain.federation.exchange.secaggplus import SecAggPlusExchange
from fedtrain.federation.exchange.vectorised import VectorisedExchange

__all__ = [
    "EXCHANGES",
    "MessageExchange",
    "RoundExchange",
    "RoundRequest",
    "SecAggPlusExchange",
    "TrainReplies",
    "VectorisedExchange",
    "build_exchange",
]
