"""The client half of SecAgg+: Flower's ``secaggplus_mod`` around fedtrain's train handler.

Flower's SecAgg+ exists only in its legacy layout: the request arrives as ``fitins.*`` and the mod
reads the reply as ``fitres.*``. :func:`secagg_mod` applies Flower's mod to SecAgg+ messages only;
:func:`from_fitins` and :func:`as_fitres` translate between the legacy layout and fedtrain's. The
reply carries the **update** (local minus global weights), which the mod quantises and masks, and it
counts the values the mod will clip to the clipping range, so that nothing is clipped silently.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Scalar, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedtrain import wire
from fedtrain.errors import ConfigError

__all__ = ["as_fitres", "from_fitins", "is_secagg", "secagg_mod"]


def is_secagg(msg: Message) -> bool:
    """Whether ``msg`` is a step of the SecAgg+ protocol."""
    # Keys looked up directly: RecordDict.config_records builds a new record dict per call (~14 us).
    return any(isinstance(msg.content.get(k), ConfigRecord) for k in (RECORD_KEY_CONFIGS, "fitins.config"))


def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` for SecAgg+ train messages; every other message goes straight on."""
    if msg.metadata.message_type == "train" and isinstance(msg.content.get(RECORD_KEY_CONFIGS), ConfigRecord):
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def _keys(config: Mapping[str, object]) -> list[str]:
    names = config.get(wire.SECAGG_KEYS)
    if not isinstance(names, str):
        raise ConfigError("a SecAgg+ request without its array names; run server and clients of the same version")
    return [str(k) for k in json.loads(names)]


def from_fitins(content: RecordDict) -> RecordDict:
    """The legacy ``fitins`` request as fedtrain's layout: named arrays and the train config."""
    fitins = compat.recorddict_to_fitins(content, keep_input=True)
    config: dict[str, Any] = dict(fitins.config)
    config.update(json.loads(str(config.pop(wire.SECAGG_LISTS, "{}"))))
    arrays = parameters_to_ndarrays(fitins.parameters)
    record = ArrayRecord({k: Array(a) for k, a in zip(_keys(config), arrays, strict=True)})
    return RecordDict({wire.ARRAYS: record, wire.CONFIG: ConfigRecord(config)})


def as_fitres(request: RecordDict, reply: RecordDict) -> RecordDict:
    """Fedtrain's reply as the legacy ``fitres`` one, carrying the update instead of the weights."""
    fitins = compat.recorddict_to_fitins(request, keep_input=True)
    config = dict(fitins.config)
    sent = parameters_to_ndarrays(fitins.parameters)
    new = reply[wire.ARRAYS]
    assert isinstance(new, ArrayRecord)
    metrics: dict[str, Scalar] = {k: v for k, v in next(iter(reply.metric_records.values())).items()
                                  if isinstance(v, int | float)}  # fmt: skip
    update = [new[k].numpy() - old for k, old in zip(_keys(config), sent, strict=True)]
    norm = config.get(KEY_CLIPPING_NORM)
    if isinstance(norm, int | float):  # user-level DP: clip the whole update before it is masked
        total = float(np.sqrt(sum(float((u.astype(np.float64) ** 2).sum()) for u in update)))
        if total > norm:
            update = [(u * (norm / total)).astype(u.dtype) for u in update]
    # User-level DP averages equally weighted updates (declined clients' zero updates included).
    weight = 1 if wire.USER_DP_WEIGHT in metrics else int(metrics.get(wire.NUM_EXAMPLES, 0))
    clip, max_weight = float(config[wire.SECAGG_CLIPPING_RANGE]), float(config[wire.SECAGG_MAX_WEIGHT])
    ratio = weight / max_weight  # the mod scales by it, then clips
    if not isinstance(norm, int | float):  # under user-level DP the count would be outside its budget, and is 0
        metrics[wire.SECAGG_CLIPPED] = int(sum(int((np.abs(u * ratio) > clip).sum()) for u in update))
        metrics[wire.SECAGG_VALUES] = int(sum(u.size for u in update))
    history = reply.config_records.get(wire.DP_HISTORY)
    if history is not None:  # the DP evidence travels in the legacy metrics, as JSON
        metrics[wire.DP_HISTORY] = json.dumps(dict(history))
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), weight, metrics)
    return compat.fitres_to_recorddict(fitres, keep_input=False)
