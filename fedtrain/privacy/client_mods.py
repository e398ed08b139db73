"""ClientApp mod for client-side clipping of user-level DP.

Flower's ``fixedclipping_mod`` and ``adaptiveclipping_mod`` refuse messages that lack a
clipping norm, so they cannot stay registered for runs without client-side clipping. This
mod hands a train message to Flower's mod only when the server's DP wrapper sent a norm.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedtrain.privacy.composition import is_declined, zero_update

__all__ = ["user_dp_clipping_mod"]

from fedtrain.wire import ADAPTIVE_FLAG


def user_dp_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip the update with Flower's mod when the train config carries a clipping norm.

    A client that declined the round returns the global model; Flower's mods divide by the update's
    norm, so the reply goes to them as the nudged zero update the server would make of it anyway.
    """
    configs = [r for r in msg.content.values() if isinstance(r, ConfigRecord)]  # not .config_records: a new dict
    if len(configs) != 1 or KEY_CLIPPING_NORM not in configs[0]:
        return call_next(msg, context)
    mod = adaptiveclipping_mod if configs[0].get(ADAPTIVE_FLAG, 0) else fixedclipping_mod
    received = next(r for r in msg.content.values() if isinstance(r, ArrayRecord))

    def train(m: Message, c: Context) -> Message:
        reply = call_next(m, c)
        if is_declined(reply):
            zero_update(reply, received)
        return reply

    return mod(msg, context, train)
